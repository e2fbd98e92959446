"""The gateway's VNC client against hostile and broken servers (asyncio servers in this test:
a real VNC server cannot be made to misbehave on purpose). Each bad server ends only its own
connection with a clear error; the password never shows in one."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from gateway.desktop import rfb, vnc
from gateway.errors import HostKeyMismatch, UpstreamError

PASSWORD = "Zq8#vnc!"  # distinctive: searched for in every error
PF = rfb.PIXEL_FORMAT_BGRX
INIT = rfb.server_init(64, 48, PF, "hostile")

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def serving(script: Script) -> AsyncIterator[vnc.VncTarget]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield vnc.VncTarget("127.0.0.1", port, label="asset:hostile")
    finally:
        server.close()
        await server.wait_closed()


async def vnc_auth_38(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A well-behaved start: 3.8, VncAuth, accepted (any response), ClientInit read."""
    writer.write(rfb.protocol_version(8))
    await reader.readexactly(12)
    writer.write(rfb.security_types([rfb.SEC_VNC_AUTH]))
    await reader.readexactly(1)
    writer.write(b"\x01" * 16)
    await reader.readexactly(16)
    writer.write(rfb.security_result(True))
    await reader.readexactly(1)


def then(*chunks: bytes, init: bytes = INIT, hold: bool = True) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await vnc_auth_38(reader, writer)
        writer.write(init)
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        if hold:
            await reader.read()  # until the client goes

    return script


def assert_clean(exc: BaseException) -> None:
    for text in (str(exc), repr(exc), getattr(exc, "detail", "")):
        assert PASSWORD not in text


async def test_a_good_fake_server_gives_server_init_and_messages() -> None:
    async with serving(then(rfb.bell(), rfb.server_cut_text("hello"))) as target:
        conn = await vnc.open_vnc(target, PASSWORD)
        assert (conn.server_init.width, conn.server_init.name, conn.security) == (
            64,
            "hostile",
            "vnc",
        )
        messages = await conn.receive()
        while len(messages) < 2:
            messages += await conn.receive()
        assert [type(m) for m in messages] == [rfb.Bell, rfb.ServerCutText]
        assert PASSWORD not in repr(conn)
        await conn.close()


AFTER_INIT = [
    (
        "oversized rectangle",
        rfb.framebuffer_update([(0, 0, 16000, 16000, rfb.ENC_RAW, b"")]),
        "over the limit",
    ),  # fmt: skip
    ("unsupported encoding", rfb.framebuffer_update([(0, 0, 1, 1, 4, b"")]), "encoding 4"),
    ("unknown message type", b"\x96", "server message type 150"),
    ("cut text of 4 GiB", b"\x03\x00\x00\x00\x7f\xff\xff\xff", "server cut text"),
    ("garbage", b"\xde\xad\xbe\xef" * 4, "server message type 222"),
]


@pytest.mark.parametrize("name,data,reason", AFTER_INIT, ids=[c[0] for c in AFTER_INIT])
async def test_malformed_server_messages_end_that_connection_only(
    name: str, data: bytes, reason: str
) -> None:
    healthy_messages = [rfb.bell()] * 3
    async with serving(then(rfb.bell(), data)) as hostile, serving(then(*healthy_messages)) as good:
        bad_conn = await vnc.open_vnc(hostile, PASSWORD)
        good_conn = await vnc.open_vnc(good, PASSWORD)
        first = await bad_conn.receive()
        with pytest.raises(rfb.RFBError, match=reason) as caught:
            while True:  # the Bell may come alone first
                assert await bad_conn.receive() != []
        assert_clean(caught.value)
        assert isinstance(first[0], rfb.Bell)
        received: list[rfb.ServerMessage] = []
        while len(received) < 3:
            received += await good_conn.receive()
        assert all(isinstance(m, rfb.Bell) for m in received)
        await bad_conn.close()
        await good_conn.close()


async def test_stream_cut_inside_a_message_is_an_error_and_a_clean_close_is_not() -> None:
    partial = rfb.framebuffer_update([(0, 0, 4, 4, rfb.ENC_RAW, b"\x00" * 64)])[:40]
    async with serving(then(partial, hold=False)) as target:
        async with await vnc.open_vnc(target, PASSWORD) as conn:
            with pytest.raises(rfb.RFBError, match="ended inside a message"):
                await conn.receive()
    async with serving(then(rfb.bell(), hold=False)) as target:
        async with await vnc.open_vnc(target, PASSWORD) as conn:
            assert [type(m) for m in await conn.receive()] == [rfb.Bell]
            assert await conn.receive() == []


