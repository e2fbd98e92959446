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
