"""Event codec: typed, timestamped messages packed into a chunk's plaintext.

One event is ``type (1 byte) | offset in microseconds (uvarint) | length (uvarint) | payload``.
Offsets are absolute from the recording start so every chunk decodes on its own (seeking).
The container does not interpret types or payloads: terminal types live in
``recordings.terminal``, desktop and tunnel issues define their own. Does no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from recordings.container import MAX_EVENT_BYTES, FormatError

# uvarints up to 10 bytes cover 64-bit values; anything longer is corrupt input.
_MAX_VARINT_BYTES = 10


@dataclass(frozen=True, slots=True)
class Event:
    offset_us: int
    type: int
    payload: bytes

    @property
    def offset_seconds(self) -> float:
        return self.offset_us / 1_000_000


_ONE_BYTE = [bytes((i,)) for i in range(0x80)]
_TYPE_BYTE = [bytes((i,)) for i in range(0x100)]


def _uvarint(value: int) -> bytes:
    # Unrolled for the common sizes: this runs twice per event on the writer's hot path.
    if value < 0x80:
        return _ONE_BYTE[value]
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    if value < 0x200000:
        return bytes((value & 0x7F | 0x80, (value >> 7) & 0x7F | 0x80, value >> 14))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def check_event(offset_us: int, event_type: int) -> None:
    if not 0 <= event_type <= 0xFF:
        raise ValueError("event type must fit one byte")
    if offset_us < 0:
        raise ValueError("event offset must not be negative")


def event_prefix(offset_us: int, event_type: int, length: int) -> bytes:
    """Type, offset and length of one event; the caller has run :func:`check_event`."""
    return _TYPE_BYTE[event_type] + _uvarint(offset_us) + _uvarint(length)


def encode_event_into(buffer: bytearray, offset_us: int, event_type: int, payload: bytes) -> None:
    """Append one encoded event to ``buffer``."""
    check_event(offset_us, event_type)
    buffer += event_prefix(offset_us, event_type, len(payload))
    buffer += payload


def encode_event(offset_us: int, event_type: int, payload: bytes) -> bytes:
    buffer = bytearray()
    encode_event_into(buffer, offset_us, event_type, payload)
    return bytes(buffer)


def _read_uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= len(data):
            raise FormatError("event truncated inside a varint")
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise FormatError("varint too long")


def decode_events(chunk: bytes) -> Iterator[Event]:
    """Yield the events of one chunk's plaintext; raise FormatError on malformed input."""
    pos = 0
    end = len(chunk)
    while pos < end:
        event_type = chunk[pos]
        offset_us, pos = _read_uvarint(chunk, pos + 1)
        length, pos = _read_uvarint(chunk, pos)
        if length > MAX_EVENT_BYTES or pos + length > end:
            raise FormatError("event length exceeds its chunk or the format limit")
        yield Event(offset_us, event_type, chunk[pos : pos + length])
        pos += length
