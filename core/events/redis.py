"""The distributed event store: one Redis stream shared by every instance, and its groups.

Every change of state is one Lua script, so it is atomic however many instances share
the Redis: an append (dedupe, XADD, retention), a claim (due redeliveries, then new
entries through XREADGROUP), an ack, a nack. Keys, all under `{namespace}:events:`:

    stream        the events: fields i (id), y (type), s (subject), t (time, us), b (body)
    ids           hash  event id -> stream id (dedupe, `get`, `status`)
    log           zset  "<padded stream id>:<event id>", score 0: every stored event in
                  order, so retention can trim the stream, `ids` and statuses together
    st:<event>    hash  group -> JSON {s: state, a: attempts, c: consumer, t: ms, e: errors}
    groups        hash  group -> JSON selector
    due:<group>   zset  padded stream id -> when it is handed out again (ms): every open
                  delivery, on a visibility timeout (DELIVERED) or a retry (RETRYING)
    dead:<group>  zset  padded stream id, score 0: the dead letters, in position order
    alive         a token written at open; gone means Redis lost its data

The group's PEL holds exactly its DELIVERED entries (XREADGROUP adds them, XCLAIM moves
them to the member that takes them over, ack, nack and dead-lettering XACK them), so
XPENDING and XINFO show who holds what. Redelivery is driven by `due:<group>` rather
than XAUTOCLAIM: XAUTOCLAIM cannot be told "not before T" (XCLAIM clamps a future TIME
to now), so a retry delay longer than the visibility timeout would be cut short. A
retry re-enters the PEL through XCLAIM FORCE when it falls due.

Times inside scripts come from Redis (TIME), so instances with skewed clocks agree.
Scripts use keys they build from the prefix: fine on one Redis, not on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.errors import (
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    UnavailableError,
)
from core.events.model import (
    MAX_ERROR_CHARS,
    MAX_ERRORS_KEPT,
    Appended,
    AppendListener,
    Delivery,
    DeliveryError,
    Event,
    GroupStatus,
    HistoryQuery,
    Page,
    Policy,
    Selector,
    State,
)

log = structlog.get_logger()

T = TypeVar("T")

_POSITION = re.compile(r"(\d{1,20})-(\d{1,20})")
_U64 = 2**64
_SCAN = 2_000  # most entries one read, history or claim script looks at: bounds its run time
_READ_COUNT = 500  # events per XREAD of the live feed
_BLOCK = 1.0  # seconds XREAD blocks; below the socket timeout, so a quiet feed is not an error
_VERIFY_EVERY = 1.0  # seconds between the reader's checks of the sentinel
_BACKOFF = (0.05, 2.0)  # the reader's first and longest wait after an error
_GAP_REPORTED = 300.0  # seconds `check` reports a gap after it was found
_REPLAY_BATCH = 1_000
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)

# -- Lua --------------------------------------------------------------------------------

# Every script takes the key prefix as ARGV[1]; the helpers below are prepended to each.
_PRELUDE = (
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
_APPEND = r"""
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
_SCAN_SCRIPT = r"""
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
""".replace("__SCAN__", str(_SCAN))

# ARGV: prefix. Returns {head, max-deleted-id, sentinel or false}.
_INFO = r"""
local info = xinfo()
local alive = redis.call('GET', P .. 'alive')
if not info then return {'0-0', '0-0', alive} end
return {info['last-generated-id'], info['max-deleted-entry-id'], alive}
"""

# ARGV: prefix, token. Writes the sentinel unless present; returns {sentinel, head}.
_OPEN = r"""
redis.call('SET', P .. 'alive', ARGV[2], 'NX')
local info = xinfo()
return {redis.call('GET', P .. 'alive'), info and info['last-generated-id'] or '0-0'}
"""

# ARGV: prefix, token this instance knows, a new token, the last position it saw, then
# group/selector pairs to recreate. Returns {'ok'|'gap', sentinel}.
_RECOVER = r"""
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
_JOIN = r"""
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
_CLAIM = r"""
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
""".replace("__SCAN__", str(_SCAN))

