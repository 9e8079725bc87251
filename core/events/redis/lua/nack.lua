-- ARGV: prefix, group, event id, delay ms, park (0/1), error, max attempts, end reason,
-- error type, stack.
-- Returns {'notfound'}, {'acked'} or {'ok', state}; when this nack dead-lettered the event,
-- {'ok', DEAD, status JSON, event type, subject}.
local group, eid = ARGV[2], ARGV[3]
local st = get_status(eid, group)
if not st then return {'notfound'} end
if st.s == ACKED then return {'acked'} end
if st.s == DEAD then return {'ok', DEAD} end
local now = now_ms()
add_error(st, ARGV[6], now, tonumber(ARGV[8]), ARGV[9], ARGV[10])
st.t = now
local sid = redis.call('HGET', P .. 'ids', eid)
local p = pad(sid)
redis.pcall('XACK', STREAM, group, sid)  -- its member no longer holds it
if ARGV[5] == '1' or st.a >= tonumber(ARGV[7]) then
  st.s = DEAD
  redis.call('ZREM', P .. 'due:' .. group, p)
  redis.call('ZADD', P .. 'dead:' .. group, 0, p)
  put_status(eid, group, st)
  local e = redis.call('XRANGE', STREAM, sid, sid)[1]
  return {'ok', DEAD, cjson.encode(st), e and e[2][4] or '', e and e[2][6] or ''}
else
  st.s = RETRYING
  redis.call('ZADD', P .. 'due:' .. group, now + tonumber(ARGV[4]), p)
end
put_status(eid, group, st)
return {'ok', st.s}
