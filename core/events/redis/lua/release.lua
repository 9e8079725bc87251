-- ARGV: prefix, group, consumer. Its entries fall due now; the consumer is removed.
local group = ARGV[2]
local held = redis.pcall('XPENDING', STREAM, group, '-', '+', 10000, ARGV[3])
if held.err then return 0 end
local now = now_ms()
for _, x in ipairs(held) do
  redis.call('ZADD', P .. 'due:' .. group, 'XX', now, pad(x[1]))
end
redis.pcall('XGROUP', 'DELCONSUMER', STREAM, group, ARGV[3])
return #held
