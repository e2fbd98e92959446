"""The gateway's client side of a VNC target: connect, authenticate, then relay RFB messages.

``open_vnc`` connects over TCP or a unix socket (the RDP renderer's private Xvnc), performs
the RFB 3.8 handshake itself (3.3 and 3.7 servers too) with the vaulted password, and hands
back a ``VncConnection`` that yields framed server messages and takes client messages.

Security, in this order of trust: when the asset has a pinned certificate, only VeNCrypt
with an X.509 subtype is accepted and the certificate's SHA-256 must match a pin
(``CertificateMismatch``, a ``HostKeyMismatch``, otherwise: callers raise the same alert as
for SSH host keys); a target that stops offering TLS while pinned is refused the same way.
Without a pin: VNC authentication, or security None only if the asset says it has no
password. Anonymous TLS (TLSVnc, TLSNone) is never used: it cannot be verified.
``scan_certificate`` reads a target's certificate fingerprint for a person to pin.

The password, the challenge and the response stay in ``_vnc_auth_response``'s frame: they
are in no log, exception or returned value. Does not decide access, record or log anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from gateway.desktop import rfb
from gateway.errors import HostKeyMismatch, UpstreamError

HANDSHAKE_TIMEOUT_SECONDS = 15.0  # connect to ServerInit, whatever the target does
READ_CHUNK_BYTES = 1 << 16
_PIN_RE = re.compile(r"[0-9a-f]{64}")


class CertificateMismatch(HostKeyMismatch):
    """The target's TLS certificate is not one pinned for the asset (or TLS went missing)."""


class VncAuthFailed(UpstreamError):
    """The target refused the vaulted password (SecurityResult failed)."""


@dataclass(frozen=True)
class VncTarget:
    """Where a VNC session goes and how far to trust it (from the asset, never the client)."""

    host: str = ""
    port: int = 5900
    unix_path: str = ""  # instead of host and port: a local socket (the RDP renderer)
    certificate_pins: tuple[str, ...] = ()  # SHA-256 of the DER certificate, hex
    no_auth: bool = False  # the asset says the target has no password: security None is fine
    label: str = ""  # who this is in error details, e.g. "asset:hmi1"

    @property
    def where(self) -> str:
        place = self.unix_path or f"{self.host}:{self.port}"
        return f"{self.label} {place}".strip()


def normalize_pin(text: str) -> str:
    """A certificate fingerprint as 64 lowercase hex digits, from ``AB:CD:..``, ``sha256:..``
    or plain hex; ``ValueError`` when it is not a SHA-256 fingerprint."""
    value = text.strip().lower().removeprefix("sha256:").removeprefix("sha256 fingerprint=")
    value = value.replace(":", "")
    if not _PIN_RE.fullmatch(value):
        raise ValueError("not a SHA-256 certificate fingerprint (64 hex digits)")
    return value


def certificate_fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


_BIT_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _vnc_auth_response(password: str, challenge: bytes) -> bytes:
    """VNC authentication: the challenge under DES keyed by the password's first 8 bytes,
    each byte's bits reversed (the VNC convention); TripleDES with the key three times is
    single DES."""
    try:
        secret = password.encode("utf-8")
    except UnicodeError:
        raise UpstreamError(
            "the vaulted VNC password is not usable", "password is not text"
        ) from None
    key = secret[:8].ljust(8, b"\0").translate(_BIT_REVERSED)
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # noqa: S305 (the protocol)
    return encryptor.update(challenge) + encryptor.finalize()


