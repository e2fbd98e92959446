"""Limits before authentication, against the real gateway process.

Acceptance: "a client declaring a 4 GiB packet, and 300 slow unauthenticated connections,
leave memory bounded and other users unaffected". Hostile connections come from 127.0.0.2
and up (all of 127/8 is loopback on Linux), the real user (OpenSSH ssh) from 127.0.0.1.
The gate's policy itself is tested as a table first, without processes.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import pytest

from gateway.ssh import admission
from gateway.ssh.admission import RefusalLog, UnauthenticatedGate, source_key
from tests.ssh_gateway import Logins, rss_bytes, running_gateway, settle_rss
from tests.sshd_target import SSHDTarget
from tests.test_ssh_jump import Gateway

MIB = 1 << 20
VERSION = b"SSH-2.0-slowpoke_1.0\r\n"


# -- the gate's policy -------------------------------------------------------------------
class Conn:
    def __init__(self, name: str) -> None:
        self.name = name
        self.evicted = False

    def evict(self) -> None:
        self.evicted = True


@pytest.mark.parametrize(
    "address,key",
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9%eth0", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("", ""),
        ("not-an-address", "not-an-address"),
    ],
)
def test_source_key(address: str, key: str) -> None:
    assert source_key(address) == key


# Each step: (source, expected outcome). Outcomes: "in", "source_cap", "cap", "in+evict <src>"
# (admitted, and the oldest pending connection of <src> is evicted). Limit 4, per source 3.
GATE_CASES = {
    "per-source cap": [("a", "in"), ("a", "in"), ("a", "in"), ("a", "source_cap")],
    "quiet source replaces the busiest": [
        ("a", "in"), ("a", "in"), ("a", "in"), ("b", "in"), ("c", "in+evict a"),
        ("d", "in+evict a"),  # a: 1, b: 1, c: 1, d: 1 now
        ("e", "cap"),  # everyone holds one: nothing to tell them apart
    ],
    "no swap between near equals": [
        ("a", "in"), ("a", "in"), ("b", "in"), ("b", "in"), ("b", "cap"),
        ("c", "in+evict a"),
    ],
}  # fmt: skip


@pytest.mark.parametrize("steps", GATE_CASES.values(), ids=GATE_CASES.keys())
def test_gate_policy(steps: list[tuple[str, str]]) -> None:
    async def run() -> None:
        counted: list[str] = []
        gate = UnauthenticatedGate(4, 3, counted.append)
        held: list[Conn] = []
        for i, (source, expected) in enumerate(steps):
            conn = Conn(f"{source}{i}")
            before = [c for c in held if not c.evicted]
            admitted = gate.admit(source, conn)
            evicted = [c for c in before if c.evicted]
            if expected.startswith("in"):
                assert admitted, (i, source)
                held.append(conn)
                victim = expected.partition("evict ")[2]
                assert [c.name[0] for c in evicted] == ([victim] if victim else [])
                if victim:  # the oldest of that source
                    oldest = next(c for c in before if c.name.startswith(victim))
                    assert evicted == [oldest]
                    gate.release(victim, oldest)  # its connection_lost: must not count twice
            else:
                assert not admitted and not evicted, (i, source)
                assert counted[-1] == f"unauthenticated_{expected}"
            assert gate.pending == len([c for c in held if not c.evicted]) <= 4
        for conn in held:
            gate.release(conn.name[0], conn)
        assert gate.pending == 0

    asyncio.run(run())


def test_refusals_are_logged_once_then_summarised(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    reports: list[tuple[str, Mapping[str, object]]] = []

    def report(busiest: str, summary: Mapping[str, object]) -> None:
        reports.append((busiest, summary))

    async def run() -> None:
        log = RefusalLog(interval=60, clock=lambda: now[0], report=report)
        for i in range(500):
            now[0] = i * 0.1  # 50 s of refusals
            log.refused("unauthenticated_source_cap", f"192.0.2.{i % 3}")
        now[0] = 61
        log.refused("unauthenticated_cap", "198.51.100.1")

    with caplog.at_level("WARNING", logger=admission.__name__):
        asyncio.run(run())
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "dropped 1 " in lines[0]
    assert "dropped 500 " in lines[1] and "unauthenticated_source_cap: 499" in lines[1]
    assert "192.0.2.1 (167)" in lines[1]
    # The same two go to the audit trail (ssh.connection.refused), and nothing else.
    assert [busiest for busiest, _ in reports] == ["192.0.2.0", "192.0.2.1"]
    assert [summary for _, summary in reports] == [
        {"channel": "ssh", "count": 1, "reasons": {"unauthenticated_source_cap": 1},
         "sources": [{"source": "192.0.2.0", "count": 1}], "distinct_sources": 1},
        {"channel": "ssh", "count": 500,
         "reasons": {"unauthenticated_cap": 1, "unauthenticated_source_cap": 499},
         "sources": [{"source": "192.0.2.1", "count": 167}, {"source": "192.0.2.2", "count": 166},
                     {"source": "192.0.2.0", "count": 166},
                     {"source": "198.51.100.1", "count": 1}],
         "distinct_sources": 4},
    ]  # fmt: skip


# -- against the running gateway ---------------------------------------------------------
class Flood:
    """Raw TCP connections to the gateway that dribble a version line, one byte a round."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.open: list[tuple[socket.socket, int]] = []  # (socket, bytes of VERSION sent)
        self.closed_by_gateway = 0

    def connect(self, count: int, sources: list[str]) -> None:
        for i in range(count):
            sock = socket.socket()
            sock.bind((sources[i % len(sources)], 0))
            sock.settimeout(10)
            sock.connect(("127.0.0.1", self.port))
            sock.setblocking(False)
            self.open.append((sock, 0))

    def round(self) -> None:
        """Read what the gateway sent, note who it closed, send each one more byte."""
        still: list[tuple[socket.socket, int]] = []
        for sock, sent in self.open:
            try:
                while sock.recv(65536):
                    pass
                closed = True  # recv returned b"": the gateway closed it
            except BlockingIOError:
                closed = False
            except OSError:
                closed = True
            if not closed and sent < len(VERSION):
                try:
                    sent += sock.send(VERSION[sent : sent + 1])
                except BlockingIOError:
                    pass
                except OSError:
                    closed = True
            if closed:
                sock.close()
                self.closed_by_gateway += 1
            else:
                still.append((sock, sent))
        self.open = still

    def rounds(self, seconds: float, every: float = 0.5) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.round()
            time.sleep(every)

    def close(self) -> None:
        for sock, _ in self.open:
            sock.close()
        self.open = []


