"""The RDP renderer against a real xrdp + xorgxrdp: RFB on its socket, end reasons, hygiene.

Every test starts real Xvnc and xfreerdp processes (realpeer tier). The RFB handshake here is
the minimal one (version, security None, ClientInit, ServerInit): gateway/desktop/rfb.py is
the full parser.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shutil
import signal
import struct
import sys
from pathlib import Path

import pytest

from gateway.desktop import freerdp
from gateway.desktop.freerdp import RenderRequest
from gateway.desktop.rdpcert import CertificateScanError, scan_certificate
from gateway.desktop.renderer import (
    RENDER_USER,
    RDPCertificateMismatch,
    RDPRenderer,
    RendererFailed,
    RendererLimits,
    ensure_render_account,
)
from gateway.errors import HostKeyMismatch
from tests.rdp_target import RDPTarget, free_port

pytestmark = pytest.mark.realpeer
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def render_account() -> None:
    if os.geteuid() == 0:
        ensure_render_account()


def request(target: RDPTarget, **changes: object) -> RenderRequest:
    fields: dict[str, object] = {
        "host": "127.0.0.1",
        "port": target.port,
        "username": target.username,
        "password": target.password,
        "fingerprint": target.fingerprint,
        "width": 800,
        "height": 600,
    }
    fields.update(changes)
    return RenderRequest(**fields)  # type: ignore[arg-type]


async def rfb_server_init(path: Path) -> tuple[int, int, int]:
    """The minimal RFB 3.8 client handshake with security None; (width, height, first message
    type after a FramebufferUpdateRequest)."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        async with asyncio.timeout(10):
            assert await reader.readexactly(12) == b"RFB 003.008\n"
            writer.write(b"RFB 003.008\n")
            count = (await reader.readexactly(1))[0]
            types = await reader.readexactly(count)
            assert 1 in types  # None
            writer.write(b"\x01")
            assert struct.unpack(">I", await reader.readexactly(4))[0] == 0  # SecurityResult OK
            writer.write(b"\x01")  # ClientInit, shared
            width, height = struct.unpack(">HH", await reader.readexactly(4))
            await reader.readexactly(16)  # pixel format
            (name_length,) = struct.unpack(">I", await reader.readexactly(4))
            await reader.readexactly(name_length)
            writer.write(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))  # full update
            await writer.drain()
            message_type = (await reader.readexactly(1))[0]
            return width, height, message_type
    finally:
        writer.close()