@dataclass
class VncConnection:
    """An authenticated RFB connection after ServerInit."""

    server_init: rfb.ServerInit
    security: str  # "vnc", "none", "x509-vnc", "x509-none"
    certificate_sha256: str  # of the verified TLS certificate, "" without TLS
    protocol_minor: int
    _reader: asyncio.StreamReader = field(repr=False)
    _writer: asyncio.StreamWriter = field(repr=False)
    _parser: rfb.ServerStreamParser = field(repr=False)
    _pending: list[rfb.ServerMessage] = field(default_factory=list, repr=False)
    _requested: bool = False

    @property
    def pixel_format(self) -> rfb.PixelFormat:
        pixel_format = self._parser.pixel_format
        return pixel_format if pixel_format is not None else self.server_init.pixel_format

    async def receive(self) -> list[rfb.ServerMessage]:
        """The next complete server messages (at least one); ``[]`` once the target closed
        cleanly. ``RFBError`` for a malformed stream, or one that ends inside a message."""
        if self._pending:
            out, self._pending = self._pending, []
            return out
        while True:
            # An error found behind the last messages returned is raised here, before waiting.
            messages = self._parser.feed(b"")
            if messages:
                return messages
            data = await self._reader.read(READ_CHUNK_BYTES)
            if not data:
                self._parser.feed(b"")
                if self._parser.buffered:
                    raise rfb.RFBError("the target's stream ended inside a message")
                return []
            messages = self._parser.feed(data)
            if messages:
                return messages

    async def send(self, message: rfb.ClientMessage | bytes) -> None:
        """Send client messages (parsed ones, or complete messages as bytes, which are parsed
        first so that nothing malformed reaches the target). The pixel format may change only
        before the first FramebufferUpdateRequest: later, updates already on the way would be
        framed under the wrong one."""
        if isinstance(message, bytes | bytearray | memoryview):
            parser = rfb.ClientStreamParser(handshake=False)
            messages = parser.feed(message)
            messages += parser.feed(b"")  # an error behind the messages is raised here
            if parser.buffered:
                raise rfb.RFBError("send: not a whole number of client messages")
        else:
            messages = [message]
        for item in messages:
            if isinstance(item, rfb.SetPixelFormat) and self._requested:
                raise rfb.RFBError("the pixel format cannot change after the first update")
            if isinstance(item, rfb.FramebufferUpdateRequest):
                self._requested = True
            self._parser.note_client(item)
            self._writer.write(item.raw)
        await self._writer.drain()

    async def __aenter__(self) -> VncConnection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self._writer.wait_closed()


async def open_vnc(
    target: VncTarget,
    password: str | None,
    *,
    shared: bool = True,
    handshake_seconds: float = HANDSHAKE_TIMEOUT_SECONDS,
    max_rect_bytes: int = rfb.MAX_RECT_BYTES,
    max_update_bytes: int = rfb.MAX_UPDATE_BYTES,
) -> VncConnection:
    """Connect to ``target`` and authenticate with ``password`` (the vaulted one; ``None``
    only for an asset with ``no_auth``). Raises ``UpstreamError`` (unreachable, timed out,
    closed, TLS failed, no usable security type), ``VncAuthFailed``, ``CertificateMismatch``
    or ``rfb.RFBError`` (malformed handshake); the connection is closed on every failure."""
    return await _handshaking(
        target, handshake_seconds, max_rect_bytes, max_update_bytes,
        lambda handshake: handshake.run(password, shared), keep=True,
    )  # fmt: skip


async def scan_certificate(
    target: VncTarget, *, handshake_seconds: float = HANDSHAKE_TIMEOUT_SECONDS
) -> str:
    """The SHA-256 (hex) of the certificate the target presents in VeNCrypt X.509, read
    without authenticating, for a person to pin (trust on first use: the caller audits it).
    ``UpstreamError`` when the target offers no X.509 VeNCrypt, or as ``open_vnc``."""
    return await _handshaking(
        target, handshake_seconds, rfb.MAX_RECT_BYTES, rfb.MAX_UPDATE_BYTES,
        lambda handshake: handshake.scan(), keep=False,
    )  # fmt: skip


_T = TypeVar("_T")


async def _handshaking(
    target: VncTarget,
    handshake_seconds: float,
    max_rect_bytes: int,
    max_update_bytes: int,
    body: Callable[[_Handshake], Awaitable[_T]],
    *,
    keep: bool,
) -> _T:
    """Connect, run ``body`` on a fresh handshake within one deadline, map failures to our
    errors; the connection stays open only for ``keep`` and success."""
    if not target.unix_path and not (target.host and 0 < target.port < 65536):
        raise UpstreamError("the asset has no usable address", f"{target.where}: no address")
    deadline = asyncio.get_running_loop().time() + handshake_seconds  # connect included
    try:
        async with asyncio.timeout_at(deadline):
            if target.unix_path:
                reader, writer = await asyncio.open_unix_connection(target.unix_path)
            else:
                reader, writer = await asyncio.open_connection(target.host, target.port)
    except TimeoutError:
        raise UpstreamError(
            "the asset did not answer in time", f"{target.where}: connect timed out"
        ) from None
    except OSError as exc:
        raise UpstreamError(
            "the asset is not reachable",
            f"{target.where}: {type(exc).__name__}: {exc.strerror or exc}",
        ) from None
    handshake = _Handshake(target, reader, writer, max_rect_bytes, max_update_bytes)
    try:
        async with asyncio.timeout_at(deadline):
            result = await body(handshake)
    except TimeoutError:
        writer.close()
        raise UpstreamError(
            "the asset did not answer in time", f"{target.where}: handshake timed out"
        ) from None
    except ssl.SSLError as exc:
        writer.close()
        raise UpstreamError(
            "TLS with the asset failed", f"{target.where}: TLS: {exc.reason or type(exc).__name__}"
        ) from None
    except (OSError, EOFError) as exc:
        writer.close()
        raise UpstreamError(
            "the asset closed the connection", f"{target.where}: handshake: {type(exc).__name__}"
        ) from None
    except BaseException:
        writer.close()
        raise
    if not keep:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    return result


