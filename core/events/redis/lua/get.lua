-- ARGV: prefix, event id. Returns {} or {stream id, body}.
local sid = redis.call('HGET', P .. 'ids', ARGV[2])
if not sid then return {} end
local e = redis.call('XRANGE', STREAM, sid, sid)[1]
if not e then return {} end
return {sid, e[2][10]}