async def rfb_type(path: Path, text: str) -> None:
    """Handshake, put the pointer over the target's xterm (at 10,10 on its desktop), type
    ``text`` and Return as RFB KeyEvents (keysyms: Latin-1 as is, Return 0xff0d)."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        await reader.readexactly(12)
        writer.write(b"RFB 003.008\n")
        await reader.readexactly((await reader.readexactly(1))[0])
        writer.write(b"\x01")
        await reader.readexactly(4)
        writer.write(b"\x01")
        await reader.readexactly(20)
        await reader.readexactly(struct.unpack(">I", await reader.readexactly(4))[0])
        writer.write(struct.pack(">BBHH", 5, 0, 100, 100))  # PointerEvent
        for keysym in [*map(ord, text), 0xFF0D]:
            writer.write(struct.pack(">BBxxI", 4, 1, keysym) + struct.pack(">BBxxI", 4, 0, keysym))
            await writer.drain()
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
    finally:
        writer.close()


async def x11_setup_without_cookie(display: int) -> tuple[int, bytes]:
    """X11 connection setup with no authorization: (status, reason). Status 0 is Failed."""
    reader, writer = await asyncio.open_unix_connection(f"/tmp/.X11-unix/X{display}")
    try:
        writer.write(struct.pack("<cxHHHHxx", b"l", 11, 0, 0, 0))
        status, reason_length = struct.unpack("<BB", await reader.readexactly(2))
        await reader.readexactly(6)
        return status, await reader.readexactly(reason_length)
    finally:
        writer.close()


def owner_of(path: Path) -> int | None:
    try:
        return path.stat().st_uid
    except FileNotFoundError:
        return None


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def proc_text(pid: int, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return b""


def group_members(pgids: set[int]) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_text(int(entry.name), "stat")
            if stat:
                fields = stat.rsplit(b")", 1)[1].split()
                if int(fields[2]) in pgids and fields[0] != b"Z":
                    members.append(int(entry.name))
    return members


def all_argv_and_environ() -> bytes:
    return b"".join(
        proc_text(int(p.name), "cmdline") + proc_text(int(p.name), "environ")
        for p in Path("/proc").iterdir()
        if p.name.isdigit()
    )


def listening_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    return inodes


async def test_renderer_draws_the_desktop_into_an_rfb_socket_as_an_unprivileged_user(
    rdp_target: RDPTarget,
) -> None:
    limits = RendererLimits(address_space=1536 << 20, cpu_seconds=3600)
    renderer = RDPRenderer(request(rdp_target), limits)
    path = await renderer.start()
    try:
        directory = path.parent
        assert path.is_socket()
        assert directory.stat().st_mode & 0o777 == 0o700
        width, height, first = await rfb_server_init(path)
        assert (width, height) == (800, 600)  # the geometry asked for
        assert first == 0  # FramebufferUpdate

        secret = rdp_target.password.encode()
        everywhere = all_argv_and_environ()
        assert secret not in everywhere
        assert secret not in rdp_target.logs().encode()

        pids = renderer.pids
        assert set(pids) == {"Xvnc", "xfreerdp"}
        xvnc_argv = proc_text(pids["Xvnc"], "cmdline").split(b"\0")
        for off in (b"-AcceptCutText=0", b"-SendCutText=0", b"-SecurityTypes", b"-rfbport"):
            assert off in xvnc_argv  # no clipboard either way without a grant
        assert xvnc_argv[xvnc_argv.index(b"-rfbport") + 1] == b"-1"
        xfreerdp_argv = proc_text(pids["xfreerdp"], "cmdline").split(b"\0")
        assert b"-clipboard" in xfreerdp_argv
        assert not any(a.startswith((b"/drive", b"/cert:ignore", b"/p:")) for a in xfreerdp_argv)
        expected_uid = pwd.getpwnam(RENDER_USER).pw_uid if os.geteuid() == 0 else os.geteuid()
        for pid in pids.values():
            status = proc_text(pid, "status").decode()
            uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
            assert {int(u) for u in uid_line.split()[1:]} == {expected_uid}
            limits_text = proc_text(pid, "limits").decode()
            assert f"Max address space         {1536 << 20}" in limits_text
            assert "Max cpu time              3600" in limits_text
            assert "Max core file size        0" in limits_text
            assert "NoNewPrivs:\t1" in status
            assert "CapEff:\t0000000000000000" in status
            assert "CapAmb:\t0000000000000000" in status
            assert os.getpgid(pid) == pid and os.getsid(pid) == pid  # own session and group
        assert not socket_inodes(pids["Xvnc"]) & listening_inodes()  # no TCP listener
        assert renderer.display is not None  # and its X display wants the private cookie
        status, reason = await x11_setup_without_cookie(renderer.display)
        assert (status, reason) == (
            0,
            b"Authorization required, but no authorization protocol specified\n",
        )
        assert renderer.rss_bytes() > 10 << 20
        assert not renderer.ended.done()
    finally:
        end = await renderer.stop("killed")
    assert end.reason == "killed"
    assert not directory.exists()
    assert group_members(set(pids.values())) == []
    assert secret not in end.detail.encode()


async def test_scan_learns_the_fingerprint_the_renderer_then_accepts(
    rdp_target: RDPTarget,
) -> None:
    learned = await scan_certificate("127.0.0.1", rdp_target.port)
    assert learned == rdp_target.fingerprint
    with pytest.raises(CertificateScanError):
        await scan_certificate("127.0.0.1", free_port())


async def test_keys_typed_over_rfb_reach_the_target_desktop(rdp_target: RDPTarget) -> None:
    marker = Path(f"/tmp/conduit-typed-{secrets.token_hex(6)}")  # noqa: S108 - the target's /tmp
    async with RDPRenderer(request(rdp_target)) as renderer:
        await rfb_type(renderer.socket_path, f"touch {marker}")
        try:
            async with asyncio.timeout(15):
                while owner_of(marker) is None:  # noqa: ASYNC110 - the target's file system
                    await asyncio.sleep(0.05)
            assert owner_of(marker) == rdp_target.uid  # made by the target user's xterm
        finally:
            remove(marker)


async def test_wrong_password_ends_with_auth_failed(rdp_target: RDPTarget) -> None:
    renderer = RDPRenderer(request(rdp_target, password="not-the-password"))
    with pytest.raises(RendererFailed) as caught:
        await renderer.start()
    assert caught.value.end.reason == freerdp.AUTH_FAILED
    assert caught.value.message == "the asset refused the vaulted credential"
    assert (await renderer.ended).reason == freerdp.AUTH_FAILED
    assert group_members(set(renderer.pids.values())) == []


async def test_nothing_listening_ends_with_connect_refused(rdp_target: RDPTarget) -> None:
    renderer = RDPRenderer(request(rdp_target, port=free_port()))
    with pytest.raises(RendererFailed) as caught:
        await renderer.start()
    assert caught.value.end.reason == freerdp.CONNECT_REFUSED


async def test_killing_xfreerdp_ends_the_renderer_with_crashed_and_leaves_nothing(
    rdp_target: RDPTarget,
) -> None:
    renderer = RDPRenderer(request(rdp_target))
    path = await renderer.start()
    pids = renderer.pids
    os.kill(pids["xfreerdp"], signal.SIGKILL)
    async with asyncio.timeout(15):
        end = await renderer.ended
    assert end.reason == freerdp.CRASHED
    assert group_members(set(pids.values())) == []
    assert not path.parent.exists()
    assert (await renderer.stop("killed")).reason == freerdp.CRASHED  # the first end stays


async def test_server_ending_the_session_is_server_closed(rdp_target: RDPTarget) -> None:
    renderer = RDPRenderer(request(rdp_target))
    await renderer.start()
    rdp_target.end_sessions()  # the desktop session on the target is gone
    try:
        async with asyncio.timeout(20):
            end = await renderer.ended
    finally:
        await renderer.stop("killed")
    assert end.reason == freerdp.SERVER_CLOSED


async def test_a_changed_certificate_refuses_with_cert_mismatch(rdp_target: RDPTarget) -> None:
    pinned = rdp_target.fingerprint
    rdp_target.rotate_certificate()
    renderer = RDPRenderer(request(rdp_target, fingerprint=pinned))
    with pytest.raises(RDPCertificateMismatch) as caught:
        await renderer.start()
    assert isinstance(caught.value, HostKeyMismatch)  # the broker's security alert applies
    assert caught.value.end.reason == freerdp.CERT_MISMATCH
    assert rdp_target.password not in caught.value.detail
    assert group_members(set(renderer.pids.values())) == []
    # the new certificate, pinned, is accepted
    async with RDPRenderer(request(rdp_target)) as renderer:
        assert renderer.socket_path.is_socket()


async def test_a_ca_issued_certificate_for_the_address_is_refused_if_not_pinned(
    rdp_target: RDPTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Measured: xfreerdp with ``/cert:deny,fingerprint:...`` still accepts any certificate
    that verifies against a trusted CA for the right name. The renderer empties xfreerdp's
    CA store, so a CA the gateway's own environment trusts does not stand in for the pin."""
    pinned = rdp_target.fingerprint
    rdp_target.rotate_certificate(ca=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(rdp_target.directory / "ca.pem"))
    renderer = RDPRenderer(request(rdp_target, fingerprint=pinned))
    with pytest.raises(RDPCertificateMismatch):
        await renderer.start()


