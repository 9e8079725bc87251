-- ARGV: prefix, group, event ids... Returns {'notfound', id} or {'ok', newly acked}.
local group, found = ARGV[2], {}
for i = 3, #ARGV do
  local st = found[ARGV[i]] or get_status(ARGV[i], group)
  if not st then return {'notfound', ARGV[i]} end
  found[ARGV[i]] = st
end
local now, n = now_ms(), 0
for i = 3, #ARGV do
  local eid = ARGV[i]
  local st = found[eid]
  if st.s ~= ACKED then
    st.s, st.t, n = ACKED, now, n + 1
    local sid = redis.call('HGET', P .. 'ids', eid)
    if sid then
      redis.call('ZREM', P .. 'due:' .. group, pad(sid))
      redis.call('ZREM', P .. 'dead:' .. group, pad(sid))
      redis.pcall('XACK', STREAM, group, sid)
    end
    put_status(eid, group, st)
  end
end
return {'ok', n}
