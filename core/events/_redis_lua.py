"""The Lua scripts of the Redis event store: each state change is one atomic script.

Every script takes the key prefix as ARGV[1]; PRELUDE's helpers are prepended to each.
"""

from __future__ import annotations

from core.events.model import MAX_ERRORS_KEPT, State

SCAN = 2_000  # most entries one read, history or claim script looks at: bounds its run time

# Every script takes the key prefix as ARGV[1]; the helpers below are prepended to each.
PRELUDE = (
    f"""
local DELIVERED, ACKED, RETRYING, DEAD = {State.DELIVERED:d}, {State.ACKED:d}, \
{State.RETRYING:d}, {State.DEAD_LETTERED:d}
local MAX_ERRORS = {MAX_ERRORS_KEPT:d}
"""
    + r"""
local P = ARGV[1]
local STREAM = P .. 'stream'

local function pad(sid)  -- "12-3" -> fixed width, so byte order is position order
  local ms, seq = string.match(sid, '^(%d+)-(%d+)$')
  return string.rep('0', 20 - #ms) .. ms .. '-' .. string.rep('0', 20 - #seq) .. seq
end

local function unpad(p)
  local ms, seq = string.match(p, '^(%d+)-(%d+)')
  return (string.gsub(ms, '^0+(%d)', '%1')) .. '-' .. (string.gsub(seq, '^0+(%d)', '%1'))
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function xinfo()  -- the stream's scalars; nil if there is no stream
  if redis.call('EXISTS', STREAM) == 0 then return nil end
  local raw, t = redis.call('XINFO', 'STREAM', STREAM), {}
  for i = 1, #raw, 2 do t[raw[i]] = raw[i + 1] end
  return t
end

-- fields of an entry, in the order append writes them: i, y (type), s (subject), t, b
local function wanted(sel, f)
  if sel.subject ~= '' and f[6] ~= sel.subject then return false end
  if #sel.types == 0 then return true end
  for _, t in ipairs(sel.types) do
    if string.sub(t, -2) == '.*' then
      local prefix = string.sub(t, 1, -2)
      if string.sub(f[4], 1, #prefix) == prefix then return true end
    elseif f[4] == t then
      return true
    end
  end
  return false
end

local function get_status(eid, group)
  local raw = redis.call('HGET', P .. 'st:' .. eid, group)
  if not raw then return nil end
  return cjson.decode(raw)
end

local function put_status(eid, group, st)
  redis.call('HSET', P .. 'st:' .. eid, group, cjson.encode(st))
end

local function add_error(st, message, now)
  if type(st.e) ~= 'table' then st.e = {} end
  table.insert(st.e, {m = message, t = now, a = st.a})
  while #st.e > MAX_ERRORS do table.remove(st.e, 1) end
end
"""
)

# ARGV: prefix, retention, chunk, n, then per event: id, type, subject, time_us, body.
# Returns per event {stream id, duplicate}. Nothing is written before every id is
# looked up, so the only failure after the first write would be Redis itself.
APPEND = r"""
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
"""

# ARGV: prefix, after ("" = from the first), limit, check expiry (0/1), selector JSON,
# start_us, end_us ("" = unbounded). Returns {'expired', max-deleted-id} or
# {'ok', covered, at_head, stream id, body, ...}; `covered` is the last entry looked at.
SCAN_SCRIPT = r"""
local after, limit, check = ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local sel = cjson.decode(ARGV[5])
local t0, t1 = tonumber(ARGV[6]), tonumber(ARGV[7])
local info = xinfo()
if not info then return {'ok', after, 1} end
local head = info['last-generated-id']
if head == '0-0' then head = '' end
local maxdel = info['max-deleted-entry-id']
if check and after ~= '' and maxdel ~= '0-0' and pad(after) < pad(maxdel) then
  return {'expired', maxdel}
end
local out, found, scanned, covered, at_end = {'ok', '', 0}, 0, 0, after, false
local cursor = after == '' and '-' or '(' .. after
while found < limit do
  local want = math.min(256, __SCAN__ - scanned)
  if want <= 0 then break end
  local entries = redis.call('XRANGE', STREAM, cursor, '+', 'COUNT', want)
  for _, e in ipairs(entries) do
    scanned, covered = scanned + 1, e[1]
    local f = e[2]
    local t = tonumber(f[8])
    if wanted(sel, f) and (not t0 or t >= t0) and (not t1 or t < t1) then
      out[#out + 1] = e[1]
      out[#out + 1] = f[10]
      found = found + 1
      if found >= limit then break end
    end
  end
  if #entries < want and found < limit then at_end = true break end
  cursor = '(' .. covered
end
if at_end and head ~= '' and (covered == '' or pad(covered) < pad(head)) then covered = head end
out[2] = covered
out[3] = (head == '' or (covered ~= '' and pad(covered) >= pad(head))) and 1 or 0
return out
""".replace("__SCAN__", str(SCAN))

