"""Sans-io RFB 3.8 (VNC): byte streams in, framed messages out, and the messages we send.

``ServerStreamParser`` reads what a VNC server sends, ``ClientStreamParser`` what a viewer
sends. Both are incremental: feed any fragments, get each complete message once, with its
exact bytes in ``raw`` so a relay forwards them unchanged and a recorder stores them. Every
length from the wire is checked against a named limit before anything waits for it; a
malformed, unsupported or oversized message raises ``RFBError`` and the parser stays broken
(one bad message ends that stream, nothing else).

Framebuffer updates are framed, not decoded: the parser knows every rectangle's length (for
ZRLE and Tight from the lengths they carry, so their zlib streams are never inflated here)
and checks the headers; an encoding it cannot frame is refused, and ``filter_encodings``
keeps a viewer from asking for one. The handshake depends on what the other side chose, so
each parser is told the other direction's messages with ``note_server`` / ``note_client``.

Does no I/O, holds no secrets beyond the parsed bytes (VNC authentication challenges and
responses are messages like any other: callers keep them out of recordings), decides nothing.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from gateway.errors import ConduitError

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

_Need = Generator[None, None, bytes]
_C = TypeVar("_C")


class _StreamParser:
    """Shared machinery: a buffer and a generator that parses from it, pausing for bytes."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._out: list[object] = []
        self._error: RFBError | None = None
        self._closed = False
        self._gen = self._run()
        next(self._gen)

    def _run(self) -> Generator[None, None, None]:
        raise NotImplementedError
        yield  # pragma: no cover

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet make a complete message (non-zero at EOF: truncated)."""
        return len(self._buf) - self._pos

    def _feed(self, data: bytes | bytearray | memoryview) -> list[object]:
        if self._error is not None:
            raise self._error
        self._buf += data
        try:
            self._gen.send(None)
        except RFBError as exc:
            self._error = exc
        except StopIteration:  # the stream ended by protocol (a refusal): nothing may follow
            self._error = RFBError("data after the end of the stream")
        out, self._out = self._out, []
        # Complete messages first; the error comes with the next call (feed(b"") flushes it).
        if self._error is not None and not out:
            raise self._error
        return out

    def _need(self, n: int) -> _Need:
        end = self._pos + n
        while len(self._buf) < end:
            yield
        data = bytes(self._buf[self._pos : end])
        self._pos = end
        return data

    def _skip(self, n: int) -> Generator[None, None, None]:
        end = self._pos + n
        while len(self._buf) < end:
            yield
        self._pos = end

    def _begin(self) -> None:
        """A message starts here: drop what earlier messages used."""
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0

    def _raw(self) -> bytes:
        return bytes(self._buf[: self._pos])

    def _emit(self, message: object) -> None:
        self._out.append(message)

    def _end(self) -> Generator[None, None, None]:
        """The stream must end here (after a refusal): any further byte is an error."""
        self._begin()
        while not self._buf:
            yield
        raise RFBError("data after the end of the stream")

    def _string(self, limit: int, what: str) -> _Need:
        (length,) = struct.unpack(">I", (yield from self._need(4)))
        _check(length <= limit, f"{what}: {length} bytes is over the limit of {limit}")
        return (yield from self._need(length))

    def _version(self) -> Generator[None, None, ProtocolVersion]:
        self._begin()
        data = yield from self._need(12)
        match = _VERSION_RE.fullmatch(data)
        if match is None:
            raise RFBError("protocol version: not an RFB version string")
        major, minor = int(match.group(1)), int(match.group(2))
        _check(major == 3 and minor >= 3, f"protocol version: {major}.{minor} is not supported")
        message = ProtocolVersion(major, minor, data)
        self._emit(message)
        return message


class ServerStreamParser(_StreamParser):
    """What a VNC server sends: the handshake (unless ``pixel_format`` is given, which starts
    after ServerInit), then server messages framed under the current pixel format.

    Tell it what the client sent with ``note_client`` (its version, security choice,
    VeNCrypt answers, SetPixelFormat): the server's bytes are read in that light."""

    def __init__(
        self,
        pixel_format: PixelFormat | None = None,
        *,
        max_rect_bytes: int = MAX_RECT_BYTES,
        max_update_bytes: int = MAX_UPDATE_BYTES,
    ) -> None:
        self.pixel_format = pixel_format
        self.max_rect_bytes = max_rect_bytes
        self.max_update_bytes = max_update_bytes
        self._client: list[ClientMessage] = []
        super().__init__()

    def feed(self, data: bytes | bytearray | memoryview) -> list[ServerMessage]:
        return self._feed(data)  # type: ignore[return-value]

    def note_client(self, message: ClientMessage) -> list[ServerMessage]:
        """Record what the client sent; returns messages that this lets the parser finish."""
        if isinstance(message, SetPixelFormat):
            self.pixel_format = message.pixel_format
        elif not isinstance(message, (SetEncodings, FramebufferUpdateRequest, KeyEvent,
                                      PointerEvent, ClientCutText, SetDesktopSize)):  # fmt: skip
            self._client.append(message)
        return self.feed(b"")

    def _client_sent(self, kind: type[_C]) -> Generator[None, None, _C]:
        while not self._client:
            yield
        message = self._client.pop(0)
        if not isinstance(message, kind):
            raise RFBError(f"handshake: client sent {type(message).__name__}")
        return message

    def _run(self) -> Generator[None, None, None]:
        if self.pixel_format is None:
            if not (yield from self._handshake()):
                yield from self._end()
        while True:
            yield from self._message()

    # handshake ----------------------------------------------------------------------------
    def _handshake(self) -> Generator[None, None, bool]:
        yield from self._version()
        client = yield from self._client_sent(ProtocolVersion)
        minor = client.effective_minor
        self._begin()
        if minor == 3:
            (kind,) = struct.unpack(">I", (yield from self._need(4)))
            if kind == SEC_INVALID:
                return (yield from self._failed())
            _check(kind <= 255, f"security type {kind} is not valid")
            self._emit(SecurityTypes((kind,), self._raw(), chosen_by_server=True))
            chosen = kind
        else:
            (count,) = yield from self._need(1)
            if count == 0:
                return (yield from self._failed())
            types = tuple((yield from self._need(count)))
            self._emit(SecurityTypes(types, self._raw()))
            choice = yield from self._client_sent(SecurityChoice)
            _check(choice.type in types, f"client chose security type {choice.type}, not offered")
            chosen = choice.type
        if chosen == SEC_NONE:
            if minor == 8 and not (yield from self._security_result(minor)):
                return False
        elif chosen == SEC_VNC_AUTH:
            if not (yield from self._vnc_auth(minor)):
                return False
        elif chosen == SEC_VENCRYPT and minor >= 7:
            if not (yield from self._vencrypt(minor)):
                return False
        else:
            raise RFBError(f"security type {chosen} is not supported")
        yield from self._client_sent(ClientInit)
        yield from self._server_init()
        return True

    def _failed(self) -> Generator[None, None, bool]:
        reason = yield from self._string(MAX_REASON_BYTES, "failure reason")
        self._emit(ConnectionFailed(reason.decode("utf-8", "replace"), self._raw()))
        return False

    def _vnc_auth(self, minor: int) -> Generator[None, None, bool]:
        self._begin()
        challenge = yield from self._need(16)
        self._emit(VncAuthChallenge(challenge, self._raw()))
        yield from self._client_sent(VncAuthResponse)
        return (yield from self._security_result(minor))

    def _security_result(self, minor: int) -> Generator[None, None, bool]:
        self._begin()
        (status,) = struct.unpack(">I", (yield from self._need(4)))
        ok: bool = status == 0
        reason = b""
        if not ok and minor >= 8:
            reason = yield from self._string(MAX_REASON_BYTES, "security result reason")
        self._emit(SecurityResult(ok, status, reason.decode("utf-8", "replace"), self._raw()))
        return ok

    def _vencrypt(self, minor: int) -> Generator[None, None, bool]:
        self._begin()
        major_v, minor_v = yield from self._need(2)
        self._emit(VeNCryptVersion(major_v, minor_v, self._raw()))
        client = yield from self._client_sent(VeNCryptVersion)
        _check((client.major, client.minor) == (0, 2), "VeNCrypt: only version 0.2 is supported")
        self._begin()
        (status,) = yield from self._need(1)
        self._emit(VeNCryptVersionAck(status, self._raw()))
        if status != 0:
            return False
        self._begin()
        (count,) = yield from self._need(1)
        data = yield from self._need(4 * count)
        subtypes = struct.unpack(f">{count}I", data)
        self._emit(VeNCryptSubtypes(subtypes, self._raw()))
        choice = yield from self._client_sent(VeNCryptSubtypeChoice)
        _check(choice.subtype in subtypes, f"client chose VeNCrypt {choice.subtype}, not offered")
        inner = _VENCRYPT_INNER.get(choice.subtype)
        _check(inner is not None, f"VeNCrypt subtype {choice.subtype} is not supported")
        self._begin()
        (accepted,) = yield from self._need(1)
        self._emit(VeNCryptSubtypeAck(accepted == 1, self._raw()))
        if accepted != 1:
            return False
        if inner == "vnc":
            return (yield from self._vnc_auth(minor))
        if inner == "plain":
            yield from self._client_sent(PlainCredentials)
        return (yield from self._security_result(minor))

    def _server_init(self) -> Generator[None, None, None]:
        self._begin()
        width, height = struct.unpack(">HH", (yield from self._need(4)))
        _check(width <= MAX_FRAMEBUFFER_DIMENSION and height <= MAX_FRAMEBUFFER_DIMENSION,
               f"server init: framebuffer {width}x{height} is over the limit")  # fmt: skip
        pixel_format = PixelFormat.unpack((yield from self._need(16)))
        name = yield from self._string(MAX_NAME_BYTES, "desktop name")
        self.pixel_format = pixel_format
        self._emit(ServerInit(width, height, pixel_format, name.decode("utf-8", "replace"),
                              self._raw()))  # fmt: skip

    # after ServerInit ---------------------------------------------------------------------
    def _message(self) -> Generator[None, None, None]:
        self._begin()
        (kind,) = yield from self._need(1)
        if kind == 0:
            yield from self._update()
        elif kind == 1:
            first, count = struct.unpack(">xHH", (yield from self._need(5)))
            _check(first + count <= 65536, "colour map: entries past 65535")
            data = yield from self._need(6 * count)
            colours = tuple(struct.iter_unpack(">HHH", data))
            self._emit(SetColourMapEntries(first, colours, self._raw()))
        elif kind == 2:
            self._emit(Bell(self._raw()))
        elif kind == 3:
            yield from self._skip(3)
            text = yield from self._cut_text("server cut text")
            self._emit(ServerCutText(text, self._raw()))
        else:
            raise RFBError(f"server message type {kind} is not supported")

    def _cut_text(self, what: str) -> Generator[None, None, str]:
        (length,) = struct.unpack(">i", (yield from self._need(4)))
        # A negative length is the extended clipboard, which we never offer.
        _check(0 <= length <= MAX_CUT_TEXT_BYTES, f"{what}: length {length} is out of range")
        return (yield from self._need(length)).decode("latin-1")

    def _update(self) -> Generator[None, None, None]:
        (count,) = struct.unpack(">xH", (yield from self._need(3)))
        until_last = count == 0xFFFF  # with LastRect, "as many as come before LastRect"
        rects: list[Rectangle] = []
        while until_last or len(rects) < count:
            _check(len(rects) < MAX_RECTANGLES, "framebuffer update: too many rectangles")
            x, y, width, height, encoding = struct.unpack(">HHHHi", (yield from self._need(12)))
            _check(width <= MAX_FRAMEBUFFER_DIMENSION and height <= MAX_FRAMEBUFFER_DIMENSION,
                   f"rectangle {width}x{height} is over the limit")  # fmt: skip
            start = self._pos
            yield from self._rectangle(encoding, width, height)
            rects.append(Rectangle(x, y, width, height, encoding, start, self._pos))
            if encoding == ENC_LAST_RECT:
                break
        self._emit(FramebufferUpdate(tuple(rects), self._raw()))

    def _payload(self, n: int) -> Generator[None, None, None]:
        """Skip ``n`` payload bytes, after checking them against the limits."""
        _check(n <= self.max_rect_bytes, f"rectangle of {n} bytes is over the limit")
        _check(self._pos + n <= self.max_update_bytes, "framebuffer update is over the limit")
        yield from self._skip(n)

    def _rectangle(self, encoding: int, width: int, height: int) -> Generator[None, None, None]:
        pf = self.pixel_format
        if pf is None:
            raise RFBError("a framebuffer update before the pixel format is known")
        bpp = pf.bytes_per_pixel
        if encoding == ENC_RAW:
            yield from self._payload(width * height * bpp)
        elif encoding == ENC_COPYRECT:
            yield from self._payload(4)
        elif encoding == ENC_RRE:
            (subrects,) = struct.unpack(">I", (yield from self._need(4)))
            yield from self._payload(bpp + subrects * (bpp + 8))
        elif encoding == ENC_HEXTILE:
            yield from self._hextile(width, height, bpp)
        elif encoding == ENC_ZRLE:
            (length,) = struct.unpack(">I", (yield from self._need(4)))
            yield from self._payload(length)
        elif encoding == ENC_TIGHT:
            yield from self._tight(width, height, pf)
        elif encoding == ENC_CURSOR:
            yield from self._payload(width * height * bpp + (width + 7) // 8 * height)
        elif encoding in (ENC_DESKTOP_SIZE, ENC_LAST_RECT, ENC_POINTER_POS):
            pass
        elif encoding == ENC_DESKTOP_NAME:
            yield from self._string(MAX_NAME_BYTES, "desktop name")
        elif encoding == ENC_EXTENDED_DESKTOP_SIZE:
            (screens,) = yield from self._need(1)
            _check(screens <= MAX_SCREENS, f"{screens} screens is over the limit")
            yield from self._payload(3 + 16 * screens)
        else:
            raise RFBError(f"encoding {encoding} is not supported")

    def _hextile(self, width: int, height: int, bpp: int) -> Generator[None, None, None]:
        for ty in range(0, height, HEXTILE_SIZE):
            th = min(HEXTILE_SIZE, height - ty)
            for tx in range(0, width, HEXTILE_SIZE):
                tw = min(HEXTILE_SIZE, width - tx)
                _check(self._pos <= self.max_update_bytes, "framebuffer update is over the limit")
                (flags,) = yield from self._need(1)
                if flags & 1:  # Raw tile; the other bits do not count
                    yield from self._skip(tw * th * bpp)
                    continue
                skip = bpp * (bool(flags & 2) + bool(flags & 4))
                if flags & 8:
                    yield from self._skip(skip)
                    (subrects,) = yield from self._need(1)
                    skip = subrects * ((bpp if flags & 16 else 0) + 2)
                yield from self._skip(skip)

    def _tight(self, width: int, height: int, pf: PixelFormat) -> Generator[None, None, None]:
        (control,) = yield from self._need(1)
        kind = control >> 4
        tpixel = pf.tight_pixel_bytes
        if kind == 8:  # fill
            yield from self._payload(tpixel)
            return
        if kind == 9:  # JPEG
            yield from self._payload((yield from self._compact_length()))
            return
        _check(kind < 8, f"Tight compression control {control:#04x} is not supported")
        row = width * tpixel
        if kind & 4:  # an explicit filter follows
            (filter_id,) = yield from self._need(1)
            if filter_id == 1:  # palette
                (colours,) = yield from self._need(1)
                yield from self._payload((colours + 1) * tpixel)
                row = (width + 7) // 8 if colours + 1 == 2 else width
            else:
                _check(filter_id in (0, 2), f"Tight filter {filter_id} is not supported")
        size = row * height
        _check(size <= self.max_rect_bytes, f"rectangle of {size} bytes is over the limit")
        if size < TIGHT_MIN_COMPRESS:
            yield from self._payload(size)
        else:
            yield from self._payload((yield from self._compact_length()))

    def _compact_length(self) -> Generator[None, None, int]:
        (b0,) = yield from self._need(1)
        length = b0 & 0x7F
        if b0 & 0x80:
            (b1,) = yield from self._need(1)
            length |= (b1 & 0x7F) << 7
            if b1 & 0x80:
                (b2,) = yield from self._need(1)
                length |= b2 << 14
        return length


class ClientStreamParser(_StreamParser):
    """What a VNC viewer sends: the handshake (unless ``handshake=False``, which starts after
    ClientInit), then client messages. Tell it what the server sent with ``note_server``
    (an RFB 3.3 server's security type, VeNCrypt answers, a refusal)."""

    def __init__(self, *, handshake: bool = True) -> None:
        self._handshake_first = handshake
        self._server: list[ServerMessage] = []
        super().__init__()

    def feed(self, data: bytes | bytearray | memoryview) -> list[ClientMessage]:
        return self._feed(data)  # type: ignore[return-value]

    def note_server(self, message: ServerMessage) -> list[ClientMessage]:
        """Record what the server sent; returns messages that this lets the parser finish."""
        if isinstance(message, (SecurityTypes, ConnectionFailed, VeNCryptVersionAck,
                                VeNCryptSubtypeAck)):  # fmt: skip
            self._server.append(message)
        return self.feed(b"")

    def _server_sent(self, *kinds: type[object]) -> Generator[None, None, ServerMessage]:
        """The next noted server message of one of ``kinds`` (or a refusal)."""
        while True:
            while not self._server:
                yield
            message = self._server.pop(0)
            if isinstance(message, (*kinds, ConnectionFailed)):
                return message

    def _run(self) -> Generator[None, None, None]:
        if self._handshake_first and not (yield from self._handshake()):
            yield from self._end()
        while True:
            yield from self._message()

    def _handshake(self) -> Generator[None, None, bool]:
        version = yield from self._version()
        if version.effective_minor == 3:
            offer = yield from self._server_sent(SecurityTypes)
            if not isinstance(offer, SecurityTypes):
                return False
            chosen = offer.types[0]
        else:
            self._begin()
            (chosen,) = yield from self._need(1)
            self._emit(SecurityChoice(chosen, self._raw()))
        if chosen == SEC_VNC_AUTH:
            yield from self._vnc_response()
        elif chosen == SEC_VENCRYPT and version.effective_minor >= 7:
            if not (yield from self._vencrypt()):
                return False
        else:
            _check(chosen == SEC_NONE, f"security type {chosen} is not supported")
        self._begin()
        (shared,) = yield from self._need(1)
        self._emit(ClientInit(shared != 0, self._raw()))
        return True

    def _vnc_response(self) -> Generator[None, None, None]:
        self._begin()
        response = yield from self._need(16)
        self._emit(VncAuthResponse(response, self._raw()))

    def _vencrypt(self) -> Generator[None, None, bool]:
        self._begin()
        major, minor = yield from self._need(2)
        self._emit(VeNCryptVersion(major, minor, self._raw()))
        ack = yield from self._server_sent(VeNCryptVersionAck)
        if not isinstance(ack, VeNCryptVersionAck) or ack.status != 0:
            return False
        self._begin()
        (subtype,) = struct.unpack(">I", (yield from self._need(4)))
        self._emit(VeNCryptSubtypeChoice(subtype, self._raw()))
        inner = _VENCRYPT_INNER.get(subtype)
        _check(inner is not None, f"VeNCrypt subtype {subtype} is not supported")
        accepted = yield from self._server_sent(VeNCryptSubtypeAck)
        if not isinstance(accepted, VeNCryptSubtypeAck) or not accepted.accepted:
            return False
        if inner == "vnc":
            yield from self._vnc_response()
        elif inner == "plain":
            self._begin()
            ulen, plen = struct.unpack(">II", (yield from self._need(8)))
            _check(max(ulen, plen) <= MAX_PLAIN_CREDENTIAL_BYTES, "plain credentials too long")
            user = yield from self._need(ulen)
            password = yield from self._need(plen)
            user_text = user.decode("utf-8", "replace")
            password_text = password.decode("utf-8", "replace")
            self._emit(PlainCredentials(user_text, password_text, self._raw()))
        return True

    def _message(self) -> Generator[None, None, None]:
        self._begin()
        (kind,) = yield from self._need(1)
        if kind == 0:
            pixel_format = PixelFormat.unpack((yield from self._need(19))[3:])
            self._emit(SetPixelFormat(pixel_format, self._raw()))
        elif kind == 2:
            (count,) = struct.unpack(">xH", (yield from self._need(3)))
            _check(count <= MAX_ENCODINGS, f"set encodings: {count} is over the limit")
            encodings = struct.unpack(f">{count}i", (yield from self._need(4 * count)))
            self._emit(SetEncodings(encodings, self._raw()))
        elif kind == 3:
            incremental, x, y, w, h = struct.unpack(">BHHHH", (yield from self._need(9)))
            self._emit(FramebufferUpdateRequest(incremental != 0, x, y, w, h, self._raw()))
        elif kind == 4:
            down, key = struct.unpack(">BxxI", (yield from self._need(7)))
            self._emit(KeyEvent(down != 0, key, self._raw()))
        elif kind == 5:
            buttons, x, y = struct.unpack(">BHH", (yield from self._need(5)))
            self._emit(PointerEvent(buttons, x, y, self._raw()))
        elif kind == 6:
            yield from self._skip(3)
            (length,) = struct.unpack(">i", (yield from self._need(4)))
            _check(0 <= length <= MAX_CUT_TEXT_BYTES, f"client cut text: length {length}")
            text = (yield from self._need(length)).decode("latin-1")
            self._emit(ClientCutText(text, self._raw()))
        elif kind == 251:
            width, height, count = struct.unpack(">xHHBx", (yield from self._need(7)))
            _check(count <= MAX_SCREENS, f"set desktop size: {count} screens")
            _check(width <= MAX_FRAMEBUFFER_DIMENSION and height <= MAX_FRAMEBUFFER_DIMENSION,
                   f"set desktop size: {width}x{height} is over the limit")  # fmt: skip
            data = yield from self._need(16 * count)
            screens = tuple(Screen(*struct.unpack_from(">IHHHHI", data, 16 * i))
                            for i in range(count))  # fmt: skip
            self._emit(SetDesktopSize(width, height, screens, self._raw()))
        else:
            raise RFBError(f"client message type {kind} is not supported")


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
