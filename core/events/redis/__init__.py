"""The distributed event store: one Redis stream shared by every instance, and its groups.

Every change of state is one Lua script (`lua/*.lua`, see `scripts`), so it is atomic
however many instances share the Redis: an append (dedupe, XADD, retention), a claim
(due redeliveries, then new entries through XREADGROUP), an ack, a nack. The store is
`RedisEventStore` (`store`): its stream half (`stream`) and its consumer-group half
(`groups`) over one connection (`connection`). Keys, all under `{namespace}:events:`:

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
    lost          positions before it are of data Redis lost (POSITION_LOST): the newest
                  one seen before the loss, or the time a store started with no stream

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

from core.events.redis.store import RedisEventStore

__all__ = ["RedisEventStore"]
