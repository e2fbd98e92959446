"""The relay's per-packet savings (gateway/ssh/fastpath.py), seen from real OpenSSH peers.

No empty MSG_IGNORE before every packet under AES-GCM (asyncssh's CBC countermeasure) but
still under a non-AEAD cipher, packets coalesced into fewer write syscalls, and the bytes
arrive exactly. The write count is the gateway process's ``syscw`` (/proc/<pid>/io): libuv
writes sockets with write/writev, so it counts socket writes and recording writes.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from gateway.ssh import fastpath
from tests.ssh_gateway import Logins, running_gateway
from tests.sshd_target import SSHDTarget

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
