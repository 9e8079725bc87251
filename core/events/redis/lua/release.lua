-- ARGV: prefix, group, consumer. Its entries fall due now, each recorded as given back
-- because the consumer disconnected; the consumer is removed.
local group, consumer = ARGV[2], ARGV[3]
local held = redis.pcall('XPENDING', STREAM, group, '-', '+', 10000, consumer)
if held.err then return 0 end
local DUE_KEY, now = P .. 'due:' .. group, now_ms()
local message = string.format(DISCONNECTED_MESSAGE, consumer)
for _, x in ipairs(held) do
  local p = pad(x[1])
  if redis.call('ZSCORE', DUE_KEY, p) then
    redis.call('ZADD', DUE_KEY, now, p)
    local e = redis.call('XRANGE', STREAM, x[1], x[1])[1]
    local st = e and get_status(e[2][2], group)
    if st and st.s == DELIVERED and st.c == consumer then
      add_error(st, message, now, DISCONNECTED)
      st.s, st.t = RETRYING, now
      put_status(e[2][2], group, st)
    end
  end
end
redis.pcall('XGROUP', 'DELCONSUMER', STREAM, group, consumer)
return #held
