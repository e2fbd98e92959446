"""The gateway's VNC client against real targets on 127.0.0.1: TigerVNC Xvnc (VncAuth,
X509Vnc with a pinned certificate, a unix socket with no auth as the RDP renderer has) and
x11vnc; frames are checked for colours painted on the target's display."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.desktop import rfb, vnc
from gateway.errors import HostKeyMismatch
from tests.desktop_capture import capture
from tests.desktop_targets import (
    XvncTarget,
    make_certificate,
    missing_reason,
    replay,
    start_x11vnc,
    start_xvnc,
)

PASSWORD = "Vx7!pw#q"
REASON = missing_reason("xsetroot", "xterm", "xdotool", "x11vnc")
pytestmark = pytest.mark.skipif(bool(REASON), reason=REASON or "tools present")

RED, GREEN, STEEL_BLUE = (255, 0, 0), (0, 255, 0), (70, 130, 180)


@pytest.fixture
def xvnc(tmp_path: Path) -> Iterator[XvncTarget]:
    target = start_xvnc(tmp_path / "xvnc", password=PASSWORD)
    yield target
    target.stop()


def colours(update: rfb.FramebufferUpdate, pf: rfb.PixelFormat) -> set[tuple[int, int, int]]:
    """Every colour in the update's Raw rectangles (32 bits per pixel)."""
    values: set[int] = set()
    for rect in update.rectangles:
        if rect.encoding == rfb.ENC_RAW:
            values |= set(update.payload(rect).cast("I"))
    return {pf.rgb(v.to_bytes(4, "little")) for v in values}


async def wait_for_colour(conn: vnc.VncConnection, colour: tuple[int, int, int]) -> None:
    """Ask for Raw frames until one shows ``colour`` (the first asks for the whole screen)."""
    init = conn.server_init
    incremental = False
    async with asyncio.timeout(20):
        while True:
            await conn.send(rfb.framebuffer_update_request(0, 0, init.width, init.height,
                                                           incremental=incremental))  # fmt: skip
            incremental = True
            got: list[rfb.ServerMessage] = []
            while not any(isinstance(m, rfb.FramebufferUpdate) for m in got):
                more = await conn.receive()
                assert more != [], "the target closed the connection"
                got += more
            for message in got:
                if isinstance(message, rfb.FramebufferUpdate) and colour in colours(
                    message, conn.pixel_format
                ):
                    return


