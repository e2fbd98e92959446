# ruff: noqa: F405
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

import struct
from collections.abc import Generator
from typing import TypeVar

# Every name of rfb_messages is used and re-exported here: rfb is their public home.
from gateway.desktop.rfb_messages import *  # noqa: F403
from gateway.desktop.rfb_messages import _VENCRYPT_INNER, _VERSION_RE, _check
from gateway.desktop.rfb_messages import __all__ as _messages_all

__all__ = [*_messages_all, "ClientStreamParser", "ServerStreamParser"]

_Need = Generator[None, None, bytes]
_C = TypeVar("_C")


def _hextile_tile_end(buf: bytearray, pos: int, raw_size: int, bpp: int) -> int:
    """Where a Hextile tile starting at ``pos`` ends, or -1 if it is not all in ``buf``."""
    size = len(buf)
    if pos >= size:
        return -1
    flags = buf[pos]
    pos += 1
    if flags & 1:
        pos += raw_size
    else:
        pos += bpp * (bool(flags & 2) + bool(flags & 4))
        if flags & 8:
            if pos >= size:
                return -1
            pos += 1 + buf[pos] * ((bpp if flags & 16 else 0) + 2)
    return pos if pos <= size else -1


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
                end = _hextile_tile_end(self._buf, self._pos, tw * th * bpp, bpp)
                if end >= 0:  # the whole tile is here: no pausing (most tiles, most of the time)
                    self._pos = end
                    continue
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
