-- ARGV: prefix, group, consumer, limit, visibility ms, max attempts.
-- Returns {'nogroup'} or {'ok', more, dead, stream id, body, attempt, ...}; dead is the JSON
-- list of the events this claim dead-lettered: [{i = id, y = type, s = subject, st = status}].
local group, consumer = ARGV[2], ARGV[3]
local limit, vis, max_attempts = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local raw = redis.call('HGET', P .. 'groups', group)
if not raw then return {'nogroup'} end
-- Fails (and nothing is written) when the consumer group is gone.
local made = redis.pcall('XGROUP', 'CREATECONSUMER', STREAM, group, consumer)
if type(made) == 'table' and made.err then return {'nogroup'} end
local sel = cjson.decode(raw)
local DUE_KEY, DEAD_KEY = P .. 'due:' .. group, P .. 'dead:' .. group
local now, out, handed, dead = now_ms(), {'ok', 0, '[]'}, 0, {}
for _, p in ipairs(redis.call('ZRANGEBYSCORE', DUE_KEY, '-inf', now, 'LIMIT', 0, limit)) do
  local sid = unpad(p)
  local e = redis.call('XRANGE', STREAM, sid, sid)[1]
  local st = e and get_status(e[2][2], group)
  if not st then  -- trimmed away meanwhile
    redis.call('ZREM', DUE_KEY, p)
    redis.call('XACK', STREAM, group, sid)
  else
    if st.s == DELIVERED then
      add_error(st, string.format(TIMED_OUT_MESSAGE, st.c), now, TIMED_OUT)
    end
    st.t = now
    if st.a >= max_attempts then
      st.s = DEAD
      redis.call('ZREM', DUE_KEY, p)
      redis.call('ZADD', DEAD_KEY, 0, p)
      redis.call('XACK', STREAM, group, sid)
      dead[#dead + 1] = {i = e[2][2], y = e[2][4], s = e[2][6], st = st}
    else
      st.s, st.a, st.c = DELIVERED, st.a + 1, consumer
      redis.call('ZADD', DUE_KEY, now + vis, p)
      redis.call('XCLAIM', STREAM, group, consumer, 0, sid, 'FORCE', 'RETRYCOUNT', st.a, 'JUSTID')
      out[#out + 1] = sid
      out[#out + 1] = e[2][10]
      out[#out + 1] = st.a
      handed = handed + 1
    end
    put_status(e[2][2], group, st)
  end
end
if #dead > 0 then out[3] = cjson.encode(dead) end
-- New entries: read only as many as are still wanted, so none is read and dropped.
local scanned = 0
while handed < limit do
  local want = math.min(limit - handed, SCAN - scanned)
  if want <= 0 then out[2] = 1 break end
  local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', want,
                           'STREAMS', STREAM, '>')
  if not reply then break end
  local entries = reply[1][2]
  for _, e in ipairs(entries) do
    local sid, f = e[1], e[2]
    scanned = scanned + 1
    if wanted(sel, f) then
      put_status(f[2], group, {s = DELIVERED, a = 1, c = consumer, t = now, e = {}})
      redis.call('ZADD', DUE_KEY, now + vis, pad(sid))
      out[#out + 1] = sid
      out[#out + 1] = f[10]
      out[#out + 1] = 1
      handed = handed + 1
    else
      redis.call('XACK', STREAM, group, sid)  -- not for this group: never handed out
    end
  end
  if #entries < want then break end
end
return out
