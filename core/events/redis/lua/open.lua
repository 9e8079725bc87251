-- ARGV: prefix, token. Writes the sentinel unless present; returns {sentinel, head}.
redis.call('SET', P .. 'alive', ARGV[2], 'NX')
local info = xinfo()
return {redis.call('GET', P .. 'alive'), info and info['last-generated-id'] or '0-0'}