class _Handshake:
    """One handshake's state: reads framed server messages, writes and notes client ones."""

    def __init__(
        self,
        target: VncTarget,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        max_rect_bytes: int,
        max_update_bytes: int,
    ) -> None:
        self.target = target
        self.reader = reader
        self.writer = writer
        self.parser = rfb.ServerStreamParser(
            max_rect_bytes=max_rect_bytes, max_update_bytes=max_update_bytes
        )
        self.pending: list[rfb.ServerMessage] = []
        self.client = rfb.ClientStreamParser()

    async def next(self) -> rfb.ServerMessage:
        while not self.pending:
            data = await self.reader.read(READ_CHUNK_BYTES)
            if not data:
                self.parser.feed(b"")
                raise EOFError
            self.pending += self.parser.feed(data)
        return self.pending.pop(0)

    async def expect(self, kind: type[_T]) -> _T:
        message = await self.next()
        if isinstance(message, rfb.ConnectionFailed):
            raise UpstreamError(
                "the asset refused the connection",
                f"{self.target.where}: refused: {_shown(message.reason)}",
            )
        if not isinstance(message, kind):
            raise rfb.RFBError(f"handshake: expected {kind.__name__}, got {type(message).__name__}")
        return message

    def send(self, data: bytes) -> None:
        """Write our handshake bytes and tell the server parser what we said."""
        for message in self.client.feed(data):
            self.parser.note_client(message)
        self.writer.write(data)

    def fail(self, reason: str) -> UpstreamError:
        return UpstreamError(
            "the asset offers no security type the gateway can use",
            f"{self.target.where}: {reason}",
        )

    async def run(self, password: str | None, shared: bool) -> VncConnection:
        target = self.target
        if password is None and not target.no_auth:
            raise UpstreamError(
                "no credential is vaulted for the asset", f"{target.where}: no password"
            )
        pins = tuple(normalize_pin(pin) for pin in target.certificate_pins)
        version = await self.expect(rfb.ProtocolVersion)
        minor = min(version.effective_minor, 8)
        self.send(rfb.protocol_version(minor))
        offer = await self.expect(rfb.SecurityTypes)
        security, fingerprint = await self._security(offer, minor, pins, password)
        self.send(rfb.client_init(shared))
        await self.writer.drain()
        init = await self.expect(rfb.ServerInit)
        return VncConnection(
            server_init=init,
            security=security,
            certificate_sha256=fingerprint,
            protocol_minor=minor,
            _reader=self.reader,
            _writer=self.writer,
            _parser=self.parser,
            _pending=self.pending,
        )

    async def _security(
        self, offer: rfb.SecurityTypes, minor: int, pins: tuple[str, ...], password: str | None
    ) -> tuple[str, str]:
        types = offer.types
        where = self.target.where
        if pins:
            if rfb.SEC_VENCRYPT not in types:
                raise CertificateMismatch(
                    "the asset's identity could not be verified",
                    f"{where}: a certificate is pinned but the target offers no TLS "
                    f"(security types {list(types)})",
                )
            return await self._vencrypt(pins, password)
        if password is not None and rfb.SEC_VNC_AUTH in types:
            self._choose(offer, rfb.SEC_VNC_AUTH)
            await self._vnc_auth(password)
            return "vnc", ""
        if self.target.no_auth and rfb.SEC_NONE in types:
            self._choose(offer, rfb.SEC_NONE)
            if minor >= 8:
                await self._result()
            return "none", ""
        if rfb.SEC_VENCRYPT in types:
            raise CertificateMismatch(
                "the asset's identity could not be verified",
                f"{where}: the target offers TLS (VeNCrypt) but no certificate is pinned; "
                "pin its certificate",
            )
        raise self.fail(f"security types offered {list(types)}")

    def _choose(self, offer: rfb.SecurityTypes, kind: int) -> None:
        if offer.chosen_by_server:  # RFB 3.3: nothing to say, but the parsers must know
            self.client.note_server(offer)
        else:
            self.send(rfb.security_choice(kind))

    async def _vnc_auth(self, password: str) -> None:
        challenge = await self.expect(rfb.VncAuthChallenge)
        self.send(_vnc_auth_response(password, challenge.challenge))
        await self.writer.drain()
        await self._result()

    async def _result(self) -> None:
        result = await self.expect(rfb.SecurityResult)
        if not result.ok:
            raise VncAuthFailed(
                "the asset refused the vaulted credential",
                f"{self.target.where}: authentication failed: {_shown(result.reason)}",
            )

    async def _vencrypt(self, pins: tuple[str, ...], password: str | None) -> tuple[str, str]:
        wanted = []
        if password is not None:
            wanted.append(rfb.VENCRYPT_X509_VNC)
        if self.target.no_auth:
            wanted.append(rfb.VENCRYPT_X509_NONE)
        subtype = await self._vencrypt_until_tls(wanted)
        fingerprint = await self._tls(pins)
        if password is not None and subtype == rfb.VENCRYPT_X509_VNC:
            await self._vnc_auth(password)
            return "x509-vnc", fingerprint
        await self._result()
        return "x509-none", fingerprint

    async def _vencrypt_until_tls(self, wanted: list[int]) -> int:
        """VeNCrypt 0.2 up to the point where TLS starts, with the first of ``wanted`` that
        the target offers; returns that subtype."""
        self.send(rfb.security_choice(rfb.SEC_VENCRYPT))
        version = await self.expect(rfb.VeNCryptVersion)
        if (version.major, version.minor) < (0, 2):
            raise self.fail(f"VeNCrypt {version.major}.{version.minor}")
        self.send(rfb.vencrypt_version())
        ack = await self.expect(rfb.VeNCryptVersionAck)
        self.client.note_server(ack)
        if ack.status != 0:
            raise self.fail("VeNCrypt 0.2 refused")
        offered = (await self.expect(rfb.VeNCryptSubtypes)).subtypes
        chosen = next((sub for sub in wanted if sub in offered), None)
        if chosen is None:
            raise self.fail(f"VeNCrypt subtypes offered {list(offered)}")
        self.send(rfb.vencrypt_subtype(chosen))
        accepted = await self.expect(rfb.VeNCryptSubtypeAck)
        self.client.note_server(accepted)
        if not accepted.accepted:
            raise self.fail(f"VeNCrypt subtype {chosen} refused")
        if self.pending or self.parser.buffered:  # it would be read as plaintext: refuse
            raise rfb.RFBError("the target sent data before TLS started")
        return chosen

    async def scan(self) -> str:
        """Up to the target's TLS certificate, without authenticating: its SHA-256."""
        version = await self.expect(rfb.ProtocolVersion)
        self.send(rfb.protocol_version(min(version.effective_minor, 8)))
        offer = await self.expect(rfb.SecurityTypes)
        if rfb.SEC_VENCRYPT not in offer.types or offer.chosen_by_server:
            raise self.fail(f"no TLS (VeNCrypt) among security types {list(offer.types)}")
        x509 = [rfb.VENCRYPT_X509_NONE, rfb.VENCRYPT_X509_VNC, rfb.VENCRYPT_X509_PLAIN]
        await self._vencrypt_until_tls(x509)
        return await self._tls(None)

    async def _tls(self, pins: tuple[str, ...] | None) -> str:
        """TLS on the connection; the certificate must match a pin (not a CA, not a name).
        ``pins=None`` only for ``scan``, which reads the certificate for a person to pin."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the pin is the verification
        await self.writer.drain()
        await self.writer.start_tls(context)
        ssl_object = self.writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            raise CertificateMismatch(
                "the asset's identity could not be verified",
                f"{self.target.where}: the target presented no certificate",
            )
        fingerprint = certificate_fingerprint(der)
        if pins is not None and not any(hmac.compare_digest(fingerprint, pin) for pin in pins):
            raise CertificateMismatch(
                "the asset's identity could not be verified",
                f"{self.target.where}: certificate sha256:{fingerprint} is not pinned",
            )
        return fingerprint


def _shown(reason: str) -> str:
    """A target's reason text for an audit detail: bounded, quoted, control characters escaped."""
    return repr(reason[:200])
