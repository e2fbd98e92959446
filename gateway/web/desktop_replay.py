"""What the desktop player reads from a desktop recording: its index, its RFB in parts, a frame.

Reading is synchronous (callers run it in a worker thread) and goes through the verifying
reader: only chunks that authenticated become output. The container has no seek index, so
every read decrypts from the start of the file and skips what it does not need.

- ``desktop_index``: the recording's length, its start points (offset and event number: where
  the player may begin), its markers, and the key track (KeyEvents pressed, as
  ``gateway.desktop.keys`` names them) when input was recorded (``has_input``: any viewer
  message was; the recording does not say whether the asset records input). Every list is
  bounded.
- ``rfb_part``: the ``start`` and ``from_server`` events from one event number on, at most
  ``PART_BYTES`` of them, in the binary form ``static/desktop_player.js`` reads (``PART_MAGIC``,
  then per event: type u8, offset µs u64, length u32, payload; all big-endian), and the number
  of the next event when the part was cut.
- ``frame_at``: the desktop at an offset, decoded with ``gateway.desktop.framebuffer`` from the
  last start point at or before it (the thumbnail is ``frame_at`` the end).

The first start point holds the target's own pixel format (the viewer's handshake happens
before it asks for its own); the updates after it are in the viewer's. The decoder takes a
recorded SetPixelFormat (recorded with the input), else the next start point's format, else
(a recording shorter than one keyframe, without input) ``VIEWER_FORMAT``: the portal's viewer
is always noVNC, which always asks for it. Does not check who may read (``player``) and does
not audit.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from gateway.desktop import rfb
from gateway.desktop.framebuffer import Framebuffer
from gateway.desktop.keys import keysym_text
from recordings.desktop import DesktopEvent, parse_start
from recordings.events import Event

PART_MAGIC = b"CDRP1\n"
PART_BYTES = 8 << 20  # RFB handed to the player per request (a few keyframes of a big screen)
MAX_STARTS = 20_000  # start points listed (a keyframe every 5 s: over a day)
MAX_MARKERS = 1000
MAX_KEYS = 20_000
MAX_SEGMENT_BYTES = 64 << 20  # RFB between two start points decoded for a frame
THUMBNAIL_WIDTH = 320
_EVENT_HEAD = struct.Struct(">BQI")
# noVNC's pixel format (core/rfb.js, RFB.messages.pixelFormat at depth 24): RGBX.
VIEWER_FORMAT = rfb.PixelFormat(32, 24, False, True, 255, 255, 255, 0, 8, 16)
_Item = TypeVar("_Item")


@dataclass
class DesktopIndex:
    duration: float = 0.0
    starts: list[tuple[float, int]] = field(default_factory=list)  # (seconds, event number)
    markers: list[tuple[float, str]] = field(default_factory=list)
    keys: list[tuple[float, str]] = field(default_factory=list)
    has_input: bool = False
    cut: bool = False  # a list reached its bound

    def as_json(self) -> dict[str, object]:
        return {
            "duration": self.duration,
            "starts": [[round(s, 6), n] for s, n in self.starts],
            "markers": [[round(s, 6), text] for s, text in self.markers],
            "keys": [[round(s, 6), text] for s, text in self.keys],
            "has_input": self.has_input,
            "cut": self.cut,
        }


def _client_messages(payload: bytes) -> list[rfb.ClientMessage]:
    try:
        return rfb.ClientStreamParser(handshake=False).feed(payload)
    except rfb.RFBError:
        return []  # recorded as forwarded, so whole and valid; a bad one shows nothing


def desktop_index(events: Iterable[Event]) -> DesktopIndex:
    index = DesktopIndex()

    def add(items: list[_Item], bound: int, item: _Item) -> None:
        if len(items) < bound:
            items.append(item)
        else:
            index.cut = True

    for number, event in enumerate(events):
        index.duration = max(index.duration, event.offset_seconds)
        if event.type == DesktopEvent.START:
            add(index.starts, MAX_STARTS, (event.offset_seconds, number))
        elif event.type == DesktopEvent.MARKER:
            text = event.payload.decode("utf-8", "replace")[:200]
            add(index.markers, MAX_MARKERS, (event.offset_seconds, text))
        elif event.type == DesktopEvent.TO_SERVER:
            index.has_input = True
            for message in _client_messages(event.payload):
                if isinstance(message, rfb.KeyEvent) and message.down:
                    add(index.keys, MAX_KEYS, (event.offset_seconds, keysym_text(message.key)))
    return index


def rfb_part(
    events: Iterable[Event], first: int, budget: int = PART_BYTES
) -> tuple[bytes, int | None]:
    """The part from event ``first`` on and the next event's number (None: the end)."""
    out = bytearray(PART_MAGIC)
    for number, event in enumerate(events):
        if number < first or event.type not in (DesktopEvent.FROM_SERVER, DesktopEvent.START):
            continue
        if len(out) > len(PART_MAGIC) and len(out) + len(event.payload) > budget:
            return bytes(out), number
        out += _EVENT_HEAD.pack(event.type, event.offset_us, len(event.payload))
        out += event.payload
    return bytes(out), None


