-- ARGV: prefix, token this instance knows, a new token, the last position it saw, then
-- group/selector pairs to recreate. Returns {'ok'|'gap', sentinel}.
local current = redis.call('GET', P .. 'alive')
if current == ARGV[2] then return {'ok', current} end
if not current then
  redis.call('SET', P .. 'alive', ARGV[3])
  current = ARGV[3]
end
local seen = ARGV[4]
if seen ~= '0-0' then
  -- Remembered so that a read after an older position says it was lost, not trimmed.
  local lost = redis.call('GET', P .. 'lost')
  if not lost or pad(lost) < pad(seen) then redis.call('SET', P .. 'lost', seen) end
  -- Positions up to the last one seen are gone: later ids must be above it, and a
  -- read after an older position must report POSITION_EXPIRED, not skip silently.
  local info = xinfo()
  if not info then
    redis.call('XADD', STREAM, 'MAXLEN', '0', seen, 'x', '')
    redis.call('XSETID', STREAM, seen, 'MAXDELETEDID', seen)
  else
    local top, maxdel = info['last-generated-id'], info['max-deleted-entry-id']
    if pad(top) < pad(seen) then top = seen end
    if pad(maxdel) < pad(seen) then maxdel = seen end
    redis.call('XSETID', STREAM, top, 'MAXDELETEDID', maxdel)
  end
end
for i = 5, #ARGV, 2 do
  redis.call('HSETNX', P .. 'groups', ARGV[i], ARGV[i + 1])
  redis.pcall('XGROUP', 'CREATE', STREAM, ARGV[i], '0', 'MKSTREAM')
end
return {'gap', current}
