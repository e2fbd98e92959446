"""RFB 3.8 (VNC) on the wire: limits, numbers, the message types both parsers produce, and
the serializers for what the gateway itself sends. ``gateway.desktop.rfb`` re-exports all of
it beside the parsers; import from there. Does no I/O and decides nothing.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.errors import ConduitError

__all__ = [
    "Bell",
    "ClientCutText",
    "ClientInit",
    "ClientMessage",
    "ConnectionFailed",
    "ENC_COMPRESS_LEVEL",
    "ENC_COPYRECT",
    "ENC_CURSOR",
    "ENC_DESKTOP_NAME",
    "ENC_DESKTOP_SIZE",
    "ENC_EXTENDED_DESKTOP_SIZE",
    "ENC_HEXTILE",
    "ENC_JPEG_QUALITY",
    "ENC_LAST_RECT",
    "ENC_POINTER_POS",
    "ENC_RAW",
    "ENC_RRE",
    "ENC_TIGHT",
    "ENC_ZRLE",
    "FramebufferUpdate",
    "FramebufferUpdateRequest",
    "HEXTILE_SIZE",
    "HandshakeMessage",
    "KeyEvent",
    "MAX_CUT_TEXT_BYTES",
    "MAX_ENCODINGS",
    "MAX_FRAMEBUFFER_DIMENSION",
    "MAX_NAME_BYTES",
    "MAX_PLAIN_CREDENTIAL_BYTES",
    "MAX_REASON_BYTES",
    "MAX_RECTANGLES",
    "MAX_RECT_BYTES",
    "MAX_SCREENS",
    "MAX_UPDATE_BYTES",
    "PIXEL_FORMAT_BGRX",
    "PixelFormat",
    "PlainCredentials",
    "PointerEvent",
    "ProtocolVersion",
    "RFBError",
    "Rectangle",
    "SEC_INVALID",
    "SEC_NONE",
    "SEC_VENCRYPT",
    "SEC_VNC_AUTH",
    "SUPPORTED_ENCODINGS",
    "Screen",
    "SecurityChoice",
    "SecurityResult",
    "SecurityTypes",
    "ServerCutText",
    "ServerInit",
    "ServerMessage",
    "SetColourMapEntries",
    "SetDesktopSize",
    "SetEncodings",
    "SetPixelFormat",
    "TIGHT_MIN_COMPRESS",
    "VENCRYPT_PLAIN",
    "VENCRYPT_TLS_NONE",
    "VENCRYPT_TLS_PLAIN",
    "VENCRYPT_TLS_VNC",
    "VENCRYPT_X509_NONE",
    "VENCRYPT_X509_PLAIN",
    "VENCRYPT_X509_VNC",
    "VeNCryptSubtypeAck",
    "VeNCryptSubtypeChoice",
    "VeNCryptSubtypes",
    "VeNCryptVersion",
    "VeNCryptVersionAck",
    "VncAuthChallenge",
    "VncAuthResponse",
    "bell",
    "client_cut_text",
    "client_init",
    "connection_failed",
    "filter_encodings",
    "framebuffer_update",
    "framebuffer_update_request",
    "key_event",
    "pointer_event",
    "protocol_version",
    "security_choice",
    "security_result",
    "security_types",
    "server_cut_text",
    "server_init",
    "set_encodings",
    "set_pixel_format",
    "vencrypt_subtype",
    "vencrypt_version",
]

# -- limits (every length from the wire is checked against one of these) -------------------
MAX_FRAMEBUFFER_DIMENSION = 16384  # width and height of the framebuffer and of a rectangle
MAX_RECT_BYTES = 64 << 20  # the payload of one rectangle (default; per parser)
MAX_UPDATE_BYTES = 64 << 20  # one whole FramebufferUpdate message (default; per parser)
MAX_RECTANGLES = 65535  # rectangles in one update, also when it ends with LastRect
MAX_NAME_BYTES = 4096  # desktop name in ServerInit and the DesktopName pseudo-encoding
MAX_REASON_BYTES = 4096  # failure reasons (connection failed, SecurityResult)
MAX_CUT_TEXT_BYTES = 1 << 20  # ClientCutText / ServerCutText
MAX_ENCODINGS = 256  # entries in one SetEncodings
MAX_SCREENS = 64  # screens in an ExtendedDesktopSize rectangle or SetDesktopSize
HEXTILE_SIZE = 16
TIGHT_MIN_COMPRESS = 12  # Tight sends fewer bytes than this uncompressed, without a length

# -- security types and VeNCrypt subtypes ---------------------------------------------------
SEC_INVALID = 0
SEC_NONE = 1
SEC_VNC_AUTH = 2
SEC_VENCRYPT = 19
VENCRYPT_PLAIN = 256
VENCRYPT_TLS_NONE = 257
VENCRYPT_TLS_VNC = 258
VENCRYPT_TLS_PLAIN = 259
VENCRYPT_X509_NONE = 260
VENCRYPT_X509_VNC = 261
VENCRYPT_X509_PLAIN = 262
# What follows the subtype's (optional) TLS: the inner authentication.
_VENCRYPT_INNER = {
    VENCRYPT_PLAIN: "plain",
    VENCRYPT_TLS_NONE: "none",
    VENCRYPT_TLS_VNC: "vnc",
    VENCRYPT_TLS_PLAIN: "plain",
    VENCRYPT_X509_NONE: "none",
    VENCRYPT_X509_VNC: "vnc",
    VENCRYPT_X509_PLAIN: "plain",
}
MAX_PLAIN_CREDENTIAL_BYTES = 1024  # VeNCrypt Plain username and password, each

# -- encodings ------------------------------------------------------------------------------
ENC_RAW = 0
ENC_COPYRECT = 1
ENC_RRE = 2
ENC_HEXTILE = 5
ENC_TIGHT = 7
ENC_ZRLE = 16
ENC_CURSOR = -239
ENC_DESKTOP_SIZE = -223
ENC_LAST_RECT = -224
ENC_POINTER_POS = -232
ENC_DESKTOP_NAME = -307
ENC_EXTENDED_DESKTOP_SIZE = -308
ENC_JPEG_QUALITY = range(-32, -22)  # quality levels 0-9: hints, no data of their own
ENC_COMPRESS_LEVEL = range(-256, -246)  # compression levels 0-9: hints
# Everything the parsers can frame. Anything else a viewer asks for is dropped by
# filter_encodings (fence, continuous updates, extended clipboard, QEMU and xvp messages
# would add messages we do not parse), and a server that sends it anyway is refused.
SUPPORTED_ENCODINGS = frozenset(
    {
        ENC_RAW,
        ENC_COPYRECT,
        ENC_RRE,
        ENC_HEXTILE,
        ENC_TIGHT,
        ENC_ZRLE,
        ENC_CURSOR,
        ENC_DESKTOP_SIZE,
        ENC_LAST_RECT,
        ENC_POINTER_POS,
        ENC_DESKTOP_NAME,
        ENC_EXTENDED_DESKTOP_SIZE,
        *ENC_JPEG_QUALITY,
        *ENC_COMPRESS_LEVEL,
    }
)

_VERSION_RE = re.compile(rb"RFB (\d{3})\.(\d{3})\n")


class RFBError(ConduitError):
    """The RFB stream is malformed, oversized or uses something we do not support.

    ``reason`` (also ``message``) is short and contains no stream content beyond numbers."""

    def __init__(self, reason: str) -> None:
        super().__init__("the desktop stream was refused", reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


def _check(condition: bool, reason: str) -> None:
    if not condition:
        raise RFBError(reason)


# -- values ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PixelFormat:
    bits_per_pixel: int
    depth: int
    big_endian: bool
    true_colour: bool
    red_max: int
    green_max: int
    blue_max: int
    red_shift: int
    green_shift: int
    blue_shift: int

    _STRUCT = struct.Struct(">BBBBHHHBBB3x")

    @property
    def bytes_per_pixel(self) -> int:
        return self.bits_per_pixel // 8

    @property
    def tight_pixel_bytes(self) -> int:
        """Tight's TPIXEL: 3 bytes for 24-bit true colour in 32 bits, else a whole pixel."""
        if (
            self.true_colour
            and self.bits_per_pixel == 32
            and self.depth == 24
            and self.red_max == self.green_max == self.blue_max == 255
        ):
            return 3
        return self.bytes_per_pixel

    def pack(self) -> bytes:
        return self._STRUCT.pack(
            self.bits_per_pixel,
            self.depth,
            int(self.big_endian),
            int(self.true_colour),
            self.red_max,
            self.green_max,
            self.blue_max,
            self.red_shift,
            self.green_shift,
            self.blue_shift,
        )

    @classmethod
    def unpack(cls, data: bytes) -> PixelFormat:
        bpp, depth, big, true, rmax, gmax, bmax, rsh, gsh, bsh = cls._STRUCT.unpack(data)
        _check(bpp in (8, 16, 32), f"pixel format: {bpp} bits per pixel")
        _check(1 <= depth <= bpp, f"pixel format: depth {depth} at {bpp} bits per pixel")
        if true:
            for value_max, shift in ((rmax, rsh), (gmax, gsh), (bmax, bsh)):
                _check(shift < bpp and value_max > 0, "pixel format: bad colour max or shift")
        return cls(bpp, depth, bool(big), bool(true), rmax, gmax, bmax, rsh, gsh, bsh)

    def rgb(self, pixel: bytes) -> tuple[int, int, int]:
        """One true-colour pixel's red, green and blue scaled to 0-255."""
        value = int.from_bytes(pixel, "big" if self.big_endian else "little")
        out = []
        for value_max, shift in (
            (self.red_max, self.red_shift),
            (self.green_max, self.green_shift),
            (self.blue_max, self.blue_shift),
        ):
            out.append(((value >> shift) & value_max) * 255 // value_max if value_max else 0)
        return out[0], out[1], out[2]


# The format Xvnc and noVNC use by default: 32 bits, depth 24, little-endian BGRX.
PIXEL_FORMAT_BGRX = PixelFormat(32, 24, False, True, 255, 255, 255, 16, 8, 0)


@dataclass(frozen=True, slots=True)
class Rectangle:
    """One rectangle of a FramebufferUpdate; its payload is ``raw[start:end]`` of the update."""

    x: int
    y: int
    width: int
    height: int
    encoding: int
    start: int
    end: int


# -- messages (each keeps its exact bytes in ``raw``) -----------------------------------------
@dataclass(frozen=True, slots=True)
class ProtocolVersion:
    major: int
    minor: int  # as sent; ``effective_minor`` is what the protocol runs as
    raw: bytes

    @property
    def effective_minor(self) -> int:
        return 8 if self.minor >= 8 else 7 if self.minor == 7 else 3


@dataclass(frozen=True, slots=True)
class SecurityTypes:
    types: tuple[int, ...]
    raw: bytes
    chosen_by_server: bool = False  # RFB 3.3: the server names the one type


@dataclass(frozen=True, slots=True)
class ConnectionFailed:
    """The server refused before authentication (no security types), with its reason."""

    reason: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class SecurityChoice:
    type: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class VncAuthChallenge:
    challenge: bytes = field(repr=False)
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class VncAuthResponse:
    response: bytes = field(repr=False)
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class VeNCryptVersion:
    major: int
    minor: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class VeNCryptVersionAck:
    status: int  # 0 accepted
    raw: bytes


@dataclass(frozen=True, slots=True)
class VeNCryptSubtypes:
    subtypes: tuple[int, ...]
    raw: bytes


@dataclass(frozen=True, slots=True)
class VeNCryptSubtypeChoice:
    subtype: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class VeNCryptSubtypeAck:
    accepted: bool  # after an accepted TLS subtype, TLS starts on the connection
    raw: bytes


@dataclass(frozen=True, slots=True)
class PlainCredentials:
    username: str = field(repr=False)
    password: str = field(repr=False)
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class SecurityResult:
    ok: bool
    status: int
    reason: str  # RFB 3.8 sends one on failure
    raw: bytes


@dataclass(frozen=True, slots=True)
class ClientInit:
    shared: bool
    raw: bytes


@dataclass(frozen=True, slots=True)
class ServerInit:
    width: int
    height: int
    pixel_format: PixelFormat
    name: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class FramebufferUpdate:
    rectangles: tuple[Rectangle, ...]
    raw: bytes

    def payload(self, rect: Rectangle) -> memoryview:
        return memoryview(self.raw)[rect.start : rect.end]


@dataclass(frozen=True, slots=True)
class SetColourMapEntries:
    first: int
    colours: tuple[tuple[int, int, int], ...]
    raw: bytes


@dataclass(frozen=True, slots=True)
class Bell:
    raw: bytes


@dataclass(frozen=True, slots=True)
class ServerCutText:
    text: str  # Latin-1, as the protocol says
    raw: bytes


@dataclass(frozen=True, slots=True)
class SetPixelFormat:
    pixel_format: PixelFormat
    raw: bytes


@dataclass(frozen=True, slots=True)
class SetEncodings:
    encodings: tuple[int, ...]
    raw: bytes


@dataclass(frozen=True, slots=True)
class FramebufferUpdateRequest:
    incremental: bool
    x: int
    y: int
    width: int
    height: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class KeyEvent:
    down: bool
    key: int  # X keysym
    raw: bytes


@dataclass(frozen=True, slots=True)
class PointerEvent:
    buttons: int
    x: int
    y: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class ClientCutText:
    text: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class Screen:
    id: int
    x: int
    y: int
    width: int
    height: int
    flags: int


@dataclass(frozen=True, slots=True)
class SetDesktopSize:
    width: int
    height: int
    screens: tuple[Screen, ...]
    raw: bytes


HandshakeMessage = (
    ProtocolVersion
    | SecurityTypes
    | ConnectionFailed
    | SecurityChoice
    | VncAuthChallenge
    | VncAuthResponse
    | VeNCryptVersion
    | VeNCryptVersionAck
    | VeNCryptSubtypes
    | VeNCryptSubtypeChoice
    | VeNCryptSubtypeAck
    | PlainCredentials
    | SecurityResult
    | ClientInit
    | ServerInit
)
ServerMessage = (
    ProtocolVersion
    | SecurityTypes
    | ConnectionFailed
    | VncAuthChallenge
    | VeNCryptVersion
    | VeNCryptVersionAck
    | VeNCryptSubtypes
    | VeNCryptSubtypeAck
    | SecurityResult
    | ServerInit
    | FramebufferUpdate
    | SetColourMapEntries
    | Bell
    | ServerCutText
)
ClientMessage = (
    ProtocolVersion
    | SecurityChoice
    | VncAuthResponse
    | VeNCryptVersion
    | VeNCryptSubtypeChoice
    | PlainCredentials
    | ClientInit
    | SetPixelFormat
    | SetEncodings
    | FramebufferUpdateRequest
    | KeyEvent
    | PointerEvent
    | ClientCutText
    | SetDesktopSize
)


# -- what the gateway sends -------------------------------------------------------------------
def filter_encodings(encodings: Iterable[int]) -> tuple[int, ...]:
    """The encodings of a viewer's SetEncodings that we can frame, in its order, once each."""
    seen: dict[int, None] = {}
    for encoding in encodings:
        if encoding in SUPPORTED_ENCODINGS:
            seen.setdefault(encoding)
    return tuple(seen)


def protocol_version(minor: int = 8) -> bytes:
    return b"RFB 003.%03d\n" % minor


def _string(text: str | bytes, limit: int, encoding: str = "utf-8") -> bytes:
    data = text.encode(encoding) if isinstance(text, str) else text
    _check(len(data) <= limit, f"string of {len(data)} bytes is over the limit of {limit}")
    return struct.pack(">I", len(data)) + data


def security_types(types: Iterable[int]) -> bytes:
    listed = bytes(types)
    _check(0 < len(listed) <= 255, "security types: 1 to 255 of them")
    return bytes([len(listed)]) + listed


def connection_failed(reason: str) -> bytes:
    """RFB 3.7+: no security types, then why."""
    return b"\x00" + _string(reason, MAX_REASON_BYTES)


def security_choice(kind: int) -> bytes:
    return bytes([kind])


def security_result(ok: bool, reason: str = "") -> bytes:
    """RFB 3.8 SecurityResult: 0, or 1 and a reason."""
    return b"\0\0\0\0" if ok else struct.pack(">I", 1) + _string(reason, MAX_REASON_BYTES)


def vencrypt_version() -> bytes:
    return b"\x00\x02"


def vencrypt_subtype(subtype: int) -> bytes:
    return struct.pack(">I", subtype)


def client_init(shared: bool) -> bytes:
    return bytes([int(shared)])


def server_init(width: int, height: int, pixel_format: PixelFormat, name: str) -> bytes:
    _check(0 <= width <= MAX_FRAMEBUFFER_DIMENSION and 0 <= height <= MAX_FRAMEBUFFER_DIMENSION,
           "server init: framebuffer size out of range")  # fmt: skip
    return struct.pack(">HH", width, height) + pixel_format.pack() + _string(name, MAX_NAME_BYTES)


def set_pixel_format(pixel_format: PixelFormat) -> bytes:
    return b"\x00\x00\x00\x00" + pixel_format.pack()


def set_encodings(encodings: Iterable[int]) -> bytes:
    listed = tuple(encodings)
    _check(len(listed) <= MAX_ENCODINGS, "set encodings: too many")
    return struct.pack(f">BxH{len(listed)}i", 2, len(listed), *listed)


def framebuffer_update_request(
    x: int, y: int, width: int, height: int, *, incremental: bool
) -> bytes:
    """``incremental=False`` asks for the whole area again: a keyframe."""
    return struct.pack(">BBHHHH", 3, int(incremental), x, y, width, height)


def key_event(down: bool, key: int) -> bytes:
    return struct.pack(">BBxxI", 4, int(down), key)


def pointer_event(buttons: int, x: int, y: int) -> bytes:
    return struct.pack(">BBHH", 5, buttons, x, y)


def client_cut_text(text: str) -> bytes:
    return b"\x06\x00\x00\x00" + _string(text, MAX_CUT_TEXT_BYTES, "latin-1")


def server_cut_text(text: str) -> bytes:
    return b"\x03\x00\x00\x00" + _string(text, MAX_CUT_TEXT_BYTES, "latin-1")


def bell() -> bytes:
    return b"\x02"


def framebuffer_update(rectangles: Iterable[tuple[int, int, int, int, int, bytes]]) -> bytes:
    """An update from (x, y, width, height, encoding, payload) tuples, payloads as encoded."""
    listed = list(rectangles)
    _check(len(listed) < 0xFFFF, "framebuffer update: too many rectangles")
    parts = [struct.pack(">BxH", 0, len(listed))]
    for x, y, width, height, encoding, payload in listed:
        parts.append(struct.pack(">HHHHi", x, y, width, height, encoding) + payload)
    return b"".join(parts)
