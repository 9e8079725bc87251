-- ARGV: prefix, group, after, limit. Returns {'nogroup'} or {'ok', id, body, status, ...}.
local group = ARGV[2]
if redis.call('HEXISTS', P .. 'groups', group) == 0 then return {'nogroup'} end
local DEAD_KEY = P .. 'dead:' .. group
local low = ARGV[3] == '' and '-' or '(' .. pad(ARGV[3])
local out = {'ok'}
local found = redis.call('ZRANGEBYLEX', DEAD_KEY, low, '+', 'LIMIT', 0, tonumber(ARGV[4]))
for _, p in ipairs(found) do
  local sid = unpad(p)
  local e = redis.call('XRANGE', STREAM, sid, sid)[1]
  local raw = e and redis.call('HGET', P .. 'st:' .. e[2][2], group)
  if raw then
    out[#out + 1] = sid
    out[#out + 1] = e[2][10]
    out[#out + 1] = raw
  else
    redis.call('ZREM', DEAD_KEY, p)
  end
end
return out
