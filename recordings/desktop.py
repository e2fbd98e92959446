"""Desktop recordings: the event types of a ``kind = desktop`` recording and their payloads.

A desktop session (VNC, or RDP drawn into a private VNC server) is recorded as the RFB
stream after the handshake, in both directions, each event holding whole RFB messages
exactly as relayed. ``START`` events hold a ServerInit body (width, height, pixel format,
name): the first one is the desktop as the viewer first saw it, and the gateway writes
another, with the size of the moment, just before it asks the server for a full
(non-incremental) update every few seconds. A player starts at any ``START``: a handshake
with that ServerInit, then the ``FROM_SERVER`` events that follow. The recording never holds
the target's authentication (it happens before the first event). Does no I/O and does not
parse RFB (``gateway.desktop.rfb`` does; this package never imports ``gateway``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

_INIT = struct.Struct(">HH16sI")
MAX_NAME_BYTES = 4096


class DesktopEvent(IntEnum):
    FROM_SERVER = 1  # whole RFB server messages (framebuffer updates, cut text, bell ...)
    TO_SERVER = 2  # whole RFB client messages as forwarded (keys, pointer, requests ...)
    START = 3  # a ServerInit body: where a player may start (first event, then keyframes)
    MARKER = 4  # UTF-8 text: "keyframe", "watch joined by bob", "clipboard refused" ...


@dataclass(frozen=True)
class StartPoint:
    width: int
    height: int
    pixel_format: bytes  # the 16 bytes of RFB's PIXEL_FORMAT
    name: str

    def payload(self) -> bytes:
        name = self.name.encode()[:MAX_NAME_BYTES]
        return _INIT.pack(self.width, self.height, self.pixel_format, len(name)) + name


def parse_start(payload: bytes) -> StartPoint:
    """A START payload back; ``ValueError`` for one that is not."""
    if len(payload) < _INIT.size:
        raise ValueError("start payload shorter than a ServerInit")
    width, height, pixel_format, length = _INIT.unpack_from(payload)
    if length > MAX_NAME_BYTES or len(payload) != _INIT.size + length:
        raise ValueError("start payload name length does not match")
    name = payload[_INIT.size :].decode("utf-8", errors="replace")
    return StartPoint(int(width), int(height), bytes(pixel_format), name)
