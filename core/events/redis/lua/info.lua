-- ARGV: prefix. Returns {head, max-deleted-id, sentinel or false}.
local info = xinfo()
local alive = redis.call('GET', P .. 'alive')
if not info then return {'0-0', '0-0', alive} end
return {info['last-generated-id'], info['max-deleted-entry-id'], alive}
