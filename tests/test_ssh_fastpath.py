"""The relay's per-packet savings (gateway/ssh/fastpath.py), seen from real OpenSSH peers.

No empty MSG_IGNORE before every packet under AES-GCM (asyncssh's CBC countermeasure) but
still under a non-AEAD cipher, packets coalesced into fewer write syscalls, and the bytes
arrive exactly. The write count is the gateway process's ``syscw`` (/proc/<pid>/io): libuv
writes sockets with write/writev, so it counts socket writes and recording writes.

The framing fast paths (received packets decrypted in place, sent ones sealed in one
buffer) must keep asyncssh's behaviour where it matters: every byte through key
re-exchanges started by either side, and a packet whose tag does not verify ends the
connection without delivering anything.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from gateway.ssh import fastpath
from tests import support
from tests.ssh_gateway import Logins, running_gateway
from tests.sshd_target import SSHDTarget
from tests.support import kbdint_client
from tests.test_ssh_jump import PASSWORD

MIB = 1 << 20
IGNORE_SEEN = b"Received SSH2_MSG_IGNORE"  # OpenSSH's debug3 line for each one received


def _write_syscalls(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise AssertionError(f"no syscw for {pid}")


def test_install_is_idempotent_and_patches_asyncssh() -> None:
    from asyncssh.connection import SSHConnection

    assert fastpath.install() is True
    first = SSHConnection.send_packet
    assert fastpath.install() is True
    assert SSHConnection.send_packet is first  # not wrapped twice
    assert fastpath.installed()


def test_no_ignore_packets_under_gcm_but_kept_for_ctr(sshd: SSHDTarget, tmp_path: Path) -> None:
    # The target hashes what it sends on stdout and says the hash on stderr (where -vvv
    # debug lines go too): the relayed bytes must be exactly what it sent.
    command = ('f=$(mktemp); head -c 3M /dev/urandom >"$f"; sha256sum <"$f" >&2; cat "$f"; '
               'rm -f "$f"')  # fmt: skip
    with running_gateway(sshd, tmp_path, users=2) as gw:
        logins = Logins(gw)
        runs = {}
        for cipher in ("aes128-gcm@openssh.com", "aes128-ctr"):
            user, code = logins.take()
            argv = gw.argv(f"{user}+target", command, "-vvv", "-c", cipher)
            done = subprocess.run(argv, env=gw.askpass(user, code), capture_output=True,
                                  timeout=60, stdin=subprocess.DEVNULL, check=False)  # fmt: skip
            assert done.returncode == 0, done.stderr[-2000:]
            assert len(done.stdout) == 3 * MIB
            assert hashlib.sha256(done.stdout).hexdigest().encode() in done.stderr
            runs[cipher] = done.stderr
        assert b"cipher: aes128-gcm@openssh.com" in runs["aes128-gcm@openssh.com"]
        assert runs["aes128-gcm@openssh.com"].count(IGNORE_SEEN) == 0
        assert runs["aes128-ctr"].count(IGNORE_SEEN) > 10  # asyncssh's default is kept there


def test_bulk_output_leaves_in_fewer_writes_than_packets(sshd: SSHDTarget, tmp_path: Path) -> None:
    size = 64 * MIB
    with running_gateway(sshd, tmp_path, users=2) as gw:
        logins = Logins(gw)
        pid = gw.server.proc.pid
        user, code = logins.take()
        before = _write_syscalls(pid)
        done = subprocess.run(gw.argv(f"{user}+target", f"head -c {size} /dev/zero"),
                              env=gw.askpass(user, code), capture_output=True, timeout=120,
                              stdin=subprocess.DEVNULL, check=False)  # fmt: skip
        writes = _write_syscalls(pid) - before
        assert done.returncode == 0, done.stderr[-2000:]
        assert len(done.stdout) == size and done.stdout.count(0) == size
        # 32 KiB packets: 32 per MiB to the vendor, plus 32 empty ignore packets before them
        # without the fast path, plus the recording's chunk writes (16 per MiB of 64 KiB).
        per_mib = writes / (size / MIB)
        assert per_mib < 40, f"{per_mib:.1f} write syscalls per MiB relayed"


def _delayed_acks() -> int:
    """Linux's count of ACKs it held back and sent late (TcpExt DelayedACKs, machine-wide)."""
    header, values = Path("/proc/net/netstat").read_text().splitlines()[:2]
    return dict(zip(header.split()[1:], map(int, values.split()[1:]), strict=True))["DelayedACKs"]