def metric(gw: Gateway, reason: str) -> float:
    return gw.server.metric("conduit_ssh_connections_refused_total", "reason", reason)


def audited_refusals(gw: Gateway) -> Counter[str]:
    """Refusals by reason in the audit trail's ssh.connection.refused summaries (read once
    the gateway has stopped: it writes the last interval's summary as it shuts down)."""
    total: Counter[str] = Counter()
    for event in gw.audit():
        if event["action"] == "ssh.connection.refused":
            assert event["actor"] == "anonymous" and event["result"] == "failure"
            detail = event["detail"]
            assert isinstance(detail, dict)
            total.update(detail["reasons"])
    return total


def user_works(gw: Gateway, logins: Logins) -> None:
    user, code = logins.take()
    started = time.monotonic()
    result = gw.ssh(f"{user}+target", "echo still-$((6*7))", code, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "still-42\n"
    assert time.monotonic() - started < 15


@pytest.mark.parametrize("declared", [0xFFFFFFFF, 0x80000000, 64 * MIB])
def test_declared_huge_packet_is_dropped_without_allocating(
    sshd: SSHDTarget, tmp_path: Path, declared: int
) -> None:
    with running_gateway(sshd, tmp_path, users=1) as gw:
        pid = gw.server.proc.pid
        base = settle_rss(pid, 0.5)
        durations = []
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", gw.ssh_port), timeout=10) as sock:
                assert sock.recv(256).startswith(b"SSH-2.0-")
                # Before KEXINIT nothing is encrypted: length, padding length, then nothing.
                sent = time.monotonic()
                sock.sendall(VERSION + declared.to_bytes(4, "big") + bytes(12))
                while sock.recv(65536):  # the gateway's KEXINIT, its disconnect, then EOF
                    assert time.monotonic() - sent < 5, "the connection was kept"
                durations.append(time.monotonic() - sent)
        growth = rss_bytes(pid) - base
        print(f"dropped in at most {max(durations) * 1000:.0f} ms; RSS +{growth / MIB:.1f} MiB")
        assert growth < 20 * MIB
        user_works(gw, Logins(gw))
        assert gw.server.proc.poll() is None
        assert metric(gw, "protocol_error") == 20
        assert gw.server.terminate() == 0  # writes the last summary (serving() would kill)
    assert audited_refusals(gw) == {"protocol_error": 20}


def test_slow_connections_from_one_source_leave_others_unaffected(
    sshd: SSHDTarget, tmp_path: Path
) -> None:
    with running_gateway(sshd, tmp_path, users=1) as gw:
        pid = gw.server.proc.pid
        base = settle_rss(pid, 0.5)
        flood = Flood(gw.ssh_port)
        try:
            flood.connect(300, ["127.0.0.2"])
            flood.rounds(3)
            held = len(flood.open)
            growth = rss_bytes(pid) - base
            user_works(gw, Logins(gw))  # while they are held
            flood.rounds(1)
            assert len(flood.open) == held  # still held: the real user took no one's place
        finally:
            flood.close()
        refused = metric(gw, "unauthenticated_source_cap")
        assert gw.server.terminate() == 0
    print(f"held {held}, refused {refused:.0f}; RSS +{growth / MIB:.1f} MiB")
    assert held == 50  # [ssh] max_unauthenticated_per_source
    assert refused == 250
    # All 250, though the flood took under a minute: the shutdown wrote the last summary.
    assert audited_refusals(gw)["unauthenticated_source_cap"] == 250
    [first, *_] = [e for e in gw.audit() if e["action"] == "ssh.connection.refused"]
    assert first["source"] == "127.0.0.2"
    assert growth < 50 * MIB
    summaries = [line for line in gw.server.stderr.splitlines() if "unauthenticated" in line]
    assert 1 <= len(summaries) <= 2, summaries  # aggregated, not one line per refusal


def test_flood_from_many_sources_fills_the_cap_and_a_quiet_source_still_gets_in(
    sshd: SSHDTarget, tmp_path: Path
) -> None:
    with running_gateway(sshd, tmp_path, users=1) as gw:
        pid = gw.server.proc.pid
        base = settle_rss(pid, 0.5)
        flood = Flood(gw.ssh_port)
        try:
            # 30 sources in turn: 10 hold 4 each, 20 hold 3, and then the cap is reached.
            flood.connect(300, [f"127.0.0.{i}" for i in range(10, 40)])
            flood.rounds(3)
            held = len(flood.open)
            growth = rss_bytes(pid) - base
            user_works(gw, Logins(gw))  # 127.0.0.1 holds none: it takes a busy one's place
            flood.rounds(1)
            after = len(flood.open)
        finally:
            flood.close()
        refused, evicted = metric(gw, "unauthenticated_cap"), metric(gw, "unauthenticated_evicted")
        assert gw.server.terminate() == 0
    print(
        f"held {held} (cap 100), refused {refused:.0f}, evicted {evicted:.0f} for the user;"
        f" RSS +{growth / MIB:.1f} MiB, {growth / held / 1024:.0f} KiB per held connection"
    )
    assert held == 100  # [ssh] max_unauthenticated
    assert refused == 200  # sources holding 3 or 4 are equals: newcomers among them wait
    assert evicted == 1 and after == 99
    audited = audited_refusals(gw)
    assert audited["unauthenticated_cap"] == 200 and audited["unauthenticated_evicted"] == 1
    assert growth < 50 * MIB


def test_held_connections_cost_little_and_the_login_timeout_ends_them(
    sshd: SSHDTarget, tmp_path: Path
) -> None:
    caps = {
        "CONDUIT_SSH__MAX_UNAUTHENTICATED": "1000",
        "CONDUIT_SSH__MAX_UNAUTHENTICATED_PER_SOURCE": "1000",
        "CONDUIT_SSH__LOGIN_TIMEOUT_SECONDS": "6",
    }
    with running_gateway(sshd, tmp_path, users=1, **caps) as gw:
        pid = gw.server.proc.pid
        base = settle_rss(pid, 0.5)
        flood = Flood(gw.ssh_port)
        try:
            started = time.monotonic()
            flood.connect(300, ["127.0.0.2"])
            flood.rounds(2)
            held = len(flood.open)
            growth = rss_bytes(pid) - base
            while flood.open and time.monotonic() - started < 15:
                flood.rounds(0.5)
            ended = time.monotonic() - started
            left = len(flood.open)
        finally:
            flood.close()
        user_works(gw, Logins(gw))
        timed_out = metric(gw, "login_timeout")
        assert gw.server.terminate() == 0
    per_connection = growth / max(held, 1)
    print(f"held {held}: RSS +{growth / MIB:.1f} MiB, {per_connection / 1024:.0f} KiB each;"
          f" all closed after {ended:.1f} s")  # fmt: skip
    assert held == 300
    assert per_connection < 256 * 1024
    assert left == 0 and ended < 12
    assert timed_out == 300
    assert audited_refusals(gw) == {"login_timeout": 300}