# ARGV: prefix, group, event ids... Returns {'notfound', id} or {'ok', newly acked}.
_ACK = r"""
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
_NACK = r"""
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
_RELEASE = r"""
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
_UNACKED = r"""
local r = redis.pcall('XPENDING', STREAM, ARGV[2])
if r.err or not r[4] then return 0 end
for _, c in ipairs(r[4]) do
  if c[1] == ARGV[3] then return tonumber(c[2]) end
end
return 0
"""

# ARGV: prefix, event id. Returns {} or {stream id, body}.
_GET = r"""
local sid = redis.call('HGET', P .. 'ids', ARGV[2])
if not sid then return {} end
local e = redis.call('XRANGE', STREAM, sid, sid)[1]
if not e then return {} end
return {sid, e[2][10]}
"""

# ARGV: prefix, event id. Returns {} or {stream id, body, JSON of what status needs}.
_STATUS = r"""
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
_DEAD_LETTERS = r"""
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
_REPLAY = r"""
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


@dataclass(frozen=True, slots=True)
class _Gap:
    at: float  # time.time() when it was found
    problem: str


class RedisEventStore:
    """`core.events.model.EventStore` over Redis Streams, shared by every instance.

    Args:
        url: For example "redis://127.0.0.1:6379/0". The Redis must not evict keys
            (maxmemory-policy noeviction): an evicted sentinel reads as lost data.
        namespace: Every key starts with f"{namespace}:events:".
        retention: Events kept; older ones are trimmed with their statuses.
        timeout: Seconds any one Redis call may take.

    Usage::

        bus = EventBus(RedisEventStore(settings.redis_url))
    """

    name = "redis"

    def __init__(
        self, url: str, *, namespace: str = "mesh", retention: int = 1_000_000, timeout: float = 2.0
    ) -> None:
        if retention < 1 or timeout <= _BLOCK:
            raise ValueError("retention must be positive and timeout above the XREAD block")
        self._url = url
        self._prefix = f"{namespace}:events:"
        self._retention = retention
        self._chunk = max(1, min(1_000, retention // 100))  # trimmed at a time
        self._timeout = timeout
        self._client: Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._reader: asyncio.Task[None] | None = None
        self._reader_error = ""
        self._closing = False
        self._cursor = "0-0"  # the last position the live feed delivered
        self._token = ""  # the sentinel this instance knows
        self._groups: dict[str, Selector] = {}  # joined here: recreated after a gap
        self._verifying = asyncio.Lock()
        self._gap: _Gap | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self, on_append: AppendListener) -> None:
        # No hidden retries but one: a connection that died with a restarted Redis.
        # A pool that queues for a free connection (bounded by the socket timeout) rather
        # than failing when many subscriptions and groups need Redis at once.
        pool = BlockingConnectionPool.from_url(
            self._url,
            max_connections=100,
            timeout=self._timeout,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            retry=Retry(NoBackoff(), 1),
            protocol=2,  # the reply shapes the scripts and parsing below expect
        )
        self._client = Redis.from_pool(pool)  # closing the client closes the pool
        lua = {
            "append": _APPEND,
            "scan": _SCAN_SCRIPT,
            "info": _INFO,
            "open": _OPEN,
            "recover": _RECOVER,
            "join": _JOIN,
            "claim": _CLAIM,
            "ack": _ACK,
            "nack": _NACK,
            "release": _RELEASE,
            "unacked": _UNACKED,
            "get": _GET,
            "status": _STATUS,
            "dead_letters": _DEAD_LETTERS,
            "replay": _REPLAY,
        }
        self._scripts = {k: self._client.register_script(_PRELUDE + v) for k, v in lua.items()}
        try:
            token, head = await self._run("open", uuid.uuid4().hex)
        except BaseException:
            await self.close()
            raise
        self._token, self._cursor = _text(token), _text(head)
        self._closing = False
        self._reader = asyncio.create_task(self._read_live(on_append), name="event-reader")

    async def close(self) -> None:
        self._closing = True  # the reader stops even if a driver swallowed the cancel
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(self._timeout + _BLOCK):
                    await self._reader
            self._reader = None
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def check(self) -> str:
        await self._verify()  # raises UnavailableError when Redis is unreachable
        problems = []
        if self._gap is not None and time.time() - self._gap.at < _GAP_REPORTED:
            problems.append(self._gap.problem)  # reported for a while, never just logged
        if self._reader is None or self._reader.done():
            problems.append("the event reader is not running")
        elif self._reader_error:
            problems.append(f"the event reader is reconnecting: {self._reader_error}")
        return "; ".join(problems)

    def order_key(self, position: str) -> tuple[int, ...]:
        if not position:
            return ()
        match = _POSITION.fullmatch(position)
        if match is None or int(match[1]) >= _U64 or int(match[2]) >= _U64:
            raise InvalidArgumentError(
                "malformed position",
                reason="INVALID_POSITION",
                violations=[FieldViolation("position", "not a position of this event store")],
            )
        return (int(match[1]), int(match[2]))

    # -- the stream ---------------------------------------------------------------------

    async def append(self, batch: Sequence[Event]) -> list[Appended]:
        if not batch:
            return []
        args: list[Any] = [self._retention, self._chunk, len(batch)]
        for event in batch:
            time_us = event.time.seconds * 1_000_000 + event.time.nanos // 1000
            body = event.SerializeToString()  # prepare() cleared the position
            args += [event.id, event.type, event.subject, time_us, body]
        rows = await self._run("append", *args)
        results = []
        for event, (sid, duplicate) in zip(batch, rows, strict=True):
            position = _text(sid)
            if not duplicate:
                event.position = position
            results.append(Appended(event.id, position, bool(duplicate)))
        return results  # subscribers get them through the live feed, in stream order

    async def head(self) -> str:
        head, _, _ = await self._run("info")
        return _position(head)

    async def read(self, after: str, selector: Selector, limit: int) -> Page:
        self.order_key(after)
        reply = await self._run("scan", after, limit, 1, _selector_json(selector), "", "")
        if reply[0] == b"expired":
            raise OutOfRangeError(
                "the position is older than the retention",
                reason="POSITION_EXPIRED",
                metadata={"position": after, "oldest": _text(reply[1])},
            )
        return Page(_events(reply[3:]), _text(reply[1]), bool(reply[2]))

    async def get(self, event_id: str) -> Event | None:
        found = await self._run("get", event_id)
        return _events(found)[0] if found else None

    async def history(self, query: HistoryQuery, after: str, limit: int) -> list[Event]:
        """Scans the stream from `after`, up to `_SCAN` entries per script, until `limit`
        events match or the stream ends: the cost grows with the entries skipped, so a
        rare type over a long stream costs a pass over it (a chunked one).
        """
        self.order_key(after)
        start = "" if query.start_time is None else int(query.start_time * 1_000_000)
        end = "" if query.end_time is None else int(query.end_time * 1_000_000)
        selector = _selector_json(query.selector)
        found: list[Event] = []
        while len(found) < limit:
            reply = await self._run("scan", after, limit - len(found), 0, selector, start, end)
            found += _events(reply[3:])
            after = _text(reply[1])
            if reply[2] or not after:
                break
        return found

    # -- consumer groups ----------------------------------------------------------------

    async def join(self, group: str, selector: Selector, start: str) -> None:
        self.order_key(start)
        existing = await self._run("join", group, _selector_json(selector), start or "0")
        if _selector_of(existing) != selector:
            raise FailedPreconditionError(
                f"group {group!r} exists with another selector",
                reason="GROUP_SELECTOR_MISMATCH",
                metadata={"group": group},
            )
        self._groups[group] = selector

    async def claim(self, group: str, consumer: str, limit: int, policy: Policy) -> list[Delivery]:
        args = (group, consumer, limit, int(policy.visibility * 1000), policy.max_attempts)
        out: list[Delivery] = []
        for _ in range(10):  # a sparse selector may need several bounded scans to find one
            reply = await self._run("claim", *args)
            if reply[0] == b"nogroup":
                if group in self._groups and await self._verify():
                    continue  # Redis lost the group; it is recreated now
                raise _no_group(group)
            rows = reply[2:]
            out += [
                Delivery(_event(rows[i], rows[i + 1]), int(rows[i + 2]))
                for i in range(0, len(rows), 3)
            ]
            if out or not reply[1]:
                break
        return out

    async def next_due(self, group: str) -> float | None:
        key = f"{self._prefix}due:{group}"
        first = await self._call(lambda r: r.zrange(key, 0, 0, withscores=True))
        return float(first[0][1]) / 1000 if first else None

    async def unacked(self, group: str, consumer: str) -> int:
        return int(await self._run("unacked", group, consumer))

    async def release(self, group: str, consumer: str) -> None:
        await self._run("release", group, consumer)

    async def ack(self, group: str, event_ids: Sequence[str]) -> int:
        if not event_ids:
            return 0
        reply = await self._run("ack", group, *event_ids)
        if reply[0] == b"notfound":
            raise _no_delivery(_text(reply[1]), group)
        return int(reply[1])

    async def nack(
        self, group: str, event_id: str, *, delay: float, park: bool, error: str, policy: Policy
    ) -> State:
        message = (error or "nacked")[:MAX_ERROR_CHARS]
        args = (event_id, int(delay * 1000), int(park), message, policy.max_attempts)
        reply = await self._run("nack", group, *args)
        if reply[0] == b"notfound":
            raise _no_delivery(event_id, group)
        if reply[0] == b"acked":
            raise FailedPreconditionError(
                "the event is already acked", reason="ALREADY_ACKED", metadata={"id": event_id}
            )
        return State(int(reply[1]))

    # -- status and dead letters ----------------------------------------------------------

    async def status(self, event_id: str) -> list[GroupStatus]:
        found = await self._run("status", event_id)
        if not found:
            return []
        event, facts = _event(found[0], found[1]), json.loads(found[2])
        now = facts["now"] / 1000
        due = {group: float(score) for group, score in facts["due"].items() if score}
        out = [
            _status(group, json.loads(raw), due.get(group), now)
            for group, raw in facts["status"].items()
        ]
        key = self.order_key(event.position)
        for group, raw in facts["groups"].items():
            last = facts["last"].get(group)
            if group in facts["status"] or last is None or self.order_key(last) >= key:
                continue
            if _selector_of(raw).matches(event):
                out.append(GroupStatus(group, State.PENDING))
        return sorted(out, key=lambda s: s.group)

    async def dead_letters(
        self, group: str, after: str, limit: int
    ) -> list[tuple[Event, GroupStatus]]:
        self.order_key(after)
        reply = await self._run("dead_letters", group, after, limit)
        if reply[0] == b"nogroup":
            raise _no_group(group)
        rows = reply[1:]
        return [
            (_event(rows[i], rows[i + 1]), _status(group, json.loads(rows[i + 2]), None, 0.0))
            for i in range(0, len(rows), 3)
        ]

    async def replay(self, group: str, event_ids: Sequence[str]) -> int:
        total = 0
        while True:
            reply = await self._run("replay", group, _REPLAY_BATCH, *event_ids)
            if reply[0] == b"nogroup":
                raise _no_group(group)
            total += int(reply[1])
            if event_ids or int(reply[2]) < _REPLAY_BATCH:
                return total

    # -- the live feed and lost data ------------------------------------------------------

    async def _read_live(self, on_append: AppendListener) -> None:
        """The one reader of this store: every new entry, in order, to `on_append`."""
        delay, verified = _BACKOFF[0], 0.0
        while not self._closing:
            try:
                if time.monotonic() - verified >= _VERIFY_EVERY:
                    await self._verify()
                    verified = time.monotonic()
                cursor = self._cursor
                events = await self._read_after(cursor)
            except Exception as exc:  # logged, retried after a bounded backoff
                if self._closing:
                    return
                self._reader_error = type(exc).__name__
                log.warning("event.reader_failed", error=self._reader_error, retry_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF[1])
                continue
            self._reader_error, delay = "", _BACKOFF[0]
            if not events or self._cursor != cursor:
                continue  # nothing new, or a gap moved the cursor while this read was out
            self._cursor = events[-1].position
            try:
                on_append(events)
            except Exception:
                log.exception("event.listener_failed", count=len(events))

    async def _read_after(self, cursor: str) -> list[Event]:
        stream, block = self._prefix + "stream", int(_BLOCK * 1000)

        def xread(r: Redis) -> Awaitable[Any]:
            return r.xread({stream: cursor}, count=_READ_COUNT, block=block)

        reply: Any = await self._call(xread, extra=_BLOCK)
        entries = reply[0][1] if reply else []
        return [_event(sid, fields[b"b"]) for sid, fields in entries]

    async def _verify(self) -> bool:
        """Checks the sentinel; when Redis lost its data, recovers and returns True."""
        async with self._verifying:
            _, maxdel, alive = await self._run("info")
            if alive is not None and _text(alive) == self._token:
                if self.order_key(_text(maxdel)) > self.order_key(self._cursor):
                    self._lost(f"the live feed fell behind the retention after {self._cursor}")
                    self._cursor = _text(maxdel)
                return False
            pairs = [x for g, s in self._groups.items() for x in (g, _selector_json(s))]
            seen = self._cursor
            args = (self._token, uuid.uuid4().hex, seen, *pairs)
            outcome, token = await self._run("recover", *args)
            self._token = _text(token)
            if outcome == b"gap":
                self._lost(
                    "redis lost the event stream (restarted without persistence?): "
                    f"events after {seen or 'the start'} and group progress are gone",
                    groups=sorted(self._groups),
                )
            gap: bool = outcome == b"gap"
            return gap

    def _lost(self, problem: str, **details: object) -> None:
        self._gap = _Gap(time.time(), problem)
        log.error("event.gap", problem=problem, last_position=self._cursor, **details)

    # -- calls ----------------------------------------------------------------------------

    async def _run(self, script: str, *args: Any) -> Any:
        return await self._call(lambda _: self._scripts[script](args=[self._prefix, *args]))

    async def _call(self, fn: Callable[[Redis], Awaitable[T]], extra: float = 0.0) -> T:
        if self._client is None:
            raise UnavailableError("the event store is not open", reason="EVENTS_UNAVAILABLE")
        try:
            async with asyncio.timeout(self._timeout + extra):
                result = await fn(self._client)
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # redis-py 8.1 can swallow a cancel that lands as a reply arrives;
                    # honour it, or a cancelled caller (or our own timeout) runs on.
                    raise asyncio.CancelledError
                return result
        except _UNREACHABLE:
            raise UnavailableError(
                "the event store is unreachable", reason="EVENTS_UNAVAILABLE"
            ) from None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _position(sid: bytes | str) -> str:
    text = _text(sid)
    return "" if text == "0-0" else text


def _event(sid: bytes | str, body: bytes) -> Event:
    event = Event.FromString(body)
    event.position = _text(sid)
    return event


def _events(flat: Sequence[Any]) -> list[Event]:
    return [_event(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def _selector_json(selector: Selector) -> str:
    return json.dumps({"types": list(selector.types), "subject": selector.subject})


def _selector_of(raw: bytes | str) -> Selector:
    found = json.loads(raw)
    return Selector(tuple(found["types"] or ()), found["subject"])


def _status(group: str, st: dict[str, Any], due: float | None, now: float) -> GroupStatus:
    state = State(st["s"])
    if state == State.DELIVERED and due is not None and due / 1000 <= now:
        state = State.RETRYING  # its visibility timeout ran out: it will be handed out again
    errors = [DeliveryError(e["m"], e["t"] / 1000, int(e["a"])) for e in (st["e"] or [])]
    return GroupStatus(group, state, int(st["a"]), st["c"], st["t"] / 1000, errors)


def _no_group(group: str) -> NotFoundError:
    return NotFoundError(f"no group {group!r}", reason="GROUP_NOT_FOUND", metadata={"group": group})


def _no_delivery(event_id: str, group: str) -> NotFoundError:
    return NotFoundError(
        f"event {event_id!r} was never delivered to group {group!r}",
        reason="DELIVERY_NOT_FOUND",
        metadata={"id": event_id, "group": group},
    )