# ARGV: prefix. Returns {head, max-deleted-id, sentinel or false}.
INFO = r"""
local info = xinfo()
local alive = redis.call('GET', P .. 'alive')
if not info then return {'0-0', '0-0', alive} end
return {info['last-generated-id'], info['max-deleted-entry-id'], alive}
"""

# ARGV: prefix, token. Writes the sentinel unless present; returns {sentinel, head}.
OPEN = r"""
redis.call('SET', P .. 'alive', ARGV[2], 'NX')
local info = xinfo()
return {redis.call('GET', P .. 'alive'), info and info['last-generated-id'] or '0-0'}
"""

# ARGV: prefix, token this instance knows, a new token, the last position it saw, then
# group/selector pairs to recreate. Returns {'ok'|'gap', sentinel}.
RECOVER = r"""
local current = redis.call('GET', P .. 'alive')
if current == ARGV[2] then return {'ok', current} end
if not current then
  redis.call('SET', P .. 'alive', ARGV[3])
  current = ARGV[3]
end
local seen = ARGV[4]
if seen ~= '0-0' then
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
"""

# ARGV: prefix, group, selector JSON, start. Returns the group's selector JSON.
JOIN = r"""
local existing = redis.call('HGET', P .. 'groups', ARGV[2])
if not existing then
  redis.call('HSET', P .. 'groups', ARGV[2], ARGV[3])
  existing = ARGV[3]
end
redis.pcall('XGROUP', 'CREATE', STREAM, ARGV[2], ARGV[4], 'MKSTREAM')
return existing
"""

# ARGV: prefix, group, consumer, limit, visibility ms, max attempts.
# Returns {'nogroup'} or {'ok', more, stream id, body, attempt, ...}.
CLAIM = r"""
local group, consumer = ARGV[2], ARGV[3]
local limit, vis, max_attempts = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local raw = redis.call('HGET', P .. 'groups', group)
if not raw then return {'nogroup'} end
-- Fails (and nothing is written) when the consumer group is gone.
local made = redis.pcall('XGROUP', 'CREATECONSUMER', STREAM, group, consumer)
if type(made) == 'table' and made.err then return {'nogroup'} end
local sel = cjson.decode(raw)
local DUE_KEY, DEAD_KEY = P .. 'due:' .. group, P .. 'dead:' .. group
local now, out, handed = now_ms(), {'ok', 0}, 0
for _, p in ipairs(redis.call('ZRANGEBYSCORE', DUE_KEY, '-inf', now, 'LIMIT', 0, limit)) do
  local sid = unpad(p)
  local e = redis.call('XRANGE', STREAM, sid, sid)[1]
  local st = e and get_status(e[2][2], group)
  if not st then  -- trimmed away meanwhile
    redis.call('ZREM', DUE_KEY, p)
    redis.call('XACK', STREAM, group, sid)
  else
    if st.s == DELIVERED then
      add_error(st, 'not acked by ' .. st.c .. ' within the visibility timeout', now)
    end
    st.t = now
    if st.a >= max_attempts then
      st.s = DEAD
      redis.call('ZREM', DUE_KEY, p)
      redis.call('ZADD', DEAD_KEY, 0, p)
      redis.call('XACK', STREAM, group, sid)
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
-- New entries: read only as many as are still wanted, so none is read and dropped.
local scanned = 0
while handed < limit do
  local want = math.min(limit - handed, __SCAN__ - scanned)
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
""".replace("__SCAN__", str(SCAN))