def argv_of(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


async def test_xvnc_with_vnc_auth_shows_what_is_painted_on_its_display(xvnc: XvncTarget) -> None:
    xvnc.paint("#ff0000")
    target = vnc.VncTarget("127.0.0.1", xvnc.port, label="asset:hmi")
    async with await vnc.open_vnc(target, PASSWORD) as conn:
        assert (conn.server_init.width, conn.server_init.height) == (640, 480)
        assert conn.security == "vnc" and conn.certificate_sha256 == ""
        await conn.send(rfb.set_encodings([rfb.ENC_RAW]))
        await wait_for_colour(conn, RED)
        await asyncio.to_thread(xvnc.paint, "#00ff00")
        await wait_for_colour(conn, GREEN)
        xterm = await asyncio.create_subprocess_exec(
            "xterm", "-display", xvnc.display_name, "-geometry", "40x10+0+0", "-bg", "steelblue",
            "-e", "sleep", "30",
        )  # fmt: skip
        try:
            await wait_for_colour(conn, STEEL_BLUE)
        finally:
            xterm.terminate()
            await xterm.wait()
    assert PASSWORD.encode() not in argv_of(xvnc.proc.pid)


async def test_xvnc_refuses_a_wrong_password_with_its_reason(xvnc: XvncTarget) -> None:
    target = vnc.VncTarget("127.0.0.1", xvnc.port, label="asset:hmi")
    with pytest.raises(vnc.VncAuthFailed, match="refused the vaulted credential") as caught:
        await vnc.open_vnc(target, "wrong-pw")
    assert "Authentication failure" in caught.value.detail
    for text in (str(caught.value), caught.value.detail, repr(caught.value)):
        assert "wrong-pw" not in text and PASSWORD not in text


async def test_xvnc_x509vnc_pinned_certificate(tmp_path: Path) -> None:
    cert, key, fingerprint = make_certificate(tmp_path)
    xvnc = start_xvnc(tmp_path / "tls", security="X509Vnc", password=PASSWORD,
                      certificate=(cert, key))  # fmt: skip
    try:
        plain = vnc.VncTarget("127.0.0.1", xvnc.port, label="asset:hmi")
        assert await vnc.scan_certificate(plain) == fingerprint
        with pytest.raises(HostKeyMismatch, match="could not be verified") as caught:
            await vnc.open_vnc(plain, PASSWORD)
        assert "no certificate is pinned" in caught.value.detail

        other = vnc.VncTarget("127.0.0.1", xvnc.port, certificate_pins=("00" * 32,))
        with pytest.raises(vnc.CertificateMismatch) as mismatch:
            await vnc.open_vnc(other, PASSWORD)
        assert f"sha256:{fingerprint} is not pinned" in mismatch.value.detail

        pinned = vnc.VncTarget("127.0.0.1", xvnc.port, certificate_pins=(fingerprint.upper(),))
        xvnc.paint("#ff0000")
        async with await vnc.open_vnc(pinned, PASSWORD) as conn:
            assert conn.security == "x509-vnc" and conn.certificate_sha256 == fingerprint
            await conn.send(rfb.set_encodings([rfb.ENC_RAW]))
            await wait_for_colour(conn, RED)
        with pytest.raises(vnc.VncAuthFailed):
            await vnc.open_vnc(pinned, "wrong-pw")
    finally:
        xvnc.stop()


async def test_pinned_asset_whose_target_stopped_offering_tls_is_refused(xvnc: XvncTarget) -> None:
    pinned = vnc.VncTarget("127.0.0.1", xvnc.port, certificate_pins=("ab" * 32,))
    with pytest.raises(vnc.CertificateMismatch, match="could not be verified") as caught:
        await vnc.open_vnc(pinned, PASSWORD)
    assert "offers no TLS" in caught.value.detail
    with pytest.raises(vnc.UpstreamError, match="no security type") as scan:
        await vnc.scan_certificate(pinned)
    assert "no TLS (VeNCrypt)" in scan.value.detail


async def test_x11vnc_sharing_an_xvnc_display(tmp_path: Path) -> None:
    display = start_xvnc(tmp_path / "display", password="unused1")
    try:
        x11vnc = start_x11vnc(tmp_path, display, PASSWORD)
        try:
            display.paint("#00ff00")
            target = vnc.VncTarget("127.0.0.1", x11vnc.port, label="asset:x11vnc")
            async with await vnc.open_vnc(target, PASSWORD) as conn:
                assert conn.security == "vnc" and conn.server_init.width == 640
                await conn.send(rfb.set_encodings([rfb.ENC_RAW]))
                await wait_for_colour(conn, GREEN)
            with pytest.raises(vnc.VncAuthFailed):
                await vnc.open_vnc(target, "wrong-pw")
            assert PASSWORD.encode() not in argv_of(x11vnc.proc.pid)
        finally:
            x11vnc.stop()
    finally:
        display.stop()


async def test_unix_socket_target_without_auth(tmp_path: Path) -> None:
    """The RDP renderer's shape: Xvnc on a unix socket, security None, no TCP port."""
    xvnc = start_xvnc(tmp_path / "renderer", security="None", unix_socket=True)
    try:
        xvnc.paint("#ff0000")
        target = vnc.VncTarget(unix_path=xvnc.unix_path, no_auth=True, label="renderer")
        async with await vnc.open_vnc(target, None) as conn:
            assert conn.security == "none"
            await conn.send(rfb.set_encodings([rfb.ENC_RAW]))
            await wait_for_colour(conn, RED)
        with pytest.raises(vnc.UpstreamError, match="no credential"):
            await vnc.open_vnc(vnc.VncTarget(unix_path=xvnc.unix_path), None)
    finally:
        xvnc.stop()


async def test_stream_captured_live_from_xvnc_parses_in_every_encoding(tmp_path: Path) -> None:
    xvnc = start_xvnc(tmp_path / "capture", security="None", geometry="320x240")
    try:
        await asyncio.to_thread(xvnc.paint, "#ff0000")
        chunks = await capture(xvnc)
    finally:
        xvnc.stop()
    server_messages, _ = replay(chunks)
    assert b"".join(m.raw for m in server_messages) == b"".join(d for k, d in chunks if k == "S")
    seen = {r.encoding for m in server_messages if isinstance(m, rfb.FramebufferUpdate)
            for r in m.rectangles}  # fmt: skip
    assert {rfb.ENC_RAW, rfb.ENC_RRE, rfb.ENC_HEXTILE, rfb.ENC_ZRLE, rfb.ENC_TIGHT,
            rfb.ENC_COPYRECT} <= seen  # fmt: skip
    # One byte at a time, the same messages.
    stream = b"".join(d for k, d in chunks if k == "S")
    parser, one_by_one = rfb.ServerStreamParser(), []
    cparser = rfb.ClientStreamParser()
    client_messages = cparser.feed(b"".join(d for k, d in chunks if k == "C"))
    handshake = [
        m
        for m in client_messages
        if isinstance(m, (rfb.ProtocolVersion, rfb.SecurityChoice, rfb.ClientInit))
    ]
    for message in handshake:
        parser.note_client(message)
    for i in range(len(stream)):
        one_by_one += parser.feed(stream[i : i + 1])
    assert one_by_one == server_messages
