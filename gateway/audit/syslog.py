"""Audit events as RFC 5424 syslog messages, and senders over UDP, TCP and TLS for a SIEM.

UDP sends one message per datagram (RFC 5426); TCP and TLS frame each message with
octet counting (RFC 6587 section 3.4.1, as RFC 5425 requires for TLS). TLS verifies the
collector's certificate and name with the context the caller gives (system CAs by
default). Does not read the database and does not retry: a failed send raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from typing import Literal, Protocol, cast
from urllib.parse import urlsplit

from gateway.audit.chain import AuditEvent, format_time

FACILITY_LOG_AUDIT = 13
# Severity by result: refusals and failures stand out in a SIEM without parsing SD.
SEVERITY = {"success": 6, "failure": 5, "denied": 4, "error": 3}
APP_NAME = "conduit"
# 32473 is the private enterprise number RFC 5612 reserves for documentation; a site with
# its own number can pass it to format_syslog.
SD_ID = "conduit@32473"
DEFAULT_PORTS = {"udp": 514, "tcp": 514, "tls": 6514}
BOM = b"\xef\xbb\xbf"

Transport = Literal["udp", "tcp", "tls"]


def _printusascii(value: str, limit: int) -> str:
    """Header fields allow only visible ASCII; anything else becomes '_', empty becomes '-'."""
    cleaned = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:limit]
    return cleaned or "-"


def _param(value: str) -> str:
    # RFC 5424 6.3.3: inside a PARAM-VALUE only '"', '\' and ']' need escaping.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def format_syslog(
    event: AuditEvent,
    *,
    hostname: str,
    facility: int = FACILITY_LOG_AUDIT,
    sd_id: str = SD_ID,
) -> bytes:
    """One RFC 5424 message: fields in structured data, the detail JSON as the UTF-8 MSG."""
    pri = facility * 8 + SEVERITY.get(event.result, 5)
    header = (
        f"<{pri}>1 {format_time(event.time)} {_printusascii(hostname, 255)} {APP_NAME} - "
        f"{_printusascii(event.action, 32)}"
    )
    params = (
        ("id", str(event.id)),
        ("actor", event.actor),
        ("source", event.source),
        ("action", event.action),
        ("target", event.target),
        ("result", event.result),
        ("hash", event.hash),
    )
    sd = f"[{sd_id} " + " ".join(f'{name}="{_param(value)}"' for name, value in params) + "]"
    return f"{header} {sd} ".encode() + BOM + event.detail.encode()


@dataclass(frozen=True)
class SyslogTarget:
    transport: Transport
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}://{host}:{self.port}"


def parse_syslog_target(url: str) -> SyslogTarget:
    """``udp://host[:port]``, ``tcp://...`` or ``tls://...``; ``ValueError`` otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError(f"syslog target {url!r}: scheme must be udp, tcp or tls")
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.username:
        raise ValueError(f"syslog target {url!r}: expected {parts.scheme}://host:port")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ValueError(f"syslog target {url!r}: bad port") from None
    return SyslogTarget(cast(Transport, parts.scheme), parts.hostname, port)


class SyslogSender(Protocol):
    async def send(self, message: bytes) -> None: ...

    async def aclose(self) -> None: ...


class UdpSyslogSender:
    def __init__(self, transport: asyncio.DatagramTransport) -> None:
        self._transport = transport

    async def send(self, message: bytes) -> None:
        self._transport.sendto(message)
        # Yield so a burst of datagrams does not starve the loop.
        await asyncio.sleep(0)

    async def aclose(self) -> None:
        self._transport.close()


class StreamSyslogSender:
    """TCP or TLS with octet-counting framing: ``<length> SP <message>``."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def send(self, message: bytes) -> None:
        self._writer.write(b"%d " % len(message) + message)
        await self._writer.drain()

    async def aclose(self) -> None:
        self._writer.close()
        # A collector that drops the connection without a TLS close_notify is not our error.
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self._writer.wait_closed()


async def open_syslog_sender(
    target: SyslogTarget,
    *,
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float = 10.0,
) -> SyslogSender:
    """Connect to ``target``; TLS uses ``ssl_context`` or the system's trusted CAs."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(connect_timeout):
        if target.transport == "udp":
            transport, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, remote_addr=(target.host, target.port)
            )
            return UdpSyslogSender(transport)
        tls: ssl.SSLContext | None = None
        if target.transport == "tls":
            tls = ssl_context if ssl_context is not None else ssl.create_default_context()
        _, writer = await asyncio.open_connection(
            target.host,
            target.port,
            ssl=tls,
            server_hostname=target.host if tls is not None else None,
        )
        return StreamSyslogSender(writer)