# ARGV: prefix, group, event ids... Returns {'notfound', id} or {'ok', newly acked}.
ACK = r"""
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
"""

# ARGV: prefix, group, event id, delay ms, park (0/1), error, max attempts.
# Returns {'notfound'}, {'acked'} or {'ok', state}.
NACK = r"""
local group, eid = ARGV[2], ARGV[3]
local st = get_status(eid, group)
if not st then return {'notfound'} end
if st.s == ACKED then return {'acked'} end
if st.s == DEAD then return {'ok', DEAD} end
local now = now_ms()
add_error(st, ARGV[6], now)
st.t = now
local sid = redis.call('HGET', P .. 'ids', eid)
local p = pad(sid)
redis.pcall('XACK', STREAM, group, sid)  -- its member no longer holds it
if ARGV[5] == '1' or st.a >= tonumber(ARGV[7]) then
  st.s = DEAD
  redis.call('ZREM', P .. 'due:' .. group, p)
  redis.call('ZADD', P .. 'dead:' .. group, 0, p)
else
  st.s = RETRYING
  redis.call('ZADD', P .. 'due:' .. group, now + tonumber(ARGV[4]), p)
end
put_status(eid, group, st)
return {'ok', st.s}
"""

# ARGV: prefix, group, consumer. Its entries fall due now; the consumer is removed.
RELEASE = r"""
local group = ARGV[2]
local held = redis.pcall('XPENDING', STREAM, group, '-', '+', 10000, ARGV[3])
if held.err then return 0 end
local now = now_ms()
for _, x in ipairs(held) do
  redis.call('ZADD', P .. 'due:' .. group, 'XX', now, pad(x[1]))
end
redis.pcall('XGROUP', 'DELCONSUMER', STREAM, group, ARGV[3])
return #held
"""

# ARGV: prefix, group, consumer. Returns how many entries the consumer holds.
UNACKED = r"""
local r = redis.pcall('XPENDING', STREAM, ARGV[2])
if r.err or not r[4] then return 0 end
for _, c in ipairs(r[4]) do
  if c[1] == ARGV[3] then return tonumber(c[2]) end
end
return 0
"""

# ARGV: prefix, event id. Returns {} or {stream id, body}.
GET = r"""
local sid = redis.call('HGET', P .. 'ids', ARGV[2])
if not sid then return {} end
local e = redis.call('XRANGE', STREAM, sid, sid)[1]
if not e then return {} end
return {sid, e[2][10]}
"""

# ARGV: prefix, event id. Returns {} or {stream id, body, JSON of what status needs}.
STATUS = r"""
local eid = ARGV[2]
local sid = redis.call('HGET', P .. 'ids', eid)
local e = sid and redis.call('XRANGE', STREAM, sid, sid)[1]
if not e then return {} end
local facts = {now = now_ms(), groups = {}, status = {}, due = {}, last = {}}
local flat = redis.call('HGETALL', P .. 'groups')
for i = 1, #flat, 2 do facts.groups[flat[i]] = flat[i + 1] end
flat = redis.call('HGETALL', P .. 'st:' .. eid)
for i = 1, #flat, 2 do
  facts.status[flat[i]] = flat[i + 1]
  facts.due[flat[i]] = redis.call('ZSCORE', P .. 'due:' .. flat[i], pad(sid)) or false
end
for _, g in ipairs(redis.call('XINFO', 'GROUPS', STREAM)) do
  local t = {}
  for i = 1, #g, 2 do t[g[i]] = g[i + 1] end
  facts.last[t['name']] = t['last-delivered-id']
end
return {sid, e[2][10], cjson.encode(facts)}
"""

# ARGV: prefix, group, after, limit. Returns {'nogroup'} or {'ok', id, body, status, ...}.
DEAD_LETTERS = r"""
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
"""

# ARGV: prefix, group, batch, then event ids (none: the first `batch` dead letters).
# Returns {'nogroup'} or {'ok', replayed, looked at}.
REPLAY = r"""
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
"""
