"""The consumer-group half of the Redis store: claims, acks, nacks, statuses, dead letters.

Each change of a delivery's state is one script (see the package docstring for the keys):
a claim hands out due redeliveries first, then new entries through XREADGROUP; an ack, a
nack, a release and a replay each move an event between the group's PEL, `due:<group>`
and `dead:<group>` at once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from core.errors import FailedPreconditionError
from core.events.failures import DeadLetter, EndReason, Failure
from core.events.model import Delivery, Event, GroupStatus, Policy, Selector, State
from core.events.redis.connection import StoreConnection
from core.events.redis.replies import (
    as_text,
    no_delivery,
    no_group,
    parse_event,
    parse_selector,
    parse_status,
    selector_json,
)

_REPLAY_BATCH = 1_000
_CLAIM_SCANS = 10  # a sparse selector may need several bounded scans to find one event


class RedisGroups(StoreConnection):
    """The groups of the shared stream, their members' deliveries and dead letters."""

    async def join(self, group: str, selector: Selector, start: str) -> None:
        self.order_key(start)
        existing = await self._run("join", group, selector_json(selector), start or "0")
        if parse_selector(existing) != selector:
            raise FailedPreconditionError(
                f"group {group!r} exists with another selector",
                reason="GROUP_SELECTOR_MISMATCH",
                metadata={"group": group},
            )
        self._groups[group] = selector

    async def claim(self, group: str, consumer: str, limit: int, policy: Policy) -> list[Delivery]:
        args = (group, consumer, limit, int(policy.visibility * 1000), policy.max_attempts)
        out: list[Delivery] = []
        for _ in range(_CLAIM_SCANS):
            reply = await self._run("claim", *args)
            if reply[0] == b"nogroup":
                if group in self._groups and await self._verify():
                    continue  # Redis lost the group; it is recreated now
                raise no_group(group)
            self._announce(group, json.loads(reply[2]))
            rows = reply[3:]
            out += [
                Delivery(parse_event(rows[i], rows[i + 1]), int(rows[i + 2]))
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
            raise no_delivery(as_text(reply[1]), group)
        return int(reply[1])

    async def nack(
        self,
        group: str,
        event_id: str,
        *,
        delay: float,
        park: bool,
        error: str,
        policy: Policy,
        reason: EndReason = EndReason.NACKED,
        failure: Failure | None = None,
    ) -> State:
        given = failure or Failure("")
        kept = Failure(error or "nacked", given.error_type, given.stack).bounded()
        reply = await self._run(
            "nack",
            group,
            *(event_id, int(delay * 1000), int(park), kept.message, policy.max_attempts),
            *(int(reason), kept.error_type, kept.stack),
        )
        if reply[0] == b"notfound":
            raise no_delivery(event_id, group)
        if reply[0] == b"acked":
            raise FailedPreconditionError(
                "the event is already acked", reason="ALREADY_ACKED", metadata={"id": event_id}
            )
        if len(reply) > 2:  # dead-lettered by this nack
            found = {"i": event_id, "y": as_text(reply[3]), "s": as_text(reply[4])}
            self._announce(group, [found | {"st": json.loads(reply[2])}])
        return State(int(reply[1]))

    def _announce(self, group: str, dead: list[dict[str, Any]] | dict[str, Any]) -> None:
        """Tells the listener of each event a script dead-lettered (`dead`, from its JSON)."""
        for found in dead if isinstance(dead, list) else ():  # cjson writes an empty list as {}
            status = parse_status(group, found["st"], None, 0.0)
            last = status.errors[-1] if status.errors else None
            letter = DeadLetter(group, found["i"], found["y"], found["s"], status.attempts, last)
            self.on_dead_letter(letter)

    async def status(self, event_id: str) -> list[GroupStatus]:
        found = await self._run("status", event_id)
        if not found:
            return []
        event, facts = parse_event(found[0], found[1]), json.loads(found[2])
        now = facts["now"] / 1000
        due = {group: float(score) for group, score in facts["due"].items() if score}
        out = [
            parse_status(group, json.loads(raw), due.get(group), now)
            for group, raw in facts["status"].items()
        ]
        key = self.order_key(event.position)
        for group, raw in facts["groups"].items():
            last = facts["last"].get(group)
            if group in facts["status"] or last is None or self.order_key(last) >= key:
                continue
            if parse_selector(raw).matches(event):
                out.append(GroupStatus(group, State.PENDING))
        return sorted(out, key=lambda s: s.group)

    async def dead_letters(
        self, group: str, after: str, limit: int
    ) -> list[tuple[Event, GroupStatus]]:
        self.order_key(after)
        reply = await self._run("dead_letters", group, after, limit)
        if reply[0] == b"nogroup":
            raise no_group(group)
        rows = reply[1:]
        return [
            (
                parse_event(rows[i], rows[i + 1]),
                parse_status(group, json.loads(rows[i + 2]), None, 0.0),
            )
            for i in range(0, len(rows), 3)
        ]

    async def replay(self, group: str, event_ids: Sequence[str]) -> int:
        total = 0
        while True:
            reply = await self._run("replay", group, _REPLAY_BATCH, *event_ids)
            if reply[0] == b"nogroup":
                raise no_group(group)
            total += int(reply[1])
            if event_ids or int(reply[2]) < _REPLAY_BATCH:
                return total
