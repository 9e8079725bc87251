"""Request bodies no message object serializes to, for a request type's descriptor.

`raw_bodies(descriptor)` draws invalid UTF-8 in each string field (at any depth), a
varint where a string belongs, lengths past the end, groups, field number 0, nesting two
thousand levels deep, valid serializations cut short or with a byte flipped, and noise.
The Python API refuses to build any of them, so a fuzzer sends them with identity
serializers (`channel.unary_unary(method)(body)`).
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

from tests.fuzz.strategies import Hints, messages


def raw_bodies(descriptor: Descriptor, *, hints: Hints | None = None) -> Any:
    """Bytes sent as a request of `descriptor`'s type that no message object serializes to."""
    strings = sorted(_string_paths(descriptor, depth=3))
    valid = messages(descriptor, hints=hints, depth=2).map(lambda m: m.SerializeToString())
    choices = [
        st.binary(max_size=256),
        st.sampled_from(NOISE),
        _mangled(valid),
    ]
    if strings:
        choices.append(st.tuples(st.sampled_from(strings), st.sampled_from(BAD_UTF8)).map(_nest))
        choices.append(st.sampled_from(strings).map(_wrong_wire_type))
    return st.one_of(choices)


BAD_UTF8 = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"a\x80b", b"\xc0\xaf")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _tag(number, 2) + _varint(len(payload)) + payload


def _deeply_nested(levels: int) -> bytes:
    body = b""
    for _ in range(levels):
        body = _length_delimited(1, body)
    return body


NOISE = (
    b"",
    b"\x00",
    b"\x0a",  # a tag with no length
    b"\x0a\xff\xff\xff\xff\x0f",  # a length far past the end
    b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # an eleven-byte varint
    b"\x0b\x0c",  # a group (proto2 wire type 3) in a proto3 message
    b"\x0f",  # wire type 7 does not exist
    b"\x00\x00\x00",  # field number 0
    _deeply_nested(120),
    _deeply_nested(2000),
    b"\xff" * 4096,
)


def _string_paths(descriptor: Descriptor, depth: int) -> set[tuple[int, ...]]:
    """Field-number paths to every string field `depth` levels down, map keys included."""
    found: set[tuple[int, ...]] = set()
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            found.add((field.number,))
        elif field.type == FieldDescriptor.TYPE_MESSAGE and depth > 0:
            found |= {(field.number, *p) for p in _string_paths(field.message_type, depth - 1)}
    return found


def _nest(path_and_bytes: tuple[tuple[int, ...], bytes]) -> bytes:
    """`bad` as the value of the string field at `path`, each level a nested message."""
    path, body = path_and_bytes
    for number in reversed(path):
        body = _length_delimited(number, body)
    return body


def _wrong_wire_type(path: tuple[int, ...]) -> bytes:
    """A varint where the string field at the end of `path` should be."""
    *outer, last = path
    body = _tag(last, 0) + _varint(1)
    for number in reversed(outer):
        body = _length_delimited(number, body)
    return body


@st.composite
def _mangled(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """A valid serialization cut short, with a byte flipped, or with junk after it."""
    body = draw(valid)
    how = draw(st.sampled_from(["cut", "flip", "append"]))
    if how == "append" or not body:
        return body + draw(st.binary(min_size=1, max_size=16))
    at = draw(st.integers(0, len(body) - 1))
    if how == "cut":
        return body[:at]
    return body[:at] + bytes([body[at] ^ draw(st.integers(1, 255))]) + body[at + 1 :]