CHILD = """
import asyncio, os, sys
from gateway.desktop.freerdp import RenderRequest
from gateway.desktop.renderer import RDPRenderer

async def main():
    renderer = RDPRenderer(RenderRequest("127.0.0.1", int(sys.argv[1]), sys.argv[2],
                                         sys.stdin.readline().rstrip("\\n"), sys.argv[3]))
    await renderer.start()
    print(renderer.directory, *renderer.pids.values(), flush=True)
    os._exit(0)  # the gateway dies without stopping anything

asyncio.run(main())
"""


async def test_a_gateway_that_dies_takes_its_renderer_along(rdp_target: RDPTarget) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(rdp_target.port), rdp_target.username,
        rdp_target.fingerprint, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    out, _ = await asyncio.wait_for(child.communicate(rdp_target.password.encode() + b"\n"), 30)
    directory, *numbers = out.decode().split()
    pids = {int(pid) for pid in numbers}
    assert len(pids) == 2
    try:
        async with asyncio.timeout(10):
            while group_members(pids):  # noqa: ASYNC110 - polling /proc, nothing to wait on
                await asyncio.sleep(0.05)
    finally:
        shutil.rmtree(directory, ignore_errors=True)  # nobody was left to remove it


async def test_grants_open_only_their_channels(rdp_target: RDPTarget) -> None:
    grants = frozenset({"clipboard-in", "file-transfer"})
    async with RDPRenderer(request(rdp_target, grants=grants)) as renderer:
        transfer = renderer.transfer_dir
        assert transfer is not None and transfer.is_dir()
        xvnc_argv = proc_text(renderer.pids["Xvnc"], "cmdline").split(b"\0")
        assert b"-AcceptCutText=1" in xvnc_argv and b"-SendCutText=0" in xvnc_argv
        xfreerdp_argv = proc_text(renderer.pids["xfreerdp"], "cmdline").split(b"\0")
        assert b"+clipboard" in xfreerdp_argv
        assert f"/drive:conduit,{transfer}".encode() in xfreerdp_argv
    assert not transfer.exists()


@pytest.mark.parametrize("delay", [0.0, 0.2, 0.6])
async def test_stopping_while_it_starts_ends_it_with_that_reason(
    rdp_target: RDPTarget, delay: float
) -> None:
    renderer = RDPRenderer(request(rdp_target))
    starting = asyncio.ensure_future(renderer.start())
    await asyncio.sleep(delay)  # before Xvnc, while it comes up, while xfreerdp connects
    end = await renderer.stop("killed")
    assert end.reason == "killed"
    with pytest.raises(RendererFailed) as caught:
        await starting
    assert caught.value.end.reason == "killed"
    await asyncio.sleep(0.5)  # anything spawned late would show up by now
    assert group_members(set(renderer.pids.values())) == []
    assert renderer.directory is None or not renderer.directory.exists()