def test_short_commands_are_not_held_by_delayed_acks(sshd: SSHDTarget, tmp_path: Path) -> None:
    """``ssh gw true`` (OpenSSH without TCP_NODELAY, as for every non-interactive command)
    sends small packets back to back; the gateway acknowledges them at once instead of
    letting Nagle hold the next one for up to 40 ms. The count is machine-wide, hence the
    margin: 10 logins made 42-43 delayed ACKs here without the quick ACKs, 14-20 with
    them (the rest are the OpenSSH client's and sshd's own)."""
    logins_made = 10
    with running_gateway(sshd, tmp_path, users=logins_made // 2) as gw:
        logins = Logins(gw)
        before = _delayed_acks()
        for _ in range(logins_made):
            user, code = logins.take()
            done = gw.ssh(f"{user}+target", "true", code)
            assert done.returncode == 0, done.stderr
        delayed = _delayed_acks() - before
    assert delayed < 3 * logins_made, f"{delayed} delayed ACKs over {logins_made} logins"


def test_rekeying_client_relays_every_byte_both_ways(sshd: SSHDTarget, tmp_path: Path) -> None:
    """OpenSSH re-keys every 256 KiB (RekeyLimit) while 2 MiB go up and 3 MiB come back:
    packets before, during and after each exchange take asyncssh's path or the fast one."""
    upload = os.urandom(2 * MIB)
    command = ('sha256sum >&2; f=$(mktemp); head -c 3M /dev/urandom >"$f"; sha256sum <"$f" >&2; '
               'cat "$f"; rm -f "$f"')  # fmt: skip
    with running_gateway(sshd, tmp_path, users=1) as gw:
        user, code = Logins(gw).take()
        argv = gw.argv(f"{user}+target", command, "-v", "-o", "RekeyLimit=256K",
                       "-c", "aes128-gcm@openssh.com")  # fmt: skip
        done = subprocess.run(argv, env=gw.askpass(user, code), input=upload,
                              capture_output=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert hashlib.sha256(upload).hexdigest().encode() in done.stderr  # what the asset got
    assert len(done.stdout) == 3 * MIB
    assert hashlib.sha256(done.stdout).hexdigest().encode() in done.stderr
    assert done.stderr.count(b"SSH2_MSG_NEWKEYS received") >= 10  # the first and re-keys


def test_a_packet_that_fails_its_tag_ends_the_connection(sshd: SSHDTarget, tmp_path: Path) -> None:
    """One flipped ciphertext bit after login: the gateway must refuse the packet (and the
    connection), deliver nothing of it, say why the session ended, and go on serving."""

    async def tamper(port: int, user: str, code: str) -> tuple[bytes, bool]:
        conn, _ = await asyncssh.create_connection(
            kbdint_client(PASSWORD, code), "127.0.0.1", port, username=f"{user}+target",
            known_hosts=None, client_keys=None, agent_path=None,
            preferred_auth=["keyboard-interactive"], encryption_algs=["aes128-gcm@openssh.com"],
        )  # fmt: skip
        async with conn:
            process = await conn.create_process("cat", encoding=None)
            process.stdin.write(b"first\n")
            got = await asyncio.wait_for(process.stdout.readline(), 10)
            assert got == b"first\n"
            send = conn._send  # noqa: SLF001 - the test corrupts what the client sends

            def corrupt_once(data: bytes) -> None:
                flipped = bytearray(data)
                flipped[len(flipped) // 2] ^= 0x01
                conn._send = send  # type: ignore[method-assign]  # noqa: SLF001
                send(bytes(flipped))

            conn._send = corrupt_once  # type: ignore[method-assign]  # noqa: SLF001
            process.stdin.write(b"tampered\n")
            rest = b""
            try:
                rest = await asyncio.wait_for(process.stdout.read(), 10)
            except (asyncssh.Error, ConnectionError):
                pass
            closed = await asyncio.wait_for(conn.wait_closed(), 10) is None
            return rest, closed

    with running_gateway(sshd, tmp_path, users=2) as gw:
        logins = Logins(gw)
        user, code = logins.take()
        rest, closed = asyncio.run(tamper(gw.ssh_port, user, code))
        assert closed
        assert b"tampered" not in rest
        ends = [e for e in gw.audit_until("session.end") if e["action"] == "session.end"]
        assert [e["detail"]["reason"] for e in ends] == ["client_integrity_failure"]  # type: ignore[index]
        alerts = gw.server.metric("conduit_security_alerts_total", "kind",
                                  "client_integrity_failure")  # fmt: skip
        assert alerts == 1
        user, code = logins.take()
        again = gw.ssh(f"{user}+target", "echo still-serving", code)
        assert again.returncode == 0 and again.stdout == "still-serving\n", again.stderr


def test_asyncssh_peers_rekeying_both_ways_keep_every_byte(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Both ends in this process with the fast path, each re-keying every 128 KiB sent:
    data in writes of 1 byte to 64 KiB, echoed on stdout and stderr (extended data)."""
    assert fastpath.install()
    payload = os.urandom(3 * MIB)

    class Open(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return False  # no authentication: only the transport is under test

    async def handle(process: asyncssh.SSHServerProcess[bytes]) -> None:
        while chunk := await process.stdin.read(65536):
            process.stdout.write(chunk)
            process.stderr.write(chunk[:1])
        process.exit(0)

    async def run() -> tuple[bytes, bytes]:
        options: dict[str, Any] = {
            "encryption_algs": ["aes128-gcm@openssh.com"], "rekey_bytes": 128 * 1024,
        }  # fmt: skip
        server = await asyncssh.create_server(
            Open, "127.0.0.1", 0, process_factory=handle, encoding=None,
            server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")], **options,
        )  # fmt: skip
        try:
            async with asyncssh.connect(
                "127.0.0.1", server.get_port(), known_hosts=None, username="u",
                client_keys=None, agent_path=None, **options,
            ) as conn:  # fmt: skip
                process = await conn.create_process(encoding=None)

                async def feed() -> None:
                    sent, size = 0, 1
                    while sent < len(payload):
                        process.stdin.write(payload[sent : sent + size])
                        sent += size
                        size = size * 7 % 65536 + 1
                        await process.stdin.drain()
                    process.stdin.write_eof()

                feeding = asyncio.ensure_future(feed())
                out = await process.stdout.read()
                err = await process.stderr.read()
                await feeding
                return out, err
        finally:
            server.close()

    with caplog.at_level(logging.DEBUG, logger="asyncssh"):
        out, err = asyncio.run(run())
    assert out == payload
    assert len(err) >= len(payload) // 65536 and payload.startswith(err[:1])  # one per read
    exchanges = sum("Completed key exchange" in r.getMessage() for r in caplog.records)
    # Each exchange is logged by both ends; either end's 128 KiB sent starts one (44 here).
    assert exchanges >= len(payload) // (128 * 1024)


# Runs ``conduit`` (or a probe) with asyncssh reporting another version than the one the
# fast path was verified against. gateway is imported first: it filters asyncssh's DSA
# deprecation warning, which importing asyncssh alone would print.
OTHER_VERSION = "2.24.2"
_AS_OTHER_VERSION = (
    f"import runpy, sys; import gateway, asyncssh; asyncssh.__version__ = {OTHER_VERSION!r}; "
)


def test_install_on_another_asyncssh_version_patches_nothing_and_warns_once() -> None:
    probe = _AS_OTHER_VERSION + (
        "import logging; logging.basicConfig(format='%(levelname)s %(name)s %(message)s'); "
        "from asyncssh.connection import SSHConnection; "
        "from asyncssh.crypto.cipher import GCMCipher; "
        "from asyncssh.packet import SSHPacketLogger; "
        "from gateway.ssh import fastpath; "
        "before = [dict(vars(c)) for c in (SSHConnection, GCMCipher, SSHPacketLogger)]; "
        "print(fastpath.install(), fastpath.install(), fastpath.installed()); "
        "after = [dict(vars(c)) for c in (SSHConnection, GCMCipher, SSHPacketLogger)]; "
        "print('unchanged' if before == after else 'patched')"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "False", "unchanged"]
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING ")]
    assert len(warnings) == 1, done.stderr
    assert OTHER_VERSION in warnings[0] and fastpath.VERIFIED_ASYNCSSH in warnings[0]
    assert "Traceback" not in done.stderr


def test_the_relay_works_without_the_fast_path_on_another_asyncssh_version(
    sshd: SSHDTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncssh's own path relays every byte; its MSG_IGNORE before each packet under GCM
    shows that the fast path is off."""
    launcher = (
        _AS_OTHER_VERSION
        + "sys.argv[0] = 'conduit'; runpy.run_module('gateway', run_name='__main__')"
    )
    monkeypatch.setattr(support, "CONDUIT", [sys.executable, "-c", launcher])
    command = ('f=$(mktemp); head -c 1M /dev/urandom >"$f"; sha256sum <"$f" >&2; cat "$f"; '
               'rm -f "$f"; exit 7')  # fmt: skip
    with running_gateway(sshd, tmp_path, users=1) as gw:
        user, code = Logins(gw).take()
        argv = gw.argv(f"{user}+target", command, "-vvv", "-c", "aes128-gcm@openssh.com")
        done = subprocess.run(argv, env=gw.askpass(user, code), capture_output=True,
                              timeout=60, stdin=subprocess.DEVNULL, check=False)  # fmt: skip
        assert gw.server.terminate() == 0
        log_text = gw.server.stderr
    assert done.returncode == 7, done.stderr[-2000:]
    assert len(done.stdout) == MIB
    assert hashlib.sha256(done.stdout).hexdigest().encode() in done.stderr
    assert done.stderr.count(IGNORE_SEEN) > 10  # asyncssh's path, not the fast one
    warnings = [line for line in log_text.splitlines() if "fast path" in line]
    assert len(warnings) == 1, log_text
    assert OTHER_VERSION in warnings[0] and fastpath.VERIFIED_ASYNCSSH in warnings[0]
    assert "Traceback" not in log_text
