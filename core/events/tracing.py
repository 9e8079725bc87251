"""Trace context that travels with events, and the spans of producing and consuming them.

An event published inside a span carries that span's W3C `traceparent` (and `tracestate`)
in its attributes; the span that processes it starts a trace of its own with a Link to
the producer, following the OpenTelemetry messaging conventions. With no tracer provider
configured every helper here does next to nothing: no valid span, nothing to add.

Usage (a subscriber of the events client; `EventHandler` does this by itself)::

    async for received in events.subscribe(types=["mesh.projects.v1.*"], group="billing"):
        with consumer_span(received.event, group="billing"):
            await charge(received.event)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from opentelemetry import propagate, trace
from opentelemetry.context import Context

from core.events.model import Event

TRACEPARENT = "traceparent"
SYSTEM = "mesh"  # messaging.system: the events service is the broker
DESTINATION = "mesh.events"  # the one stream every event goes to
MAX_LINKS = 128  # the SDK's default span link limit

tracer = trace.get_tracer("meshkit.events")


def stamp(events: Iterable[Event]) -> None:
    """Adds the current span's trace context to each event that does not carry one already.

    The caller's own `traceparent` wins: an event relayed or republished keeps its producer.
    Outside a valid span (tracing off) this is one check.
    """
    if not trace.get_current_span().get_span_context().is_valid:
        return
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    for event in events:
        if TRACEPARENT not in event.attributes:
            event.attributes.update(carrier)


def producer_of(event: Event) -> trace.SpanContext | None:
    """The span context of the span that published `event`, or None if it carries none."""
    if TRACEPARENT not in event.attributes:
        return None
    context = propagate.extract(event.attributes, context=Context())
    producer = trace.get_current_span(context).get_span_context()
    return producer if producer.is_valid else None


@contextmanager
def consumer_span(
    event: Event, *, group: str = "", operation: str = "process"
) -> Iterator[trace.Span]:
    """A CONSUMER span around handling `event`, linked to the span that published it.

    The span is the root of a trace of its own (an event may be handled long after, and
    more than once); its Link leads to the producer's trace. An exception raised in the
    block is recorded on the span and sets its status to ERROR.

    Args:
        event: The event being handled.
        group: The consumer group it was delivered to, if any.
        operation: `process` for handling; `receive` for a span around only taking it.
    """
    producer = producer_of(event)
    attributes = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": DESTINATION,
        "messaging.message.id": event.id,
        "mesh.event.type": event.type,
    }
    if group:
        attributes["messaging.consumer.group.name"] = group
    with tracer.start_as_current_span(
        f"{operation} {event.type}",
        context=Context(),  # a root, whatever span the caller is in
        kind=trace.SpanKind.CONSUMER,
        links=[trace.Link(producer)] if producer is not None else None,
        attributes=attributes,
    ) as span:
        yield span


@contextmanager
def publish_span(events: Sequence[Event]) -> Iterator[trace.Span]:
    """A PRODUCER span around sending `events` (a relayed batch) on to the event store.

    When every event came from one trace, the span continues it (its parent is the first
    event's producer, the others are linked), so a write and the delivery of its event
    share one trace id. Otherwise the span starts a trace with a Link to each producer.
    """
    producers: dict[tuple[int, int], trace.SpanContext] = {}
    untraced = False
    for event in events:
        producer = producer_of(event)
        if producer is None:
            untraced = True
        else:
            producers.setdefault((producer.trace_id, producer.span_id), producer)
    found = list(producers.values())
    parent = Context()
    if found and not untraced and len({p.trace_id for p in found}) == 1:
        parent = trace.set_span_in_context(trace.NonRecordingSpan(found[0]), parent)
        found = found[1:]
    with tracer.start_as_current_span(
        "publish",
        context=parent,
        kind=trace.SpanKind.PRODUCER,
        links=[trace.Link(p) for p in found[:MAX_LINKS]] or None,
        attributes={
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
            "messaging.destination.name": DESTINATION,
            "messaging.batch.message_count": len(events),
        },
    ) as span:
        yield span