def handshake_script(*server_says: bytes, reads: tuple[int, ...] = ()) -> Script:
    """Say each chunk, reading reads[i] bytes from the client after it (if given)."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for i, chunk in enumerate(server_says):
            writer.write(chunk)
            await writer.drain()
            if i < len(reads) and reads[i]:
                await reader.readexactly(reads[i])
        await reader.read()

    return script


async def _close_after_version(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(rfb.protocol_version(8))
    await reader.readexactly(12)
    writer.close()


HANDSHAKE_FAILURES = [
    ("not RFB", handshake_script(b"SSH-2.0-OpenSSH_9.2\r\n"), rfb.RFBError, "not an RFB version"),
    (
        "connection refused by the server",
        handshake_script(
            rfb.protocol_version(8), rfb.connection_failed("max clients"), reads=(12,)
        ),
        UpstreamError,
        "refused the connection",
    ),  # fmt: skip
    (
        "only unknown security types",
        handshake_script(rfb.protocol_version(8), rfb.security_types([30, 16]), reads=(12,)),
        UpstreamError,
        "no security type",
    ),  # fmt: skip
    (
        "vencrypt without a pin",
        handshake_script(rfb.protocol_version(8), rfb.security_types([19]), reads=(12,)),
        vnc.CertificateMismatch,
        "could not be verified",
    ),  # fmt: skip
    (
        "password refused",
        handshake_script(
            rfb.protocol_version(8),
            rfb.security_types([2]),
            b"\x02" * 16,
            rfb.security_result(False, "Authentication failure"),
            reads=(12, 1, 16),
        ),
        vnc.VncAuthFailed,
        "refused the vaulted credential",
    ),  # fmt: skip
    (
        "name too long",
        handshake_script(
            rfb.protocol_version(8),
            rfb.security_types([2]),
            b"\x02" * 16,
            rfb.security_result(True),
            struct.pack(">HH", 8, 8) + PF.pack() + struct.pack(">I", 1 << 30),
            reads=(12, 1, 16, 1),
        ),
        rfb.RFBError,
        "desktop name",
    ),  # fmt: skip
    (
        "framebuffer too large",
        handshake_script(
            rfb.protocol_version(8),
            rfb.security_types([2]),
            b"\x02" * 16,
            rfb.security_result(True),
            struct.pack(">HH", 65535, 65535) + PF.pack(),
            reads=(12, 1, 16, 1),
        ),
        rfb.RFBError,
        "over the limit",
    ),  # fmt: skip
    ("closes mid-handshake", _close_after_version, UpstreamError, "closed the connection"),
]


@pytest.mark.parametrize(
    "name,script,error,message", HANDSHAKE_FAILURES, ids=[c[0] for c in HANDSHAKE_FAILURES]
)
async def test_handshake_failures_are_clear_and_carry_no_password(
    name: str, script: Script, error: type[Exception], message: str
) -> None:
    async with serving(script) as target:
        with pytest.raises(error) as caught:
            await vnc.open_vnc(target, PASSWORD, handshake_seconds=5)
    if isinstance(caught.value, UpstreamError):
        assert message in caught.value.message
        assert "asset:hostile" in caught.value.detail
    assert_clean(caught.value)


async def test_the_targets_reason_is_in_the_detail_quoted() -> None:
    script = handshake_script(rfb.protocol_version(8), rfb.security_types([2]), b"\x02" * 16,
                              rfb.security_result(False, "Too many\nfailures"),
                              reads=(12, 1, 16))  # fmt: skip
    async with serving(script) as target:
        with pytest.raises(vnc.VncAuthFailed) as caught:
            await vnc.open_vnc(target, PASSWORD)
    assert "'Too many\\nfailures'" in caught.value.detail


async def test_a_silent_server_times_out() -> None:
    async with serving(handshake_script()) as target:
        with pytest.raises(UpstreamError, match="did not answer in time"):
            await vnc.open_vnc(target, PASSWORD, handshake_seconds=0.3)


async def test_nothing_listening_is_unreachable() -> None:
    async with serving(handshake_script()) as target:
        pass  # closed again: its port now refuses
    with pytest.raises(UpstreamError, match="not reachable") as caught:
        await vnc.open_vnc(target, PASSWORD)
    assert "ConnectionRefusedError" in caught.value.detail


async def test_pinned_certificate_but_no_tls_offered_is_a_mismatch() -> None:
    script = handshake_script(rfb.protocol_version(8), rfb.security_types([2, 1]), reads=(12,))
    async with serving(script) as target:
        pinned = vnc.VncTarget(target.host, target.port, certificate_pins=("ab" * 32,))
        with pytest.raises(HostKeyMismatch, match="could not be verified") as caught:
            await vnc.open_vnc(pinned, PASSWORD)
    assert "offers no TLS" in caught.value.detail


async def test_security_none_only_when_the_asset_says_so() -> None:
    async def none_38(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(rfb.protocol_version(8))
        await reader.readexactly(12)
        writer.write(rfb.security_types([rfb.SEC_NONE]))
        await reader.readexactly(1)
        writer.write(rfb.security_result(True))
        await reader.readexactly(1)
        writer.write(INIT)
        await reader.read()

    async with serving(none_38) as target:
        with pytest.raises(UpstreamError, match="no security type"):
            await vnc.open_vnc(target, PASSWORD)
        no_auth = vnc.VncTarget(target.host, target.port, no_auth=True)
        conn = await vnc.open_vnc(no_auth, None)
        assert conn.security == "none"
        await conn.close()


@pytest.mark.parametrize("minor", [3, 7])
async def test_older_servers_33_and_37(minor: int) -> None:
    async def old(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(rfb.protocol_version(minor))
        assert await reader.readexactly(12) == rfb.protocol_version(minor)
        if minor == 3:
            writer.write(struct.pack(">I", rfb.SEC_VNC_AUTH))
        else:
            writer.write(rfb.security_types([rfb.SEC_VNC_AUTH]))
            await reader.readexactly(1)
        writer.write(b"\x03" * 16)
        await reader.readexactly(16)
        writer.write(b"\x00\x00\x00\x00")
        await reader.readexactly(1)
        writer.write(INIT + rfb.bell())
        await reader.read()

    async with serving(old) as target:
        conn = await vnc.open_vnc(target, PASSWORD)
        assert conn.protocol_minor == minor and conn.server_init.name == "hostile"
        assert [type(m) for m in await conn.receive()] == [rfb.Bell]
        await conn.close()


async def test_send_checks_what_goes_to_the_target() -> None:
    async with serving(then()) as target:
        conn = await vnc.open_vnc(target, PASSWORD)
        with pytest.raises(rfb.RFBError, match="whole number"):
            await conn.send(rfb.key_event(True, 0x61)[:5])
        with pytest.raises(rfb.RFBError, match="client message type 250"):
            await conn.send(b"\xfa\x00\x00\x00")
        await conn.send(rfb.set_pixel_format(rfb.PixelFormat(16, 16, False, True, 31, 63, 31,
                                                             11, 5, 0)))  # fmt: skip
        assert conn.pixel_format.bits_per_pixel == 16
        await conn.send(rfb.framebuffer_update_request(0, 0, 64, 48, incremental=False))
        with pytest.raises(rfb.RFBError, match="pixel format cannot change"):
            await conn.send(rfb.set_pixel_format(PF))
        await conn.close()


def test_vnc_auth_response_is_tigervncs_des() -> None:
    """Same DES as TigerVNC's d3des (bit-reversed key bytes): ``vncpasswd -f`` obfuscates
    "password" with the fixed key 17 52 6b 06 23 4e 58 07 to dbd83cfd727a1458 (run once
    here, TigerVNC 1.12), which is this function keyed with those bytes."""
    fixed_key = "\x17\x52\x6b\x06\x23\x4e\x58\x07"
    response = vnc._vnc_auth_response(fixed_key, b"password" * 2)
    assert response.hex() == "dbd83cfd727a1458" * 2
    # Only the first 8 bytes of a password count, as in every VNC server.
    challenge = bytes(range(16))
    assert vnc._vnc_auth_response("password-and-more", challenge) == vnc._vnc_auth_response(
        "password", challenge
    )
    assert vnc._vnc_auth_response("passwor", challenge) != vnc._vnc_auth_response(
        "password", challenge
    )


def test_pins_are_normalized() -> None:
    hexpin = "AB" * 32
    assert vnc.normalize_pin(":".join(["AB"] * 32)) == "ab" * 32
    assert vnc.normalize_pin(f"sha256:{hexpin}") == "ab" * 32
    with pytest.raises(ValueError, match="64 hex"):
        vnc.normalize_pin("SHA256:q83vEjRWeJA=")


def vencrypt_until_tls(after_ack: bytes = b"") -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(rfb.protocol_version(8))
        await reader.readexactly(12)
        writer.write(rfb.security_types([19]))
        await reader.readexactly(1)
        writer.write(b"\x00\x02")
        await reader.readexactly(2)
        writer.write(b"\x00\x01" + struct.pack(">I", rfb.VENCRYPT_X509_VNC))
        await reader.readexactly(4)
        writer.write(b"\x01" + after_ack)
        await reader.read(1)  # the ClientHello (when it comes)
        writer.write(b"HTTP/1.0 400 Bad Request\r\n\r\n")
        await reader.read()

    return script


@pytest.mark.parametrize(
    "after_ack,error,message",
    [(b"", UpstreamError, "TLS with the asset failed"),
     (b"\x07" * 20, rfb.RFBError, "data before TLS")],
    ids=["not TLS", "plaintext glued to the ack"],
)  # fmt: skip
async def test_vencrypt_server_that_does_not_speak_tls_fails_cleanly(
    after_ack: bytes, error: type[Exception], message: str
) -> None:
    async with serving(vencrypt_until_tls(after_ack)) as target:
        pinned = vnc.VncTarget(target.host, target.port, certificate_pins=("ab" * 32,))
        with pytest.raises(error, match=message):
            await vnc.open_vnc(pinned, PASSWORD, handshake_seconds=5)


@pytest.mark.parametrize("target", [vnc.VncTarget(), vnc.VncTarget("127.0.0.1", 0),
                                    vnc.VncTarget("127.0.0.1", 70000)])  # fmt: skip
async def test_a_target_without_a_usable_address_is_refused_before_connecting(
    target: vnc.VncTarget,
) -> None:
    with pytest.raises(UpstreamError, match="no usable address"):
        await vnc.open_vnc(target, PASSWORD)
