"""The Redis scripts of `core.resources.redis_tier`: every key of the shared tier is read
and written under its generation, so clearing the cache is one atomic increment.

A value lives at `{prefix}{G}.{R}:{key}`, where G is the generation of the whole cache
and R that of the key's resource (what comes before the first "/" of the key:
"projects" for "projects/p1"), both kept in the hash `{prefix}generations` (fields "*"
and the resource; a missing field is 0). Clearing increments one field: every value
written before is out of reach at once, in every process, and expires with its TTL.

Each script reads the generations and the key in one step inside Redis, so nothing can
interleave: a read returns the generation it read under; a fill stores only if that is
still the generation, so a load that began before a clear never stores what it read; a
tombstone lands under the generation current when it is written. (The scripts name keys
they were not passed: fine on one Redis server, not on a Redis Cluster.)
"""

from __future__ import annotations

ALL = "*"
"""The generations field of the whole cache."""


def resource_of(key: str) -> str:
    """The resource a cache key belongs to: "projects" for "projects/p1"."""
    return key.partition("/")[0]


_GENERATION = """
local function generation(hash, key)
  local whole = redis.call('HGET', hash, '*') or '0'
  local own = redis.call('HGET', hash, string.match(key, '^[^/]*')) or '0'
  return whole .. '.' .. own
end
"""

READ = (
    _GENERATION
    + """
-- KEYS[1]: generations hash; ARGV: prefix, key. Returns {generation, raw or nil}.
local gen = generation(KEYS[1], ARGV[2])
return {gen, redis.call('GET', ARGV[1] .. gen .. ':' .. ARGV[2])}
"""
)

FILL = (
    _GENERATION
    + """
-- KEYS[1]: generations hash; ARGV: prefix, key, generation read, raw, ttl ms.
local gen = generation(KEYS[1], ARGV[2])
if gen ~= ARGV[3] then return 0 end
if redis.call('SET', ARGV[1] .. gen .. ':' .. ARGV[2], ARGV[4], 'NX', 'PX', ARGV[5]) then
  return 1
end
return 0
"""
)

INVALIDATE = (
    _GENERATION
    + """
-- KEYS[1]: generations hash; ARGV: prefix, tombstone ttl ms, channel, message, keys...
-- The key without a generation is tombstoned too: that is where processes of meshkit
-- before generations read, so during a rolling upgrade they never read back old values.
for i = 5, #ARGV do
  local gen = generation(KEYS[1], ARGV[i])
  redis.call('SET', ARGV[1] .. gen .. ':' .. ARGV[i], 't', 'PX', ARGV[2])
  redis.call('SET', ARGV[1] .. ARGV[i], 't', 'PX', ARGV[2])
end
return redis.call('PUBLISH', ARGV[3], ARGV[4])
"""
)

CLEAR = """
-- KEYS[1]: generations hash; ARGV: field ('*' or a resource), channel, message.
-- Returns how many subscribers heard the clear.
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
return redis.call('PUBLISH', ARGV[2], ARGV[3])
"""
