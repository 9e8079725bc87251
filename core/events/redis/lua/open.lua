-- ARGV: prefix, token. Writes the sentinel unless present; returns {sentinel, head}.
-- A sentinel written where no stream is either starts a new store or finds a Redis that
-- lost its data while no instance ran: positions from before now are then recorded as
-- lost, so that a resume from one is POSITION_LOST rather than a silent skip of what
-- was lost (positions are Redis times, so any position of this store is after now).
if redis.call('SET', P .. 'alive', ARGV[2], 'NX') and redis.call('EXISTS', STREAM) == 0 then
  local origin = now_ms() .. '-0'
  local lost = redis.call('GET', P .. 'lost')
  if not lost or pad(lost) < pad(origin) then redis.call('SET', P .. 'lost', origin) end
end
local info = xinfo()
return {redis.call('GET', P .. 'alive'), info and info['last-generated-id'] or '0-0'}
