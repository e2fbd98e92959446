# ruff: noqa: F811 - the gateway fixture imported from test_ssh_jump is a parameter here
"""File transfer through the gateway with real peers: OpenSSH scp and sftp as the vendor,
OpenSSH sshd (internal-sftp) as the asset. The asset runs on this machine as root, so a
remote path is also a local one and the tests check the bytes that arrived on disk."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
from pathlib import Path

import asyncssh
import pytest

from tests.support import conduit, kbdint_client
from tests.test_ssh_jump import PASSWORD, Gateway, gateway  # noqa: F401 - fixture

MB = 1 << 20


def grant(gw: Gateway, user: str, action: str) -> None:
    added = conduit("grant", "add", "--user", user, "--asset", "target", "--action", action,
                    "--data-dir", str(gw.data))  # fmt: skip
    assert added.returncode == 0, added.stderr


def client_options(gw: Gateway) -> list[str]:
    return ["-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={gw.work / 'known_hosts'}",
            "-o", "PreferredAuthentications=keyboard-interactive", "-o", "BatchMode=no",
            "-o", "NumberOfPasswordPrompts=1", "-o", "ConnectTimeout=10"]  # fmt: skip


def scp(gw: Gateway, user: str, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = ["scp", "-P", str(gw.ssh_port), *client_options(gw), *args]
    return subprocess.run(argv, env=gw.askpass(user, code), capture_output=True, text=True,
                          timeout=180, stdin=subprocess.DEVNULL, check=False)  # fmt: skip


def sftp(gw: Gateway, route: str, code: str, batch: str) -> subprocess.CompletedProcess[str]:
    argv = ["sftp", "-P", str(gw.ssh_port), *client_options(gw), "-b", "-", f"{route}@127.0.0.1"]
    return subprocess.run(argv, env=gw.askpass(route, code), capture_output=True, text=True,
                          timeout=60, input=batch, check=False)  # fmt: skip


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(MB), b""):
            digest.update(block)
    return digest.hexdigest()


def events(gw: Gateway, action: str) -> list[dict[str, object]]:
    return [e for e in gw.audit_until(action) if e["action"] == action]


def test_scp_upload_and_download_of_50_mb_arrive_intact_and_are_audited(
    gateway: Gateway, tmp_path: Path
) -> None:
    grant(gateway, "alice", "sftp-read")
    grant(gateway, "alice", "sftp-write")
    local = tmp_path / "firmware.bin"
    local.write_bytes(os.urandom(50 * MB))
    remote = tmp_path / "asset-side" / "firmware.bin"  # the asset's disk is this machine's
    remote.parent.mkdir()
    up = scp(gateway, "alice+target", gateway.code("alice"), str(local),
             f"alice+target@127.0.0.1:{remote}")  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert sha256(remote) == sha256(local)
    back = tmp_path / "back.bin"
    down = scp(gateway, "alice+target", gateway.code("alice", 1),
               f"alice+target@127.0.0.1:{remote}", str(back))  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert sha256(back) == sha256(local)

    [written] = events(gateway, "sftp.write")
    assert written["actor"] == "alice" and written["target"] == "target"
    detail = written["detail"]
    assert isinstance(detail, dict)
    assert detail["path"] == str(remote)
    assert detail["size"] == 50 * MB and detail["sha256"] == sha256(local)
    reads = [e["detail"] for e in events(gateway, "sftp.read")]
    assert any(
        isinstance(d, dict)
        and (d["path"], d["size"], d["sha256"]) == (str(remote), 50 * MB, sha256(local))
        for d in reads
    ), reads
    ends = [e for e in gateway.audit_until("session.end") if e["action"] == "session.end"]
    assert len(ends) >= 2
    # scp ended both sessions itself: said as for the relay and tunnels.
    assert {e["detail"]["reason"] for e in ends} == {"client_closed"}  # type: ignore[index]
    found = conduit("recordings", "search", "firmware.bin", "--data-dir", str(gateway.data))
    assert found.returncode == 0 and "firmware" in found.stdout, found.stdout + found.stderr


def test_sftp_write_without_sftp_write_is_refused_and_audited(
    gateway: Gateway, tmp_path: Path
) -> None:
    grant(gateway, "bob", "sftp-read")
    asset_dir = tmp_path / "asset-side"
    asset_dir.mkdir()
    (asset_dir / "config.txt").write_text("setpoint=42\n")
    local = tmp_path / "patch.bin"
    local.write_bytes(b"new firmware")
    fetched = tmp_path / "fetched.txt"
    read = sftp(gateway, "bob+target", gateway.code("bob"),
                f"get {asset_dir / 'config.txt'} {fetched}\n")  # fmt: skip
    assert read.returncode == 0, read.stderr
    assert fetched.read_text() == "setpoint=42\n"

    write = sftp(gateway, "bob+target", gateway.code("bob", 1),
                 f"put {local} {asset_dir / 'patch.bin'}\n")  # fmt: skip
    assert write.returncode != 0
    assert "denied" in write.stderr.lower(), write.stderr
    assert not (asset_dir / "patch.bin").exists()
    denied = events(gateway, "operation.denied")
    assert any(
        isinstance(d := e["detail"], dict)
        and d["operation"] == "write"
        and d["path"] == str(asset_dir / "patch.bin")
        and d["action_requested"] == "sftp-write"
        for e in denied
    ), denied


def test_a_write_to_a_file_opened_for_reading_is_refused_and_audited_once(
    gateway: Gateway, tmp_path: Path
) -> None:
    """OpenSSH's clients never do this; asyncssh's will, so it stands in for a crafted one."""
    grant(gateway, "alice", "sftp-read")
    grant(gateway, "alice", "sftp-write")
    config = tmp_path / "config.txt"
    config.write_text("setpoint=42\n")

    async def write_through_a_read_handle() -> list[str]:
        conn, _ = await asyncssh.create_connection(
            kbdint_client(PASSWORD, gateway.code("alice")), "127.0.0.1", gateway.ssh_port,
            username="alice+target", known_hosts=None, client_keys=None, agent_path=None,
            preferred_auth=["keyboard-interactive"],
        )  # fmt: skip
        refusals = []
        async with conn, conn.start_sftp_client() as client:
            async with client.open(str(config), "rb") as handle:
                for _ in range(3):
                    with pytest.raises(asyncssh.SFTPPermissionDenied) as refused:
                        await handle.write(b"setpoint=99\n", 0)
                    refusals.append(refused.value.reason)
                assert await handle.read() == b"setpoint=42\n"
        return refusals

    assert asyncio.run(write_through_a_read_handle()) == ["file not opened for writing"] * 3
    assert config.read_text() == "setpoint=42\n"
    denied = [
        d for e in events(gateway, "operation.denied")
        if isinstance(d := e["detail"], dict) and d["path"] == str(config)
    ]  # fmt: skip
    assert [(d["operation"], d["action_requested"], d["reason"]) for d in denied] == [
        ("write", "sftp-write", "file not opened for writing")
    ]
    reads = [
        d for e in events(gateway, "sftp.read")
        if isinstance(d := e["detail"], dict) and d["path"] == str(config)
    ]  # fmt: skip
    assert [(d["size"], d["refused_writes"]) for d in reads] == [(12, 3)]


def test_removing_renaming_and_mkdir_need_sftp_write(gateway: Gateway, tmp_path: Path) -> None:
    grant(gateway, "carol", "sftp-read")
    asset_dir = tmp_path / "asset-side"
    asset_dir.mkdir()
    (asset_dir / "keep.txt").write_text("keep")
    batch = "".join(
        f"-{line}\n"  # "-" : keep going after a failure, so every refusal is tried
        for line in (
            f"rm {asset_dir / 'keep.txt'}",
            f"rename {asset_dir / 'keep.txt'} {asset_dir / 'moved.txt'}",
            f"mkdir {asset_dir / 'newdir'}",
            f"ls {asset_dir}",
        )
    )
    result = sftp(gateway, "carol+target", gateway.code("carol"), batch)
    assert result.returncode == 0, result.stderr
    assert (asset_dir / "keep.txt").read_text() == "keep"
    assert not (asset_dir / "moved.txt").exists() and not (asset_dir / "newdir").exists()
    assert "keep.txt" in result.stdout  # listing is a read: allowed
    operations = {
        d["operation"]
        for e in events(gateway, "operation.denied")
        if isinstance(d := e["detail"], dict)
    }
    assert {"remove", "rename", "mkdir"} <= operations


def test_legacy_scp_protocol_goes_through_the_same_checks(gateway: Gateway, tmp_path: Path) -> None:
    grant(gateway, "dave", "sftp-read")
    grant(gateway, "dave", "sftp-write")
    local = tmp_path / "legacy.txt"
    local.write_bytes(b"sent with scp -O\n" * 1000)
    asset_dir = tmp_path / "asset-side"
    asset_dir.mkdir()
    up = scp(gateway, "dave+target", gateway.code("dave"), "-O", str(local),
             f"dave+target@127.0.0.1:{asset_dir / 'legacy.txt'}")  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert (asset_dir / "legacy.txt").read_bytes() == local.read_bytes()
    [written] = events(gateway, "sftp.write")
    detail = written["detail"]
    assert isinstance(detail, dict)
    assert detail["sha256"] == hashlib.sha256(local.read_bytes()).hexdigest()
    starts = [e for e in gateway.audit() if e["action"] == "session.start"]
    assert any(isinstance(d := e["detail"], dict) and d["protocol"] == "scp" for e in starts)


def test_file_transfer_without_an_sftp_grant_is_refused(gateway: Gateway, tmp_path: Path) -> None:
    # alice may open a shell (ssh) but holds neither sftp-read nor sftp-write
    fetched = tmp_path / "passwd"
    result = sftp(gateway, "alice+target", gateway.code("alice"), f"get /etc/passwd {fetched}\n")
    assert result.returncode != 0
    assert not fetched.exists()
    denied = events(gateway, "session.denied")
    assert any(isinstance(d := e["detail"], dict) and d["protocol"] == "sftp" for e in denied), (
        denied
    )
