"""Files of 1, 5 and 50 MiB both ways through the gateway with the clients vendors use:
OpenSSH ``scp -O`` (legacy SCP) and ``sftp``, PuTTY's ``pscp`` in SCP and SFTP mode, and an
asyncssh client with default settings; OpenSSH sshd (internal-sftp) is the asset. The asset
runs on this machine as root, so a remote path is also a local one: each test checks the
sha256 of the file on the asset and on the client, and that the audit's size and sha256 are
those of the file on the asset. Clients log in with a certificate from the gateway (one code
for the whole module, TOTP codes being single-use).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pyotp
import pytest

from tests.sshd_target import SSHDTarget, free_port
from tests.support import Served, clean_env, conduit, init_data_dir
from tests.test_ssh_certs import PASSWORD, _populate

MB = 1 << 20
USER = "alice"
ROUTE = f"{USER}+target"
pytestmark = pytest.mark.realpeer


@dataclass
class Gateway:
    data: Path
    ssh_port: int
    work: Path
    host_fingerprints: list[str]

    @property
    def key(self) -> Path:
        return self.work / f"{USER}_ed25519"

    def audit(self) -> list[dict[str, object]]:
        exported = conduit("audit", "export", "--data-dir", str(self.data))
        assert exported.returncode == 0, exported.stderr
        return [json.loads(line) for line in exported.stdout.splitlines()]

    def transfer_events(self, action: str, path: Path, count: int = 1) -> list[dict[str, object]]:
        """The audit events ``action`` about ``path``, once there are ``count`` of them: a
        transfer is audited as its file is closed, just after the client saw it end."""
        end = time.monotonic() + 15
        while True:
            found = [
                e for e in self.audit()
                if e["action"] == action and isinstance(d := e["detail"], dict)
                and d["path"] == str(path)
            ]  # fmt: skip
            if len(found) >= count or time.monotonic() > end:
                return found
            time.sleep(0.2)


@pytest.fixture(scope="module")
def gateway(sshd: SSHDTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("gw")
    data, work = root / "data", root / "client"
    work.mkdir()
    init_data_dir(data)
    secret = pyotp.random_base32()
    asyncio.run(_populate(data, sshd, {USER: secret}, work))
    for action in ("sftp-read", "sftp-write"):
        added = conduit("grant", "add", "--org", "acme", "--asset", "target", "--action", action,
                        "--data-dir", str(data))  # fmt: skip
        assert added.returncode == 0, added.stderr
    issued = conduit("ssh-cert", "--user", USER, "--key", f"{work / USER}_ed25519.pub",
                     "--password-stdin", "--code-stdin", "--data-dir", str(data),
                     stdin=f"{PASSWORD}\n{pyotp.TOTP(secret).now()}\n")  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    # PuTTY reads the key and its certificate from one .ppk file.
    subprocess.run(["puttygen", str(work / f"{USER}_ed25519"), "--certificate",
                    f"{work / USER}_ed25519-cert.pub", "-O", "private",
                    "-o", str(work / f"{USER}.ppk")], check=True, capture_output=True)  # fmt: skip
    portal, ssh_port = free_port(), free_port()
    server = Served(
        ["serve", "--data-dir", str(data), "--portal-listen", f"127.0.0.1:{portal}",
         "--ssh-listen", f"127.0.0.1:{ssh_port}"],
        f"127.0.0.1:{portal}",
    )  # fmt: skip
    try:
        server.wait_healthy()
        scanned = subprocess.run(
            ["ssh-keyscan", "-p", str(ssh_port), "127.0.0.1"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        listed = subprocess.run(["ssh-keygen", "-l", "-f", "-"], input=scanned.stdout,
                                capture_output=True, text=True, check=True)  # fmt: skip
        fingerprints = [line.split()[1] for line in listed.stdout.splitlines()]
        yield Gateway(data, ssh_port, work, fingerprints)
    finally:
        if server.proc.poll() is None:
            server.terminate()
        else:
            server.finish()
    # Nothing went wrong unnoticed: a lost task's exception is logged, not raised.
    assert "Traceback" not in server.stderr, server.stderr[-5000:]


@functools.cache
def _content(size: int, directory: Path) -> tuple[Path, str]:
    path = directory / f"random-{size}.bin"
    path.write_bytes(os.urandom(size))
    return path, sha256(path)


@pytest.fixture(scope="module")
def content(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], tuple[Path, str]]:
    """A file of random bytes of a given size and its sha256, made once per module."""
    directory = tmp_path_factory.mktemp("content")
    return lambda size: _content(size, directory)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(MB), b""):
            digest.update(block)
    return digest.hexdigest()


def run(argv: list[str], gw: Gateway, stdin: str | None = None) -> None:
    env = clean_env(HOME=str(gw.work))  # PuTTY keeps its random seed under $HOME
    env = {k: v for k, v in env.items() if not k.startswith("SSH_")}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60,
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                          check=False)  # fmt: skip
    assert done.returncode == 0, f"{argv[0]} exited {done.returncode}: {done.stderr[-2000:]}"


def openssh_options(gw: Gateway) -> list[str]:
    return ["-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={gw.work / 'known'}",
            "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-i", str(gw.key),
            "-o", f"CertificateFile={gw.key}-cert.pub", "-o", "PreferredAuthentications=publickey",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-P", str(gw.ssh_port)]  # fmt: skip


def putty_options(gw: Gateway) -> list[str]:
    pinned = [arg for fp in gw.host_fingerprints for arg in ("-hostkey", fp)]
    return ["-batch", "-q", "-noagent", "-P", str(gw.ssh_port), "-i", str(gw.work / f"{USER}.ppk"),
            *pinned]  # fmt: skip


def scp_legacy(gw: Gateway, local: Path, remote: Path, back: Path) -> None:
    run(["scp", "-O", "-q", *openssh_options(gw), str(local), f"{ROUTE}@127.0.0.1:{remote}"], gw)
    run(["scp", "-O", "-q", *openssh_options(gw), f"{ROUTE}@127.0.0.1:{remote}", str(back)], gw)


def openssh_sftp(gw: Gateway, local: Path, remote: Path, back: Path) -> None:
    run(["sftp", "-q", *openssh_options(gw), "-b", "-", f"{ROUTE}@127.0.0.1"], gw,
        stdin=f"put {local} {remote}\nget {remote} {back}\n")  # fmt: skip


def pscp(mode: str) -> Callable[[Gateway, Path, Path, Path], None]:
    def copy(gw: Gateway, local: Path, remote: Path, back: Path) -> None:
        run(["pscp", mode, *putty_options(gw), str(local), f"{ROUTE}@127.0.0.1:{remote}"], gw)
        run(["pscp", mode, *putty_options(gw), f"{ROUTE}@127.0.0.1:{remote}", str(back)], gw)

    return copy


def asyncssh_defaults(gw: Gateway, local: Path, remote: Path, back: Path) -> None:
    async def copy() -> None:
        async with asyncssh.connect(
            "127.0.0.1", gw.ssh_port, username=ROUTE, known_hosts=None, agent_path=None,
            client_keys=[str(gw.key)],  # its certificate is read from beside it
        ) as conn, conn.start_sftp_client() as sftp:  # fmt: skip
            await sftp.put(str(local), str(remote))
            await sftp.get(str(remote), str(back))

    asyncio.run(asyncio.wait_for(copy(), 120))


CLIENTS: dict[str, Callable[[Gateway, Path, Path, Path], None]] = {
    "scp-O": scp_legacy,
    "sftp": openssh_sftp,
    "pscp-scp": pscp("-scp"),
    "pscp-sftp": pscp("-sftp"),
    "asyncssh": asyncssh_defaults,
}


@pytest.mark.parametrize("size", [1 * MB, 5 * MB, 50 * MB], ids=["1MiB", "5MiB", "50MiB"])
@pytest.mark.parametrize("client", list(CLIENTS))
def test_files_move_both_ways_intact_and_the_audit_matches_the_asset(
    gateway: Gateway,
    content: Callable[[int], tuple[Path, str]],
    tmp_path: Path,
    client: str,
    size: int,
) -> None:
    local, digest = content(size)
    remote = tmp_path / "asset-side" / "firmware.bin"  # the asset's disk is this machine's
    remote.parent.mkdir()
    back = tmp_path / "back.bin"

    CLIENTS[client](gateway, local, remote, back)

    assert remote.stat().st_size == size and sha256(remote) == digest
    assert sha256(back) == digest
    [written] = gateway.transfer_events("sftp.write", remote)
    assert written["result"] == "success"
    assert isinstance(w := written["detail"], dict)
    assert (w["size"], w["sha256"]) == (size, digest)
    reads = [e for e in gateway.transfer_events("sftp.read", remote) if e["result"] == "success"]
    assert any(
        isinstance(r := e["detail"], dict) and (r["size"], r["sha256"]) == (size, digest)
        for e in reads
    ), reads


def connect(gw: Gateway) -> Any:
    """An asyncssh connection as the vendor, with the certificate beside the key."""
    return asyncssh.connect("127.0.0.1", gw.ssh_port, username=ROUTE, known_hosts=None,
                            agent_path=None, client_keys=[str(gw.key)])  # fmt: skip


def cut_short_sftp(gw: Gateway, remote: Path, data: bytes) -> None:
    """Writes ``data`` and ends the connection with the file still open."""

    async def write() -> None:
        async with connect(gw) as conn, conn.start_sftp_client() as sftp:
            handle = await sftp.open(str(remote), "wb")
            for at in range(0, len(data), 64 << 10):
                await handle.write(data[at : at + (64 << 10)], at)
            await handle.stat()  # answered once the asset confirmed every write before it
            conn.abort()

    asyncio.run(asyncio.wait_for(write(), 60))


def cut_short_scp(gw: Gateway, remote: Path, data: bytes) -> None:
    """Announces a file of 1 MiB to the SCP server, sends ``data`` and then end of input."""

    async def write() -> None:
        async with connect(gw) as conn:
            proc = await conn.create_process(f"scp -t {remote}", encoding=None)
            assert await proc.stdout.readexactly(1) == b"\0"
            proc.stdin.write(f"C0644 {MB} {remote.name}\n".encode())
            assert await proc.stdout.readexactly(1) == b"\0"
            proc.stdin.write(data)
            proc.stdin.write_eof()
            await proc.wait_closed()

    asyncio.run(asyncio.wait_for(write(), 60))


@pytest.mark.parametrize("how", [cut_short_sftp, cut_short_scp], ids=["sftp", "scp"])
def test_an_upload_cut_short_is_audited_as_a_failure_with_what_reached_the_asset(
    gateway: Gateway, tmp_path: Path, how: Callable[[Gateway, Path, bytes], None]
) -> None:
    remote = tmp_path / "half.bin"
    data = os.urandom(320 << 10)

    how(gateway, remote, data)

    assert remote.read_bytes() == data
    [written] = gateway.transfer_events("sftp.write", remote)
    assert written["result"] == "failure"
    assert isinstance(w := written["detail"], dict)
    assert w["error"] == "the client left before closing the file"
    assert (w["size"], w["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize("client", ["scp-O", "sftp"])
def test_an_upload_the_asset_refuses_is_audited_as_a_failure_with_nothing_moved(
    gateway: Gateway, content: Callable[[int], tuple[Path, str]], client: str
) -> None:
    local, _ = content(1 * MB)
    full = Path("/dev/full")  # on the asset: every write fails with "no space left"
    before = len(gateway.transfer_events("sftp.write", full, count=0))
    if client == "scp-O":
        argv = [
            "scp",
            "-O",
            "-q",
            *openssh_options(gateway),
            str(local),
            f"{ROUTE}@127.0.0.1:{full}",
        ]
        stdin = None
    else:
        argv = ["sftp", "-q", *openssh_options(gateway), "-b", "-", f"{ROUTE}@127.0.0.1"]
        stdin = f"put {local} {full}\n"
    env = {k: v for k, v in clean_env(HOME=str(gateway.work)).items() if not k.startswith("SSH_")}
    refused = subprocess.run(
        argv,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
        stdin=None if stdin else subprocess.DEVNULL,
        check=False,
    )
    assert refused.returncode != 0

    written = gateway.transfer_events("sftp.write", full, count=before + 1)[before:]
    assert [e["result"] for e in written] == ["failure"]
    assert isinstance(w := written[0]["detail"], dict)
    assert w["size"] == 0 and w["sent"] > 0 and w["error"]


@pytest.mark.parametrize("size", [1 * MB, 50 * MB], ids=["1MiB", "50MiB"])
def test_asyncssh_copy_on_the_asset_with_defaults(
    gateway: Gateway, content: Callable[[int], tuple[Path, str]], tmp_path: Path, size: int
) -> None:
    """``copy()`` asks which ranges hold data (asyncssh's sparse-file extension), then has the
    server copy them (copy-data): both through the bridge, read and write audited."""
    local, digest = content(size)
    source, copied = tmp_path / "source.bin", tmp_path / "copied.bin"
    source.write_bytes(local.read_bytes())  # already on the asset

    async def copy() -> None:
        async with connect(gateway) as conn, conn.start_sftp_client() as sftp:
            await sftp.copy(str(source), str(copied))

    asyncio.run(asyncio.wait_for(copy(), 120))

    assert sha256(copied) == digest
    [written] = gateway.transfer_events("sftp.write", copied)
    assert written["result"] == "success"
    assert isinstance(w := written["detail"], dict)
    assert (w["size"], w["sha256"]) == (size, digest)
    [read] = gateway.transfer_events("sftp.read", source)
    assert isinstance(r := read["detail"], dict)
    assert (read["result"], r["size"], r["sha256"]) == ("success", size, digest)
