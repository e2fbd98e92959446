"""Flow control through the gateway with real peers (shared/SSH-RELAY.md, trap 1).

The asset (real sshd) writes as fast as it can while the vendor (real OpenSSH ssh) is read
slowly: the gateway must pass the back-pressure on instead of buffering, so its memory stays
flat. And a client that stops reading early (``ssh gw 'cat big' | head``) must end promptly.
"""

from __future__ import annotations

import select
import subprocess
import time
from pathlib import Path

from tests.ssh_gateway import Logins, rss_bytes, running_gateway, settle_rss
from tests.sshd_target import SSHDTarget

MIB = 1 << 20
READ_RATE = 4 * MIB  # bytes per second: a vendor on a slow link, or a slow terminal
READ_SECONDS = 8.0
MAX_GROWTH = 150 * MIB  # the gateway's RSS may grow this much at most while the reader lags
ABORT_GROWTH = 600 * MIB  # stop early rather than let a regression eat the machine


def _readable(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return bool(ready)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


def test_slow_reader_leaves_gateway_memory_bounded(sshd: SSHDTarget, tmp_path: Path) -> None:
    with running_gateway(sshd, tmp_path, users=2) as gw:
        logins = Logins(gw)
        pid = gw.server.proc.pid
        user, code = logins.take()
        warm = gw.ssh(f"{user}+target", "head -c 4M /dev/zero", code)  # first-use allocations
        assert warm.returncode == 0, warm.stderr
        base = peak = settle_rss(pid)
        user, code = logins.take()
        proc = gw.background(f"{user}+target", "head -c 2000M /dev/zero", code)
        assert proc.stdout is not None
        received, started = 0, time.monotonic()
        try:
            while (elapsed := time.monotonic() - started) < READ_SECONDS:
                if received:  # logging in briefly takes 64 MiB (argon2): not what is measured
                    peak = max(peak, rss_bytes(pid))
                if peak - base > ABORT_GROWTH:
                    break
                if received > READ_RATE * elapsed:
                    time.sleep(0.02)
                    continue
                if _readable(proc, 0.5):
                    chunk = proc.stdout.read1(64 * 1024)
                    if not chunk:
                        break
                    received += len(chunk)
            peak = max(peak, rss_bytes(pid))
        finally:
            _stop(proc)
    growth = peak - base
    figures = (
        f"read {received / MIB:.1f} MiB in {elapsed:.1f} s; gateway RSS {base / MIB:.0f} MiB"
        f" -> peak {peak / MIB:.0f} MiB (+{growth / MIB:.0f} MiB)"
    )
    print(figures)
    assert received > READ_RATE * READ_SECONDS / 4, f"data hardly flowed: {figures}"
    assert growth < MAX_GROWTH, f"the gateway buffered what the reader did not take: {figures}"


def test_slow_asset_leaves_gateway_memory_bounded(sshd: SSHDTarget, tmp_path: Path) -> None:
    """The other leg: the vendor uploads as fast as it can, the asset reads ~4 MiB/s."""
    slow_sink = (
        "echo ready; timeout 15 sh -c 'while head -c 131072 >/dev/null; do sleep 0.03; done'"
    )
    with running_gateway(sshd, tmp_path, users=2) as gw:
        logins = Logins(gw)
        pid = gw.server.proc.pid
        user, code = logins.take()
        warm = gw.ssh(f"{user}+target", "head -c 4M /dev/zero", code)
        assert warm.returncode == 0, warm.stderr
        base = peak = settle_rss(pid)
        user, code = logins.take()
        source = subprocess.Popen(["head", "-c", "4000M", "/dev/zero"], stdout=subprocess.PIPE)
        proc = subprocess.Popen(gw.argv(f"{user}+target", slow_sink), env=gw.askpass(user, code),
                                stdin=source.stdout, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        assert source.stdout is not None and proc.stdout is not None
        source.stdout.close()  # ssh holds it now
        try:
            assert _readable(proc, 30) and proc.stdout.readline() == b"ready\n"
            started = time.monotonic()
            while time.monotonic() - started < READ_SECONDS and peak - base < ABORT_GROWTH:
                peak = max(peak, rss_bytes(pid))
                time.sleep(0.02)
        finally:
            _stop(proc)
            source.kill()
            source.wait(timeout=10)
        ends = [e for e in gw.audit_until("session.end") if e["action"] == "session.end"]
    sent = int(ends[-1]["detail"]["bytes_up"]) if ends else 0  # type: ignore[index]
    growth = peak - base
    figures = (
        f"asset took {sent / MIB:.1f} MiB in {READ_SECONDS:.0f} s; gateway RSS"
        f" {base / MIB:.0f} MiB -> peak {peak / MIB:.0f} MiB (+{growth / MIB:.0f} MiB)"
    )
    print(figures)
    assert sent > READ_RATE * READ_SECONDS / 4, f"data hardly flowed: {figures}"
    assert growth < MAX_GROWTH, f"the gateway buffered what the asset did not take: {figures}"


def test_client_closing_early_ends_promptly(sshd: SSHDTarget, tmp_path: Path) -> None:
    """``ssh gw 'cat /dev/zero | head -c 50M' | head -c 1M``, several times: no hang."""
    with running_gateway(sshd, tmp_path, users=3) as gw:
        logins = Logins(gw)
        durations = []
        for run in range(6):
            user, code = logins.take()
            command = "cat /dev/zero" if run % 2 else "cat /dev/zero | head -c 50M"
            proc = gw.background(f"{user}+target", command, code)
            assert proc.stdout is not None
            try:
                received, deadline = 0, time.monotonic() + 30
                while received < 2 * MIB and time.monotonic() < deadline:
                    time.sleep(0.01)  # a slow reader first, so the gateway has a backlog
                    if _readable(proc, 1.0):
                        chunk = proc.stdout.read1(min(32 * 1024, 2 * MIB - received))
                        if not chunk:
                            break
                        received += len(chunk)
                assert received == 2 * MIB
                proc.stdout.close()  # what `head -c 1M` does once it has its megabyte
                closed = time.monotonic()
                proc.wait(timeout=30)
                durations.append(time.monotonic() - closed)
            finally:
                _stop(proc)
        assert gw.server.proc.poll() is None
    print("seconds from close to exit:", [f"{d:.2f}" for d in durations])
    assert max(durations) < 10, durations


def test_fast_output_waits_for_the_recording_instead_of_ending_the_session(
    sshd: SSHDTarget, tmp_path: Path
) -> None:
    """The asset writes faster than the recording's writer thread can seal and store; the
    relay must wait for the recording (bounded queue), not overflow it: an overflow ends
    the session as recording_failed, which bench/ssh_relay.py saw at 256 MiB and more."""
    size = 768 * MIB
    with running_gateway(sshd, tmp_path, users=1) as gw:
        user, code = Logins(gw).take()
        proc = gw.background(f"{user}+target", f"head -c {size} /dev/zero", code)
        assert proc.stdout is not None
        received = 0
        try:
            while chunk := proc.stdout.read1(1 << 20):
                received += len(chunk)
            status = proc.wait(timeout=120)
        finally:
            _stop(proc)
        ends = [e for e in gw.audit_until("session.end") if e["action"] == "session.end"]
    assert ends, "the session ended without session.end"
    detail = ends[-1]["detail"]
    assert isinstance(detail, dict)
    assert detail["reason"] == "closed", detail
    assert (status, received) == (0, size)
    assert detail["bytes_down"] == size
