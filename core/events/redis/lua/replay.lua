-- ARGV: prefix, group, batch, then event ids (none: the first `batch` dead letters).
-- Returns {'nogroup'} or {'ok', replayed, looked at}.
local group = ARGV[2]
if redis.call('HEXISTS', P .. 'groups', group) == 0 then return {'nogroup'} end
local DUE_KEY, DEAD_KEY = P .. 'due:' .. group, P .. 'dead:' .. group
local todo = {}
if #ARGV == 3 then
  todo = redis.call('ZRANGEBYLEX', DEAD_KEY, '-', '+', 'LIMIT', 0, tonumber(ARGV[3]))
else
  for i = 4, #ARGV do
    local sid = redis.call('HGET', P .. 'ids', ARGV[i])
    if sid and redis.call('ZSCORE', DEAD_KEY, pad(sid)) then todo[#todo + 1] = pad(sid) end
  end
end
local now, n = now_ms(), 0
for _, p in ipairs(todo) do
  local sid = unpad(p)
  local e = redis.call('XRANGE', STREAM, sid, sid)[1]
  local st = e and get_status(e[2][2], group)
  redis.call('ZREM', DEAD_KEY, p)
  if st and st.s == DEAD then
    st.s, st.a, st.t = RETRYING, 0, now
    redis.call('ZADD', DUE_KEY, now, p)
    put_status(e[2][2], group, st)
    n = n + 1
  end
end
return {'ok', n, #todo}
