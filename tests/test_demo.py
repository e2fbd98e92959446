"""`conduit demo`: one command from nothing to a seeded, serving demo site."""

from __future__ import annotations

import asyncio
import json
import pwd
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import asyncssh
import pyotp
import pytest
from pymodbus.client import AsyncModbusTcpClient

from gateway.demo import desktops
from gateway.demo import plc as demo_plc
from gateway.demo import target as demo_target
from tests.desktop_ws import open_desktop
from tests.support import Served, clean_env, conduit, kbdint_client


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_demo(data_dir: Path, env: dict[str, str] | None = None) -> Served:
    portal = _port()
    server = Served(
        [
            "demo",
            "--data-dir",
            str(data_dir),
            "--portal-listen",
            f"127.0.0.1:{portal}",
            "--ssh-listen",
            f"127.0.0.1:{_port()}",
        ],
        f"127.0.0.1:{portal}",
        env=env,
        https=False,
    )
    server.wait_healthy(deadline_s=60)
    return server


def test_demo_initialises_seeds_and_serves(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    server = start_demo(data_dir)
    try:
        with server.client() as client:
            assert client.get("/readyz").json()["status"] == "ready"
        assert server.terminate() == 0
    finally:
        server.kill()
    creds_file = data_dir / "demo-credentials.json"
    assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
    creds = json.loads(creds_file.read_text())
    assert [c["username"] for c in creds] == ["admin", "approver", "vendor", "auditor"]
    for c in creds:
        assert c["password"] in server.stdout and c["totp_secret"] in server.stdout
    # An admin exists, so no enrolment link is offered.
    assert "/enroll/" not in server.stdout

    listed = conduit("user", "list", "--data-dir", str(data_dir))
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split()[1:] for line in listed.stdout.splitlines()[1:]}
    assert rows["admin"][:2] == ["active", "admin"]
    assert rows["vendor"] == ["active", "vendor", "acme-automation"]
    assert set(rows) == {"admin", "approver", "vendor", "auditor"}

    again = start_demo(data_dir)
    try:
        assert again.terminate() == 0
    finally:
        again.kill()
    assert creds[0]["password"] in again.stdout
    assert json.loads(creds_file.read_text()) == creds


def test_demo_refuses_plain_http_off_loopback(tmp_path: Path) -> None:
    result = conduit("demo", "--data-dir", str(tmp_path / "d"), "--portal-listen", "0.0.0.0:0")
    assert result.returncode == 2
    assert "portal.tls" in result.stderr


# -- the demo's SSH asset: a simulated PLC reached through the gateway ----------------------


def _vendor(data_dir: Path) -> dict[str, str]:
    creds: list[dict[str, str]] = json.loads((data_dir / "demo-credentials.json").read_text())
    return next(c for c in creds if c["username"] == "vendor")


