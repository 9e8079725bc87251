-- ARGV: prefix, retention, chunk, n, then per event: id, type, subject, time_us, body.
-- Returns per event {stream id, duplicate}. Nothing is written before every id is
-- looked up, so the only failure after the first write would be Redis itself.
-- Returns 'lost' and writes nothing when the sentinel is gone: Redis lost its data, and
-- the store must notice (and report the gap) before anything is stored in a new stream.
if redis.call('EXISTS', P .. 'alive') == 0 then return 'lost' end
local retention, chunk, n = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local IDS, LOG = P .. 'ids', P .. 'log'
local out, seen, last = {}, {}, nil
for i = 0, n - 1 do
  local b = 5 + i * 5
  local eid = ARGV[b]
  local sid = seen[eid] or redis.call('HGET', IDS, eid)
  if sid then
    out[#out + 1] = {sid, 1}
  else
    sid = redis.call('XADD', STREAM, '*', 'i', eid, 'y', ARGV[b + 1], 's', ARGV[b + 2],
                     't', ARGV[b + 3], 'b', ARGV[b + 4])
    redis.call('HSET', IDS, eid, sid)
    redis.call('ZADD', LOG, 0, pad(sid) .. ':' .. eid)
    seen[eid], last = sid, sid
    out[#out + 1] = {sid, 0}
  end
end
-- Retention, exactly and in chunks: the oldest events go with their ids, statuses, due
-- and dead-letter entries and PEL entries; max-deleted-entry-id records the newest one
-- gone, which is how `read` knows a position expired.
local excess = redis.call('ZCARD', LOG) - retention
if last and excess >= chunk then
  excess = math.min(excess, 4 * chunk + n)  -- bounded; a lowered retention catches up
  local cut = redis.call('ZRANGE', LOG, 0, excess - 1)
  for _, m in ipairs(cut) do
    local p, eid = string.match(m, '^([%d-]+):(.*)$')
    local sid = unpad(p)
    if redis.call('HGET', IDS, eid) == sid then redis.call('HDEL', IDS, eid) end
    local key = P .. 'st:' .. eid
    for _, g in ipairs(redis.call('HKEYS', key)) do
      redis.call('ZREM', P .. 'due:' .. g, p)
      redis.call('ZREM', P .. 'dead:' .. g, p)
      redis.pcall('XACK', STREAM, g, sid)
    end
    redis.call('DEL', key)
  end
  redis.call('ZREMRANGEBYRANK', LOG, 0, excess - 1)
  local first = redis.call('ZRANGE', LOG, 0, 0)[1]
  redis.call('XTRIM', STREAM, 'MINID', unpad(first))
  redis.call('XSETID', STREAM, last, 'MAXDELETEDID', unpad(cut[#cut]))
end
return out
