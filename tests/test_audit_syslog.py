"""RFC 5424 syslog export received by real UDP, TCP and TLS listeners on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import re
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.audit import (
    AuditEvent,
    AuditLog,
    SyslogTarget,
    format_syslog,
    open_syslog_sender,
    parse_syslog_target,
)
from gateway.db.engine import make_sessionmaker
from tests.test_audit import KEY, SteppingClock, migrated_engine

HEADER = re.compile(
    r"<(?P<pri>\d{1,3})>1 "
    r"(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)) "
    r"(?P<host>[!-~]{1,255}) (?P<app>[!-~]{1,48}) (?P<proc>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) "
)
SD_NAME = re.compile(r"[!#-<>-\\^-~]{1,32}")  # printable ASCII except '=', ']', '"', ' '


@dataclass
class Syslog5424:
    pri: int
    timestamp: str
    hostname: str
    app: str
    procid: str
    msgid: str
    sd_id: str
    params: dict[str, str]
    msg: str


def parse_rfc5424(data: bytes) -> Syslog5424:
    """A strict parser for the subset we emit: one SD element and a BOM-prefixed MSG."""
    text = data.decode("utf-8")
    header = HEADER.match(text)
    assert header, text
    rest = text[header.end() :]
    assert rest.startswith("["), rest
    sd_id = SD_NAME.match(rest, 1)
    assert sd_id
    pos, params = sd_id.end(), {}
    while rest[pos] == " ":
        name = SD_NAME.match(rest, pos + 1)
        assert name and rest[name.end() : name.end() + 2] == '="', rest[pos:]
        pos, value = name.end() + 2, []
        while rest[pos] != '"':
            if rest[pos] == "\\" and rest[pos + 1] in '"\\]':
                pos += 1
            assert rest[pos] != "]" or rest[pos - 1] == "\\", "unescaped ]"
            value.append(rest[pos])
            pos += 1
        params[name.group()] = "".join(value)
        pos += 1
    assert rest[pos] == "]", rest[pos:]
    msg = rest[pos + 1 :]
    assert msg.startswith(" \ufeff"), "MSG must be UTF-8 with a BOM"
    return Syslog5424(
        pri=int(header["pri"]),
        timestamp=header["ts"],
        hostname=header["host"],
        app=header["app"],
        procid=header["proc"],
        msgid=header["msgid"],
        sd_id=sd_id.group(),
        params=params,
        msg=msg[2:],
    )


def check_message(message: Syslog5424, event: AuditEvent) -> None:
    assert message.hostname == "gw-1" and message.app == "conduit" and message.procid == "-"
    assert message.msgid == event.action
    assert message.pri == 13 * 8 + {"success": 6, "denied": 4}[event.result]
    assert dt.datetime.fromisoformat(message.timestamp) == event.time
    assert message.sd_id == "conduit@32473"
    assert message.params == {
        "id": str(event.id),
        "actor": event.actor,
        "source": event.source,
        "action": event.action,
        "target": event.target,
        "result": event.result,
        "hash": event.hash,
    }
    assert json.loads(message.msg) == event.detail_object()


@pytest.fixture
async def audit(database_url: str, tmp_path: Path) -> AsyncIterator[AuditLog]:
    async with migrated_engine(database_url, tmp_path) as engine:
        yield AuditLog(make_sessionmaker(engine), KEY, SteppingClock())


@pytest.fixture
async def events(audit: AuditLog) -> list[AuditEvent]:
    await audit.record(
        actor='eve "quoted" [x] back\\slash', action="login.failure", result="denied",
        source="192.0.2.9", detail={"reason": "bad totp ü", "attempt": 3},
    )  # fmt: skip
    await audit.record(actor="alice", action="session.start", result="success", target="plc-1")
    return [e async for e in audit.events()]


def test_format_is_rfc5424(events: list[AuditEvent]) -> None:
    for event in events:
        check_message(parse_rfc5424(format_syslog(event, hostname="gw-1")), event)
    spaced = parse_rfc5424(format_syslog(events[0], hostname="gw 1\n"))
    assert spaced.hostname == "gw_1_"


@pytest.mark.parametrize(
    "url,expected",
    [
        ("udp://127.0.0.1:5514", SyslogTarget("udp", "127.0.0.1", 5514)),
        ("tcp://siem.example", SyslogTarget("tcp", "siem.example", 514)),
        ("tls://[::1]", SyslogTarget("tls", "::1", 6514)),
    ],
)
def test_parse_target(url: str, expected: SyslogTarget) -> None:
    assert parse_syslog_target(url) == expected


@pytest.mark.parametrize("url", ["http://x:1", "tcp://", "tcp://h:99999", "udp://h:1/path"])
def test_parse_target_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        parse_syslog_target(url)


async def collect_udp() -> tuple[int, asyncio.Queue[bytes], Callable[[], None]]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    class Receiver(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
            queue.put_nowait(data)

    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        Receiver, local_addr=("127.0.0.1", 0)
    )
    port: int = transport.get_extra_info("sockname")[1]
    return port, queue, transport.close


@dataclass
class StreamListener:
    port: int
    queue: asyncio.Queue[bytes]
    server: asyncio.Server


async def octet_counted(reader: asyncio.StreamReader, queue: asyncio.Queue[bytes]) -> None:
    """RFC 6587 3.4.1: MSG-LEN SP SYSLOG-MSG, repeated until the peer closes."""
    while True:
        try:
            length = await reader.readuntil(b" ")
        except asyncio.IncompleteReadError:
            return
        assert re.fullmatch(rb"[1-9][0-9]* ", length), length
        queue.put_nowait(await reader.readexactly(int(length)))


@pytest.fixture(scope="session")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    return self_signed(tmp_path_factory.mktemp("collector"))


@pytest.fixture
async def stream_listener(request: pytest.FixtureRequest) -> AsyncIterator[StreamListener]:
    tls: ssl.SSLContext | None = (
        request.getfixturevalue("tls_pair")[0] if request.param == "tls" else None
    )
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await octet_counted(reader, queue)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    try:
        yield StreamListener(server.sockets[0].getsockname()[1], queue, server)
    finally:
        server.close()
        await server.wait_closed()


def self_signed(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a fresh 127.0.0.1 certificate, and a client trusting only it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test collector")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "collector.crt", tmp / "collector.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    return server, ssl.create_default_context(cafile=str(cert_file))


async def receive(queue: asyncio.Queue[bytes], n: int) -> list[bytes]:
    # A generous bound that only trips when a message never arrives; not a timing check.
    async with asyncio.timeout(10):
        return [await queue.get() for _ in range(n)]


async def test_udp_listener_receives_rfc5424(audit: AuditLog, events: list[AuditEvent]) -> None:
    port, queue, close = await collect_udp()
    try:
        sender = await open_syslog_sender(SyslogTarget("udp", "127.0.0.1", port))
        assert await audit.export_syslog(sender, hostname="gw-1") == 2
        await sender.aclose()
        received = await receive(queue, 2)
    finally:
        close()
    for data, event in zip(received, events, strict=True):
        check_message(parse_rfc5424(data), event)


@pytest.mark.parametrize("stream_listener", ["tcp"], indirect=True)
async def test_tcp_listener_receives_octet_counted(
    audit: AuditLog, events: list[AuditEvent], stream_listener: StreamListener
) -> None:
    sender = await open_syslog_sender(SyslogTarget("tcp", "127.0.0.1", stream_listener.port))
    assert await audit.export_syslog(sender, hostname="gw-1") == 2
    await sender.aclose()
    received = await receive(stream_listener.queue, 2)
    for data, event in zip(received, events, strict=True):
        check_message(parse_rfc5424(data), event)


@pytest.mark.parametrize("stream_listener", ["tls"], indirect=True)
async def test_tls_listener_receives_and_untrusted_is_refused(
    audit: AuditLog,
    events: list[AuditEvent],
    stream_listener: StreamListener,
    tls_pair: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    target = SyslogTarget("tls", "127.0.0.1", stream_listener.port)
    sender = await open_syslog_sender(target, ssl_context=tls_pair[1])
    assert await audit.export_syslog(sender, hostname="gw-1") == 2
    await sender.aclose()
    received = await receive(stream_listener.queue, 2)
    for data, event in zip(received, events, strict=True):
        check_message(parse_rfc5424(data), event)
    # The system trust store does not know the self-signed collector: no silent downgrade.
    with pytest.raises(ssl.SSLCertVerificationError):
        await open_syslog_sender(target)
