"""Hypothesis strategies built from protobuf descriptors: any message, with boundary values.

`messages(descriptor)` draws instances of the message a descriptor describes, walking its
fields recursively: integers at their type's limits, NaN and infinite floats, empty, huge,
unicode and NUL strings, enums with numbers nobody declared, repeated fields from empty to
over a thousand, maps, nested messages down to a depth bound, and the well-known types
with values outside what they may hold (a Timestamp after year 9999, negative nanos, a
Duration of 2**63 seconds, field masks naming fields that are not there, Any with foreign
type URLs). `variants(seed)` draws copies of a valid message with one to three fields,
at any depth, replaced that way, so a value out of range gets past the checks of the
others. (`tests/fuzz/raw.py` draws the bodies no message object serializes to.)

Nothing here knows a service: a new message or field is covered once it is generated.
Field-specific values go in through `hints` (field name -> strategy), mixed in with the
generic ones, so a fuzzer can also reach the code behind "this resource exists".

Usage::

    requests = messages(CreateProjectRequest.DESCRIPTOR, hints={"name": st.just("projects/x")})
    near_valid = variants(CreateProjectRequest(project=a_valid_project))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf import any_pb2, duration_pb2, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

Hints = Mapping[str, st.SearchStrategy[Any]]
F = FieldDescriptor

INT32 = (0, 1, -1, 2**31 - 1, -(2**31))
INT64 = (*INT32, 2**31, 2**53 + 1, 2**63 - 1, -(2**63))
UINT32 = (0, 1, 2**31 - 1, 2**31, 2**32 - 1)
UINT64 = (*UINT32, 2**63 - 1, 2**63, 2**64 - 1)
DOUBLES = (0.0, -0.0, 1.0, -1.0, math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324)
FLOATS = (0.0, -0.0, 1.0, -1.0, math.nan, math.inf, -math.inf, 3.4028234e38, 1e-45)
STRINGS = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\n",
    "é",
    "漢字",
    "🙂",
    "\u202e",  # right-to-left override
    "\ufeff",  # byte order mark
    "\U0010ffff",
    "*",
    "%",
    "'",
    '"',
    "\\",
    "../..",
)
# Lengths of strings of one repeated letter: around the limits of names, labels and texts.
LONG_STRINGS = (64, 65, 201, 1001, 4001, 100_000)
# Timestamp: 0001-01-01 and 9999-12-31T23:59:59 are the edges; one past each is invalid.
TIMESTAMP_SECONDS = (0, 1, -1, 253402300799, 253402300800, -62135596800, -62135596801, *INT64)
# Duration: at most 10,000 years (315,576,000,000 s) either way.
DURATION_SECONDS = (0, 1, -1, 59, 60, 61, 604800, 315576000000, 315576000001, *INT64)
NANOS = (0, 1, -1, 999_999_999, 1_000_000_000, 2**31 - 1, -(2**31))
# How many times a repeated field repeats one value, besides a few drawn ones.
LONG_REPEATS = (1000, 1001, 5000)


def messages(descriptor: Descriptor, *, hints: Hints | None = None, depth: int = 3) -> Any:
    """Instances of `descriptor`'s message class, every field maybe set.

    Args:
        descriptor: E.g. `CreateProjectRequest.DESCRIPTOR`.
        hints: Extra values by field name (for a repeated field: for each element), drawn
            besides the generic ones. A field mask's paths are drawn from the names of
            the fields reachable from `descriptor`.
        depth: How many levels of nested messages are filled; deeper ones stay unset.
    """
    paths = sorted(_field_paths(descriptor, depth))
    return _Builder(dict(hints or {}), paths).message(descriptor, depth)


def variants(seed: Message, *, hints: Hints | None = None, depth: int = 3) -> Any:
    """Copies of `seed` (a valid request) with one to three fields, at any depth, replaced
    by drawn values: past validation, to where a value out of range reaches the storage."""
    builder = _Builder(dict(hints or {}), sorted(_field_paths(seed.DESCRIPTOR, depth)))
    targets = _targets(seed.DESCRIPTOR, depth)

    @st.composite
    def vary(draw: st.DrawFn) -> Message:
        message = type(seed)()
        message.CopyFrom(seed)
        for path in draw(st.lists(st.sampled_from(targets), min_size=1, max_size=3)):
            *outer, field = path
            parent = message
            for step in outer:
                parent = getattr(parent, step.name)
            values = builder._field(field, depth - len(outer))
            if values is not None:
                parent.ClearField(field.name)
                _assign(parent, field, draw(values))
        return message

    return vary()


def _targets(descriptor: Descriptor, depth: int) -> list[tuple[FieldDescriptor, ...]]:
    """Paths to every field `depth` levels down, through singular non-map messages."""
    found: list[tuple[FieldDescriptor, ...]] = []
    for field in descriptor.fields:
        found.append((field,))
        nested = field.message_type
        plain = nested is not None and not nested.GetOptions().map_entry
        if plain and depth > 0 and not field.is_repeated:
            found += [(field, *p) for p in _targets(nested, depth - 1)]
    return found


class _Builder:
    def __init__(self, hints: dict[str, st.SearchStrategy[Any]], paths: list[str]) -> None:
        self._hints = hints
        self._paths = paths

    def message(self, descriptor: Descriptor, depth: int) -> st.SearchStrategy[Any]:
        special = self._well_known(descriptor, depth)
        if special is not None:
            return special
        kind = GetMessageClass(descriptor)
        fields = [(f, v) for f in descriptor.fields if (v := self._field(f, depth)) is not None]
        if not fields:  # no fields, or none left above the depth bound
            return st.builds(kind)

        @st.composite
        def build(draw: st.DrawFn) -> Message:
            message = kind()
            for field, values in fields:
                if draw(st.booleans()):
                    _assign(message, field, draw(values))
            return message

        return build()

    def _field(self, field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
        if field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            if depth <= 0:
                return None
            key, value = field.message_type.fields
            values = self._single(value, depth - 1)
            if values is None:
                return None
            keys = self._single(key, depth - 1)
            return None if keys is None else st.dictionaries(keys, values, max_size=4)
        one = self._single(field, depth)
        if one is None or not field.is_repeated:
            return one
        return st.one_of(
            st.lists(one, max_size=4),
            st.tuples(one, st.sampled_from(LONG_REPEATS)).map(_repeated),
        )

    def _single(self, field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
        if field.type == F.TYPE_MESSAGE:
            if depth <= 0:
                return None
            values = self.message(field.message_type, depth - 1)
        elif field.type == F.TYPE_ENUM:
            values = _enums(field)
        else:
            values = SCALARS[field.type]()
        hint = self._hints.get(field.name)
        return values if hint is None else st.one_of(hint, values)

    def _well_known(self, descriptor: Descriptor, depth: int) -> st.SearchStrategy[Any] | None:
        name = descriptor.full_name
        if name == "google.protobuf.Timestamp":
            return _seconds_and_nanos(timestamp_pb2.Timestamp, TIMESTAMP_SECONDS)
        if name == "google.protobuf.Duration":
            return _seconds_and_nanos(duration_pb2.Duration, DURATION_SECONDS)
        if name == "google.protobuf.FieldMask":
            path = st.one_of(st.sampled_from(["*", "", ".", "a..b", *self._paths]), st.text())
            kind = GetMessageClass(descriptor)
            return st.lists(path, max_size=4).map(lambda paths: kind(paths=paths))
        if name == "google.protobuf.Any":
            return self._any(depth)
        return None

    def _any(self, depth: int) -> st.SearchStrategy[Any]:
        packed = [self.message(struct_pb2.Struct.DESCRIPTOR, min(depth, 2))]
        packed.append(_seconds_and_nanos(timestamp_pb2.Timestamp, TIMESTAMP_SECONDS))

        def pack(message: Message) -> any_pb2.Any:
            wrapped = any_pb2.Any()
            wrapped.Pack(message)
            return wrapped

        foreign = st.builds(
            any_pb2.Any,
            type_url=st.one_of(
                st.sampled_from(
                    ["", "type.googleapis.com/", "type.googleapis.com/no.such.Type", "x/y/z"]
                ),
                st.text(max_size=40),
            ),
            value=st.binary(max_size=64),
        )
        return st.one_of(st.one_of(packed).map(pack), foreign)


def _repeated(pair: tuple[Any, int]) -> list[Any]:
    """`value` `times` times over, or twice if it is big: a request stays a few MB."""
    value, times = pair
    size = value.ByteSize() if isinstance(value, Message) else len(str(value))
    return [value] * (times if size <= 200 else 2)


def _assign(message: Message, field: FieldDescriptor, value: Any) -> None:
    target = getattr(message, field.name)
    if field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
        for key, item in value.items():
            if isinstance(item, Message):
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif field.is_repeated:
        target.extend(value)
    elif field.type == F.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)


def _boundary_or(values: tuple[Any, ...], drawn: st.SearchStrategy[Any]) -> Callable[[], Any]:
    return lambda: st.one_of(st.sampled_from(values), drawn)


def _ints(low: int, high: int, values: tuple[int, ...]) -> Callable[[], Any]:
    return _boundary_or(values, st.integers(low, high))


SCALARS: dict[int, Callable[[], st.SearchStrategy[Any]]] = {
    F.TYPE_INT32: _ints(-(2**31), 2**31 - 1, INT32),
    F.TYPE_SINT32: _ints(-(2**31), 2**31 - 1, INT32),
    F.TYPE_SFIXED32: _ints(-(2**31), 2**31 - 1, INT32),
    F.TYPE_INT64: _ints(-(2**63), 2**63 - 1, INT64),
    F.TYPE_SINT64: _ints(-(2**63), 2**63 - 1, INT64),
    F.TYPE_SFIXED64: _ints(-(2**63), 2**63 - 1, INT64),
    F.TYPE_UINT32: _ints(0, 2**32 - 1, UINT32),
    F.TYPE_FIXED32: _ints(0, 2**32 - 1, UINT32),
    F.TYPE_UINT64: _ints(0, 2**64 - 1, UINT64),
    F.TYPE_FIXED64: _ints(0, 2**64 - 1, UINT64),
    F.TYPE_DOUBLE: _boundary_or(DOUBLES, st.floats()),
    F.TYPE_FLOAT: _boundary_or(FLOATS, st.floats(width=32)),
    F.TYPE_BOOL: st.booleans,
    F.TYPE_STRING: lambda: st.one_of(
        st.sampled_from(STRINGS), st.text(max_size=80), st.sampled_from(LONG_STRINGS).map(_letters)
    ),
    F.TYPE_BYTES: _boundary_or((b"", b"\x00", b"\xff" * 1000), st.binary(max_size=80)),
}


def _letters(length: int) -> str:
    return "a" * length


def _enums(field: FieldDescriptor) -> st.SearchStrategy[int]:
    known = [v.number for v in field.enum_type.values]
    if field.enum_type.is_closed:  # proto2: an undeclared number cannot be set
        return st.sampled_from(known)
    unknown = st.one_of(
        st.sampled_from([max(known) + 1, -1, *INT32]), st.integers(-(2**31), 2**31 - 1)
    )
    return st.one_of(st.sampled_from(known), unknown)


def _seconds_and_nanos(kind: Any, seconds: tuple[int, ...]) -> st.SearchStrategy[Any]:
    """Either within the type's range or at and past its edges, seconds and nanos alike."""
    return st.builds(
        kind,
        seconds=st.one_of(st.sampled_from(seconds), st.integers(-(2**63), 2**63 - 1)),
        nanos=st.one_of(st.sampled_from(NANOS), st.integers(-(2**31), 2**31 - 1)),
    )


def _field_paths(descriptor: Descriptor, depth: int, prefix: str = "") -> set[str]:
    """Dotted names of the fields reachable from `descriptor`, `depth` levels down."""
    found: set[str] = set()
    for field in descriptor.fields:
        path = prefix + field.name
        found.add(path)
        nested = field.message_type
        if nested is not None and depth > 0 and not nested.GetOptions().map_entry:
            found |= _field_paths(nested, depth - 1, path + ".")
    return found