def read_part(data: bytes) -> Iterator[Event]:
    """A part back as events (the tests' view of what the page reads)."""
    if not data.startswith(PART_MAGIC):
        raise ValueError("not a desktop replay part")
    at = len(PART_MAGIC)
    while at < len(data):
        kind, offset, length = _EVENT_HEAD.unpack_from(data, at)
        at += _EVENT_HEAD.size
        yield Event(offset, kind, data[at : at + length])
        at += length


@dataclass
class _Segment:
    start: bytes  # the START payload
    first: bool  # the recording's first start point
    pixel_format: rfb.PixelFormat | None = None  # a recorded SetPixelFormat, if any
    updates: list[bytes] = field(default_factory=list)
    size: int = 0


def frame_at(events: Iterable[Event], seconds: float | None) -> Framebuffer | None:
    """The desktop at ``seconds`` (None: the end), or None when nothing was recorded by then.
    ``RFBError`` when the recorded updates do not decode."""
    segment: _Segment | None = None
    later_format: rfb.PixelFormat | None = None
    limit = None if seconds is None else round(seconds * 1_000_000)
    for event in events:
        if limit is not None and event.offset_us > limit:
            if event.type == DesktopEvent.START and segment is not None and segment.first:
                later_format = rfb.PixelFormat.unpack(parse_start(event.payload).pixel_format)
                break
            if segment is None or not segment.first:
                break
            continue  # past the offset: only looking for the viewer's pixel format
        if event.type == DesktopEvent.START:
            if segment is not None and segment.first and segment.pixel_format is None:
                later_format = rfb.PixelFormat.unpack(parse_start(event.payload).pixel_format)
            segment = _Segment(event.payload, first=segment is None)
        elif segment is None:
            continue
        elif event.type == DesktopEvent.FROM_SERVER:
            segment.size += len(event.payload)
            if segment.size > MAX_SEGMENT_BYTES:
                raise rfb.RFBError("recording: too much between two start points to decode")
            segment.updates.append(event.payload)
        elif event.type == DesktopEvent.TO_SERVER:
            for message in _client_messages(event.payload):
                if isinstance(message, rfb.SetPixelFormat):
                    segment.pixel_format = message.pixel_format
    if segment is None:
        return None
    return _decode(segment, later_format)


def _decode(segment: _Segment, later_format: rfb.PixelFormat | None) -> Framebuffer:
    start = parse_start(segment.start)
    pixel_format = segment.pixel_format or rfb.PixelFormat.unpack(start.pixel_format)
    if segment.first and segment.pixel_format is None:
        pixel_format = later_format or VIEWER_FORMAT
    framebuffer = Framebuffer(start.width, start.height, pixel_format)
    parser = rfb.ServerStreamParser(pixel_format)
    for payload in segment.updates:
        for message in parser.feed(payload):
            if isinstance(message, rfb.FramebufferUpdate):
                framebuffer.apply(message)
    return framebuffer


def thumbnail_png(events: Iterable[Event]) -> bytes | None:
    """The last frame as a PNG about ``THUMBNAIL_WIDTH`` pixels wide (None: no frame)."""
    framebuffer = frame_at(events, None)
    return framebuffer.png(THUMBNAIL_WIDTH) if framebuffer is not None else None