def _askpass(work: Path, password: str, code: str) -> dict[str, str]:
    """Environment making OpenSSH answer the gateway's password and code prompts."""
    work.mkdir(exist_ok=True)
    (work / "pw").write_text(password)
    (work / "code").write_text(code)
    script = work / "askpass.sh"
    script.write_text(f"""#!/bin/sh
case "$1" in
  *assword*) cat {work}/pw ;;
  *erification*) cat {work}/code ;;
esac
""")
    script.chmod(0o700)
    env = clean_env(SSH_ASKPASS=str(script), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
    return env


def _ssh_port(server: Served) -> int:
    return int(server.wait_for_output(r"ssh -p (\d+) vendor\+demo-plc@127\.0\.0\.1").group(1))


def _audit(data_dir: Path, action: str, count: int) -> list[dict[str, object]]:
    """The audit log once it holds ``count`` events ``action`` (session.end trails the client)."""
    end = time.monotonic() + 15
    while True:
        exported = conduit("audit", "export", "--data-dir", str(data_dir))
        assert exported.returncode == 0, exported.stderr
        events = [json.loads(line) for line in exported.stdout.splitlines()]
        if sum(e["action"] == action for e in events) >= count or time.monotonic() > end:
            return events
        time.sleep(0.2)


async def _pty_shell(port: int, password: str, code: str, typed: str) -> str:
    conn, _ = await asyncssh.create_connection(
        kbdint_client(password, code), "127.0.0.1", port, username="vendor+demo-plc",
        known_hosts=None, client_keys=None, agent_path=None,
        preferred_auth=["keyboard-interactive"],
    )  # fmt: skip
    async with conn:
        process = await conn.create_process(term_type="xterm", term_size=(100, 30))
        output = ""
        while "demo-plc> " not in output:
            output += await asyncio.wait_for(process.stdout.read(1024), 10)
        process.stdin.write(typed + "\n")
        while output.count("demo-plc> ") < 2:
            output += await asyncio.wait_for(process.stdout.read(1024), 10)
        process.stdin.write("exit\n")
        await asyncio.wait_for(process.wait(), 10)
        return output


@pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client (ssh) not installed")
def test_demo_vendor_reaches_the_simulated_plc_through_the_gateway(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    server = start_demo(data_dir)
    try:
        port = _ssh_port(server)
        vendor = _vendor(data_dir)
        totp = pyotp.TOTP(vendor["totp_secret"])
        argv = ["ssh", "-p", str(port), "-o", "StrictHostKeyChecking=no",
                "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}",
                "-o", "PreferredAuthentications=keyboard-interactive",
                "-o", "NumberOfPasswordPrompts=1", "-o", "ConnectTimeout=10",
                "vendor+demo-plc@127.0.0.1", "status"]  # fmt: skip
        result = subprocess.run(
            # TOTP codes are single use and accepted one step either side: the previous step's
            # code here, this step's for sftp, the next step's for the second run.
            argv, env=_askpass(tmp_path / "client", vendor["password"], totp.at(time.time() - 30)),
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "demo-plc (simulated PLC, Conduit demo)" in result.stdout
        assert "mode      RUN" in result.stdout
        # Files through the gateway's SFTP bridge
        fetched = tmp_path / "events.log"
        sftp = ["sftp", *argv[3:-2], "-o", "BatchMode=no",  # -b would turn prompts off
                "-P", str(port), "-b", "-", "vendor+demo-plc@127.0.0.1"]  # fmt: skip
        batch = f"get logs/events.log {fetched}\nput {fetched} uploads/copy.log\n"
        result = subprocess.run(
            sftp, env=_askpass(tmp_path / "client", vendor["password"], totp.now()),
            capture_output=True, text=True, timeout=60, input=batch, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "tank1 level high" in fetched.read_text()
        uploaded = data_dir / "demo-target" / "files" / "uploads" / "copy.log"
        assert uploaded.read_text() == fetched.read_text()
        events = _audit(data_dir, "session.end", 2)
        assert any(e["action"] == "sftp.write" for e in events)
        assert server.terminate() == 0
    finally:
        server.kill()
    starts = [e for e in events if e["action"] == "session.start"]
    ends = [e for e in events if e["action"] == "session.end"]
    assert len(starts) == len(ends) == 2  # the shell command, then the sftp session
    for e in starts + ends:
        assert (e["actor"], e["target"]) == ("vendor", "demo-plc")
    assert [e["detail"]["protocol"] for e in starts] == ["ssh", "sftp"]  # type: ignore[index]
    key_files = {
        p.name: p.read_bytes() for p in (data_dir / "demo-target").iterdir() if p.is_file()
    }

    # A second run on the same directory reuses the asset, its key, pin and grants.
    again = start_demo(data_dir)
    try:
        code = totp.at(time.time() + 30)  # earlier codes are spent: single use
        shown = asyncio.run(_pty_shell(_ssh_port(again), vendor["password"], code, "show tags"))
        assert "tank1.level" in shown and "pump1.speed" in shown
        _audit(data_dir, "session.end", 3)
        assert again.terminate() == 0
    finally:
        again.kill()
    assert key_files == {
        p.name: p.read_bytes() for p in (data_dir / "demo-target").iterdir() if p.is_file()
    }
    assets = conduit("asset", "list", "--data-dir", str(data_dir))
    assert assets.returncode == 0, assets.stderr
    names = [line.split()[0] for line in assets.stdout.splitlines()[1:] if line.strip()]
    plc = sorted(name for name in names if name.startswith("demo-plc"))
    assert plc == ["demo-plc", "demo-plc-maint"], assets.stdout  # once each
    assert names.count("demo-modbus-plc") == 1, assets.stdout
    grants = conduit("grant", "list", "--data-dir", str(data_dir)).stdout.splitlines()
    standing = sorted(line.split()[4] for line in grants if "asset:demo-plc " in line + " ")
    expected = ["ssh", "sftp-read", "sftp-write", "approve", "watch", "kill"]
    assert standing == sorted(expected), grants
    # The second asset only: the vendor may ask for it, the approver decides.
    maint = sorted(
        (line.split()[2], line.split()[4]) for line in grants if "asset:demo-plc-maint" in line
    )
    assert maint == sorted(
        [
            ("user:vendor", "request"),
            ("user:approver", "approve"),
            ("user:approver", "watch"),
            ("user:approver", "kill"),
        ]
    ), grants


def _plc_port(server: Served) -> int:
    return int(server.wait_for_output(r"demo-modbus-plc: a Modbus/TCP PLC on 127\.0\.0\.1:(\d+)")
               .group(1))  # fmt: skip


async def _modbus_through_tunnel(port: int, password: str, code: str, plc_port: int) -> list[str]:
    """As the vendor: a local forwarding to the demo PLC, a pymodbus client through it."""
    conn, _ = await asyncssh.create_connection(
        kbdint_client(password, code), "127.0.0.1", port, username="vendor+demo-modbus-plc",
        known_hosts=None, client_keys=None, agent_path=None,
        preferred_auth=["keyboard-interactive"],
    )  # fmt: skip
    async with conn:
        listener = await conn.forward_local_port("127.0.0.1", 0, "demo-modbus-plc", plc_port)
        client = AsyncModbusTcpClient("127.0.0.1", port=listener.get_port(), timeout=10)
        await client.connect()
        try:
            read = await client.read_holding_registers(100, count=2, device_id=1)
            write = await client.write_register(100, 1, device_id=1)
            info = await client.read_device_information(device_id=1)
        finally:
            client.close()
        listener.close()
        return [str(read.registers), str(write.exception_code), info.information[0].decode()]


def test_demo_vendor_reads_the_modbus_plc_and_writes_are_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    server = start_demo(data_dir)
    try:
        vendor = _vendor(data_dir)
        code = pyotp.TOTP(vendor["totp_secret"]).now()
        got = asyncio.run(_modbus_through_tunnel(
            _ssh_port(server), vendor["password"], code, _plc_port(server)))  # fmt: skip
        assert got == [str(demo_plc.HOLDING[100:102]), "1", demo_plc.VENDOR]
        events = _audit(data_dir, "session.end", 1)
        assert server.terminate() == 0
    finally:
        server.kill()
    (write,) = [e for e in events if e["action"] == "modbus.write"]
    assert (write["actor"], write["result"]) == ("vendor", "denied")
    grants = conduit("grant", "list", "--data-dir", str(data_dir)).stdout.splitlines()
    plc = sorted(line.split()[4] for line in grants if "asset:demo-modbus-plc" in line)
    assert plc == sorted(["modbus-read", "approve", "watch", "kill"]), grants


def test_demo_refuses_ssh_off_loopback(tmp_path: Path) -> None:
    result = conduit("demo", "--data-dir", str(tmp_path / "d"), "--ssh-listen", "0.0.0.0:0")
    assert result.returncode == 2
    assert "ssh.listen" in result.stderr


# -- the simulated device alone: only the vaulted key, its commands, SFTP in its file area ----


async def test_demo_device_takes_only_its_key_and_serves_commands_and_files(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "device"
    directory.mkdir(mode=0o700)
    host_key = demo_target.host_key_public(directory)
    private, public = demo_target.new_client_key()
    demo_target.trust_client_key(directory, public)
    device = await demo_target.start_device(directory, "127.0.0.1", 0)
    port = device.get_port()
    key = asyncssh.import_private_key(private)

    def options(username: str, client_key: asyncssh.SSHKey) -> asyncssh.SSHClientConnectionOptions:
        return asyncssh.SSHClientConnectionOptions(
            username=username, client_keys=[client_key], known_hosts=([host_key], [], []),
            agent_path=None, config=None, preferred_auth=["publickey", "password"],
        )  # fmt: skip

    try:
        stranger = asyncssh.generate_private_key("ssh-ed25519")
        for user, client_key in (("maint", stranger), ("root", key)):
            with pytest.raises(asyncssh.PermissionDenied):
                await asyncssh.connect("127.0.0.1", port, options=options(user, client_key))
        async with asyncssh.connect("127.0.0.1", port, options=options("maint", key)) as conn:
            status = await conn.run("status")
            assert status.exit_status == 0 and "mode      RUN" in str(status.stdout)
            unknown = await conn.run("rm -rf /")
            assert unknown.exit_status == 127 and "unknown command" in str(unknown.stderr)
            async with conn.start_sftp_client() as sftp:
                assert {"README.txt", "programs", "logs", "uploads"} <= set(await sftp.listdir("/"))
                async with sftp.open("/programs/line1_pump_control.st") as f:
                    assert "PROGRAM Line1PumpControl" in await f.read()
                async with sftp.open("/uploads/note.txt", "w") as f:
                    await f.write("hello plc\n")
                assert (directory / "files/uploads/note.txt").read_text() == "hello plc\n"
                with pytest.raises(asyncssh.SFTPError):
                    await sftp.stat("/../../" + str(directory.parent).lstrip("/") + "/device")
                with pytest.raises(asyncssh.SFTPOpUnsupported):
                    await sftp.symlink("/README.txt", "/uploads/link")
    finally:
        device.close()
        await device.wait_closed()


# -- the demo's desktops: VNC (Xvnc + xterm), RDP (xrdp + xorgxrdp, as root) ------------------


async def _first_screen(base: str, data_dir: Path, asset: str) -> tuple[int, int]:
    """The vendor opens ``asset``'s desktop through the demo's gateway; the screen's size once
    a first framebuffer update has arrived."""
    viewer = await open_desktop(base, data_dir, "vendor", asset)
    try:
        async with asyncio.timeout(60):
            while viewer.updates == 0:
                assert not viewer.ended.is_set(), viewer.end_reason
                await asyncio.sleep(0.05)
        assert viewer.fb is not None
        return viewer.fb.width, viewer.fb.height
    finally:
        await viewer.close()


def _argv_mentions(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(cmdline.parent.name)
        except OSError:
            continue
    return found


def test_demo_desktops_open_through_the_gateway_and_end_with_the_demo(tmp_path: Path) -> None:
    missing = desktops.vnc_missing()
    if missing:
        pytest.skip(missing)
    rdp_reason = desktops.rdp_missing()
    data_dir = tmp_path / "demo"
    server = start_demo(data_dir)
    rdp_user = ""
    try:
        server.wait_for_output(r"demo-hmi-vnc: a VNC desktop \(Xvnc :\d+")
        if rdp_reason:
            assert f"no RDP demo asset (demo-hmi-rdp): {rdp_reason}" in server.stdout
        else:
            rdp_user = server.wait_for_output(r"local user (cdemo[0-9a-f]+)").group(1)
        assert "Connect -> Open desktop in browser" in server.stdout
        assert asyncio.run(_first_screen(server.base, data_dir, "demo-hmi-vnc")) == (1024, 768)
        if not rdp_reason:
            width, height = asyncio.run(_first_screen(server.base, data_dir, "demo-hmi-rdp"))
            assert width > 0 and height > 0
        assert _argv_mentions(str(data_dir / "demo-vnc")), "Xvnc runs with the demo's files"
        assert server.terminate() == 0
    finally:
        server.kill()
    assert _argv_mentions(str(data_dir / "demo-vnc")) == []  # Xvnc ended with the demo
    if rdp_user:
        with pytest.raises(KeyError):
            pwd.getpwnam(rdp_user)  # the demo user is removed again
    grants = conduit("grant", "list", "--data-dir", str(data_dir)).stdout.splitlines()
    vnc = sorted(
        (line.split()[2], line.split()[4]) for line in grants if "asset:demo-hmi-vnc" in line
    )
    assert vnc == sorted(
        [
            ("user:vendor", "vnc"),
            ("user:approver", "approve"),
            ("user:approver", "watch"),
            ("user:approver", "kill"),
        ]
    ), grants
    if rdp_user:
        assert any("asset:demo-hmi-rdp" in line and " rdp" in line for line in grants), grants
    exported = conduit("audit", "export", "--data-dir", str(data_dir)).stdout
    events = [json.loads(line) for line in exported.splitlines()]
    opened = {e["target"] for e in events if e["action"] == "session.start"}
    assert "demo-hmi-vnc" in opened
    assert rdp_reason or "demo-hmi-rdp" in opened


def test_demo_without_desktop_packages_says_so_and_serves(tmp_path: Path) -> None:
    empty = tmp_path / "no-tools"
    empty.mkdir()
    data_dir = tmp_path / "demo"
    server = start_demo(data_dir, env=clean_env(PATH=str(empty)))
    try:
        server.wait_for_output(r"no VNC demo asset \(demo-hmi-vnc\): not installed: Xvnc")
        assert "no RDP demo asset (demo-hmi-rdp): " in server.stdout
        with server.client() as client:
            assert client.get("/readyz").json()["status"] == "ready"
        assert server.terminate() == 0
    finally:
        server.kill()
    assets = conduit("asset", "list", "--data-dir", str(data_dir)).stdout
    assert "demo-hmi" not in assets
