"""Benchmark the SSH relay (issue 6): every figure beside its OpenSSH baseline from this run.

A real OpenSSH sshd on 127.0.0.1 is the asset and, for the baselines, the jump host; a real
``conduit serve`` relays to it with recording ON (the product). Paths measured:
* ``direct``: ``ssh target`` (no hop);
* ``proxyjump``: ``ssh -J jump target`` (OpenSSH's ProxyJump, the standard jump host);
* ``nested``: ``ssh jump 'ssh target ...'`` (the second client runs on the jump host);
* ``relay``: ``ssh user+target@gateway`` through Conduit;
* ``bare`` and ``bare_fastpath`` (bulk and keys): ``bench.bare_relay``, an asyncssh relay
  with no login, policy or recording (the issue's "throwaway asyncssh relay"), stock and
  with the gateway's packet fast path: what asyncssh itself reaches on this machine, so
  ``relay`` vs ``bare_fastpath`` is what the product's own work costs.

Parts (``--only``; default all):
* ``bulk``: OpenSSH client, aes128-gcm, ``cat PAYLOAD`` read to EOF by this process, for two
  payloads of ``--size-mib`` made at start: ``random`` (os.urandom: incompressible) and
  ``text`` (this machine's ``ls -lR /usr`` with CRLF line ends, repeated: realistic terminal
  output), so compression in the recording cannot flatter a figure; MiB/s from the first byte
  to EOF (``mib_s``) and including connect (``wall_mib_s``); medians over ``--repeat``,
  paths interleaved. Gateway CPU ms per MiB from /proc; the relay's recording file size
  over the output (``stored_vs_output``).
* ``connect``: OpenSSH ``ssh ... true`` from spawn to exit, 3 x ``--repeat`` sequential
  samples per path, then ``--parallel`` at once per path (per-connect median, wall, conn/s).
  OpenSSH 9.2 negotiates post-quantum sntrup761x25519 with sshd but asyncssh (the gateway)
  has no sntrup, so the relay's legs use curve25519; ``*_c25519`` baselines force
  curve25519 too, for a like-for-like figure beside the default one (targets use default).
  Three relay logins: ``relay_code`` - a one-time connect code as the password (the portal
  issued it after MFA, which is the fast path the product offers for scripted use; the code
  is made by this bench just before, so portal time is not counted); ``relay_totp`` - password
  + TOTP over keyboard-interactive (argon2id verification in the gateway, ~0.2 s of CPU),
  each login a different user because a TOTP code is single use per account and step. The
  askpass helper (a tiny sh script) runs once for a code and twice for password + TOTP;
  ``relay_cert`` - the vendor's registered key with the 8 h user certificate the gateway
  issued for it after password + TOTP (``conduit ssh-cert``; issued at set-up, not timed).
* ``keys``: keystroke echo round trip in a pty (``cat`` under a tty: the line discipline
  echoes), asyncssh client in this process: write one byte, time until it comes back;
  p50/p99 in microseconds; paths interleaved in rounds, 5 ms between keystrokes. Then the
  relay again right after another relayed session that printed 64 MiB has ended, while
  the gateway verifies and indexes that recording (reported, not a target).
* ``idle``: ``--idle`` interactive pty shells held through the gateway at once (asyncssh
  clients in this process, connect codes, opened ten at a time); gateway VmRSS and threads
  before/held/after, KB per session, gateway CPU while idle. Each session also holds an
  sshd connection and a shell (their PSS is reported for scale). The sshd here allows
  2000 startups/sessions and this process raises its open-files limit to the hard limit,
  which the gateway inherits (reported).
* ``end``: a live session ends after ``sessions kill`` / ``grant revoke`` (the same calls
  the CLI makes, from this process; timed from their commit) and at a grant's valid_until
  (timed from valid_until); medians in ms. Once each through the real ``conduit`` command
  too, timed from its start (includes Python start-up of the CLI).
The last printed line is one JSON object: figures, ratios, and whether each target holds.

Run from the repository root as root (sshd logs in as root by key):
``python -m bench.ssh_relay [--size-mib 1024] [--repeat 3] [--parallel 50] [--idle 1000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import re
import resource
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import sqlalchemy.exc

from bench.ssh_relay_rig import (
    ASSET,
    CIPHER,
    CODE_USER,
    END_USER,
    GATEWAY_ENV,
    Rig,
    build,
    cpu_seconds,
    open_files_limit,
    status_field,
    tree_cpu_seconds,
    tree_pss_kb,
    utc_in,
)
from gateway.sessions import store as live_store
from tests.sshd_target import missing_reason
from tests.support import CONDUIT, clean_env

MIB = 1 << 20
CLOSE_MIB = 64  # output of the session that ends while keys are measured (the index cap)
PARTS = ("bulk", "connect", "keys", "idle", "end")
TARGETS = {
    "bulk_random_relay_vs_proxyjump_min": 1.0,
    "bulk_random_relay_cpu_vs_bare_fastpath_max": 1.5,
    "bulk_random_relay_vs_nested_min": 0.9,
    "bulk_text_relay_vs_proxyjump_min": 1.2,
    "bulk_text_stored_vs_output_max": 0.2,
    "connect_relay_vs_proxyjump_max": 0.5,
    "keys_p50_relay_vs_proxyjump_max": 1.2,
    "keys_p99_relay_us_max": 1500,
    "end_ms_max": 1000,
}
Argv = list[str]
Env = dict[str, str]
Command = tuple[Argv, Env | None]
S = TypeVar("S", bound=asyncssh.SSHClientSession[bytes])


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def rnd(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class ProcessCPU:
    """CPU seconds a process and its children spent since this was made. /proc counts in
    10 ms ticks: sum many samples."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._cpu, self._at = tree_cpu_seconds(pid), time.monotonic()

    def seconds(self) -> float:
        return tree_cpu_seconds(self._pid) - self._cpu


class GatewayCPU(ProcessCPU):
    """The gateway's CPU time (its recordings indexer child included) for some work, less
    what its pollers (policy refresh and kill requests every 0.5 s) use meanwhile."""

    idle_rate = 0.0  # CPU seconds per second when no session is open; set at start

    def __init__(self, rig: Rig) -> None:
        super().__init__(rig.gateway_pid())

    def seconds(self) -> float:
        return max(0.0, super().seconds() - self.idle_rate * (time.monotonic() - self._at))

    @classmethod
    async def calibrate(cls, rig: Rig, seconds: float = 3) -> None:
        meter = cls(rig)
        await asyncio.sleep(seconds)
        cls.idle_rate = meter.seconds() / seconds


class MainThreadCPU:
    """CPU seconds a process's main thread (the event loop) spent since this was made, to
    the nanosecond (/proc/<pid>/task/<pid>/schedstat)."""

    def __init__(self, pid: int) -> None:
        self._path = Path(f"/proc/{pid}/task/{pid}/schedstat")
        self._ns = self._now()

    def _now(self) -> int:
        return int(self._path.read_text().split()[0])

    def seconds(self) -> float:
        return (self._now() - self._ns) / 1e9


async def gateway_quiet(rig: Rig, limit_s: float = 120) -> float:
    """Wait until the gateway has finished earlier sessions' closing work (the recording is
    verified and its text indexed after the client has gone), so it does not run during the
    next measurement. Returns the gateway CPU seconds spent on it."""
    meter = GatewayCPU(rig)
    pid = rig.gateway_pid()
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:  # its child (the recordings indexer) counts too
        before = tree_cpu_seconds(pid)
        await asyncio.sleep(0.5)
        if tree_cpu_seconds(pid) - before < 0.05:  # under 10% of a core: only its pollers
            break
    return meter.seconds()


# -- bulk ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stream:
    """One command's stdout read to EOF: spawned at ``start``, ``first_len`` bytes at
    ``first_at``, ``got`` bytes in all at ``end`` (perf_counter seconds)."""

    start: float
    first_at: float
    first_len: int
    end: float
    got: int


def bulk_once(argv: Argv, env: Env | None, size: int, limit_s: float) -> tuple[float, float]:
    """Read the command's stdout to EOF: (first byte to EOF MiB/s, spawn to EOF MiB/s)."""
    s = bulk_stream(argv, env, size, limit_s)
    data_s = max(s.end - s.first_at, 1e-9)
    return (s.got - s.first_len) / MIB / data_s, s.got / MIB / (s.end - s.start)


def bulk_stream(argv: Argv, env: Env | None, size: int, limit_s: float) -> Stream:
    """Read the command's stdout to EOF (``size`` bytes, exit 0, within ``limit_s``, else
    RuntimeError) and say when its bytes came."""
    buf = bytearray(MIB)
    view = memoryview(buf)
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env
        )
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, MIB)
        timer = threading.Timer(limit_s, proc.kill)  # bounded even if the path hangs
        timer.start()
        got, first_at, first_len = 0, 0.0, 0
        try:
            while n := os.readv(fd, [view]):
                if not got:
                    first_at, first_len = time.perf_counter(), n
                got += n
            end = time.perf_counter()
            code = proc.wait(timeout=30)
        finally:
            timer.cancel()
            proc.stdout.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if got != size or code != 0:
            err.seek(0)
            raise RuntimeError(f"{argv[-1]!r}: {got} of {size} bytes, exit {code}: {err.read()!r}")
    return Stream(start, first_at, first_len, end, got)


PAYLOADS = ("random", "text")


async def connect_codes(rig: Rig, n: int) -> list[str]:
    """``rig.connect_codes``, retried while the gateway's SQLite is busy (it indexes the
    recording of a relay run that just ended); bounded at 60 tries."""
    for _ in range(60):
        try:
            return await rig.connect_codes(n)
        except sqlalchemy.exc.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            await asyncio.sleep(1)
    return await rig.connect_codes(n)


def make_payloads(work: Path, size: int) -> dict[str, Path]:
    """Two files of ``size`` bytes the asset streams with ``cat``: incompressible random
    bytes, and realistic terminal text (``ls -lR /usr`` output of this machine, repeated),
    so that compression in the recording cannot flatter the result."""
    files = {"random": work / "payload-random.bin", "text": work / "payload-text.txt"}
    with files["random"].open("wb") as out:
        left = size
        while left:
            block = os.urandom(min(left, MIB))
            out.write(block)
            left -= len(block)
    listing = subprocess.run(
        ["ls", "-lR", "/usr"], capture_output=True, check=False, timeout=120
    ).stdout.replace(b"\n", b"\r\n")  # as a pty delivers it
    if len(listing) < MIB:
        raise SystemExit("ls -lR /usr gave less than 1 MiB of text: no corpus")
    with files["text"].open("wb") as out:
        left = size
        while left:
            out.write(listing[:left])
            left -= min(left, len(listing))
    return files


def newest_recording(rig: Rig) -> Path | None:
    found = list((rig.data / "recordings").rglob("*.rec"))
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


async def bench_bulk(rig: Rig, size_mib: int, repeat: int) -> dict[str, Any]:
    """Each path streams each payload; the figures per payload, as before per path."""
    size = size_mib * MIB
    files = await asyncio.to_thread(make_payloads, rig.work, size)
    # All codes first: after a relay run the gateway indexes the recording, and SQLite may
    # be busy with it while we would be issuing the next payload's codes.
    codes = await connect_codes(rig, repeat * len(PAYLOADS))
    out: dict[str, Any] = {"size_mib": size_mib, "repeat": repeat, "cipher": CIPHER}
    for n, payload in enumerate(PAYLOADS):
        out[payload] = await bench_bulk_payload(
            rig, f"cat {files[payload]}", size_mib, codes[n * repeat : (n + 1) * repeat]
        )
    return out


async def bench_bulk_payload(
    rig: Rig, command: str, size_mib: int, codes: list[str]
) -> dict[str, Any]:
    size = size_mib * MIB
    limit = max(60.0, size_mib / 5)  # a path slower than 5 MiB/s is broken, not slow
    runs: dict[str, list[tuple[float, float]]] = {}
    errors: dict[str, list[str]] = {}
    relay_cpu_ms_per_mib: list[float] = []
    loop_cpu_ms_per_mib: list[float] = []
    close_cpu_s: list[float] = []
    stored_ratio: list[float] = []
    bare_cpu: dict[str, list[float]] = {"bare": [], "bare_fastpath": []}
    repeat = len(codes)
    for i in range(repeat):
        paths: list[tuple[str, Argv, Env | None]] = [
            ("direct", rig.direct(command), None),
            ("proxyjump", rig.proxyjump(command), None),
            ("nested", rig.nested(command), None),
            ("bare", rig.bare(command), None),
            ("bare_fastpath", rig.bare(command, "bare_fastpath"), None),
            ("relay", rig.relay(command), rig.env(codes[i])),
        ]
        for name, argv, env in paths:
            await gateway_quiet(rig)
            meter = GatewayCPU(rig)
            bare_meters = {n: ProcessCPU(p.pid) for n, (p, _) in rig.bare_relays.items()}
            loop_meter = MainThreadCPU(rig.gateway_pid())  # the event loop: both SSH legs
            runs.setdefault(name, [])
            try:
                runs[name].append(await asyncio.to_thread(bulk_once, argv, env, size, limit))
            except RuntimeError as exc:  # a failed run is a finding: report it, go on
                errors.setdefault(name, []).append(str(exc)[-300:])
                print(f"bulk {i + 1}/{repeat} {name:9} FAILED {exc}", flush=True)
                continue
            if name.startswith("bare"):
                bare_cpu[name].append(bare_meters[name].seconds() * 1000 / size_mib)
            if name == "relay":
                relay_cpu_ms_per_mib.append(meter.seconds() * 1000 / size_mib)
                loop_cpu_ms_per_mib.append(loop_meter.seconds() * 1000 / size_mib)
                close_cpu_s.append(await gateway_quiet(rig))
                if (recording := newest_recording(rig)) is not None:
                    stored_ratio.append(recording.stat().st_size / size)
            print(
                f"bulk {command.rsplit('-', 1)[-1]:10} {i + 1}/{repeat} {name:13} "
                f"{runs[name][-1][0]:7.1f} MiB/s",
                flush=True,
            )
    out: dict[str, Any] = {}
    for name, samples in runs.items():
        out[name] = {
            "mib_s": rnd(median([s[0] for s in samples])),
            "wall_mib_s": rnd(median([s[1] for s in samples])),
            "runs_mib_s": [round(s[0], 1) for s in samples],
        }
        if name in errors:
            out[name]["failed"] = len(errors[name])
            out[name]["first_error"] = errors[name][0]
    # While relaying, and after the client has gone (recording verified and text indexed,
    # up to 64 MiB of output interpreted).
    out["relay"]["gateway_cpu_ms_per_mib"] = rnd(median(relay_cpu_ms_per_mib), 2)
    # Of which the event loop's thread (the rest: the recording writer, mostly).
    out["relay"]["gateway_loop_cpu_ms_per_mib"] = rnd(median(loop_cpu_ms_per_mib), 2)
    out["relay"]["gateway_cpu_s_after_close"] = rnd(median(close_cpu_s), 2)
    # The recording file's size over the bytes the session output.
    out["relay"]["stored_vs_output"] = rnd(median(stored_ratio), 4)
    for name, values in bare_cpu.items():
        if name in out:
            out[name]["relay_cpu_ms_per_mib"] = rnd(median(values), 2)
    return out


# -- connect -------------------------------------------------------------------------------
async def run_command(argv: Argv, env: Env | None, limit_s: float = 60) -> tuple[float, str]:
    """Spawn to exit in ms; a non-empty second value says why it failed."""
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return 0.0, f"timed out after {limit_s} s"
    elapsed = (time.perf_counter() - start) * 1000
    if proc.returncode != 0:
        return elapsed, f"exit {proc.returncode}: {err.decode(errors='replace').strip()[:300]}"
    return elapsed, ""


def summarise(samples: list[tuple[float, str]], wall_ms: float | None = None) -> dict[str, Any]:
    ok = [ms for ms, why in samples if not why]
    errors = [why for _, why in samples if why]
    out: dict[str, Any] = {"median_ms": rnd(median(ok)), "ok": len(ok), "failed": len(errors)}
    if errors:
        out["first_error"] = errors[0]
    if wall_ms is not None:
        out["wall_ms"] = round(wall_ms, 1)
        out["connects_per_s"] = round(len(ok) / (wall_ms / 1000), 1) if wall_ms else None
    return out


async def connect_paths(rig: Rig, n: int) -> list[tuple[str, Callable[[], Command]]]:
    codes = iter(await rig.connect_codes(n))

    def totp() -> Command:
        user, env = rig.totp_login()
        return rig.relay("true", user, kbdint=True), env

    return [
        ("direct", lambda: (rig.direct("true"), None)),
        ("direct_c25519", lambda: (rig.direct("true", classic_kex=True), None)),
        ("proxyjump", lambda: (rig.proxyjump("true"), None)),
        ("proxyjump_c25519", lambda: (rig.proxyjump("true", classic_kex=True), None)),
        ("relay_code", lambda: (rig.relay("true"), rig.env(next(codes)))),
        ("relay_totp", totp),
        ("relay_cert", lambda: (rig.relay_cert("true"), None)),
    ]


async def bench_connect(rig: Rig, repeat: int, parallel: int) -> dict[str, Any]:
    n = 3 * repeat
    out: dict[str, Any] = {"sequential_samples": n, "parallel": parallel}
    seq: dict[str, list[tuple[float, str]]] = {}
    cpu_ms: dict[str, list[float]] = {}
    paths = await connect_paths(rig, n)
    for _ in range(n):
        for name, make in paths:
            argv, env = make()
            await gateway_quiet(rig)
            meter = GatewayCPU(rig)
            seq.setdefault(name, []).append(await run_command(argv, env))
            if name.startswith("relay"):
                await gateway_quiet(rig)  # counts its closing work too (recording, audit)
                cpu_ms.setdefault(name, []).append(meter.seconds() * 1000)
    out["sequential"] = {name: summarise(samples) for name, samples in seq.items()}
    for name, values in cpu_ms.items():  # a mean: single samples are 10 ms ticks
        out["sequential"][name]["gateway_cpu_ms_mean"] = rnd(statistics.mean(values))
    print("connect sequential", json.dumps(out["sequential"]), flush=True)
    out["parallel_runs"] = {}
    for name, make in await connect_paths(rig, parallel):
        commands = [make() for _ in range(parallel)]
        await gateway_quiet(rig)
        start = time.perf_counter()
        samples = await asyncio.gather(*(run_command(argv, env, 120) for argv, env in commands))
        wall = (time.perf_counter() - start) * 1000
        out["parallel_runs"][name] = summarise(list(samples), wall)
        print(f"connect parallel {name}", json.dumps(out["parallel_runs"][name]), flush=True)
    return out


# -- asyncssh clients ----------------------------------------------------------------------
CLIENT_OPTIONS: dict[str, Any] = {
    "known_hosts": None,
    "agent_path": None,
    "config": None,
    "encryption_algs": [CIPHER],
    "compression_algs": ["none"],  # OpenSSH's client default; asyncssh would offer zlib
    "connect_timeout": 60,
    "login_timeout": 60,
}


async def connect_direct(
    rig: Rig, tunnel: Any = None, jump: bool = False
) -> asyncssh.SSHClientConnection:
    key = asyncssh.read_private_key(rig.client_key)
    port = rig.jump_port if jump else rig.sshd_port
    return await asyncssh.connect(
        "127.0.0.1", port, tunnel=tunnel, username="root", client_keys=[key],
        preferred_auth=["publickey"], **CLIENT_OPTIONS,
    )  # fmt: skip


async def connect_relay(rig: Rig, code: str, user: str = CODE_USER) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1", rig.gateway_port, username=f"{user}+{ASSET}", password=code,
        client_keys=None, preferred_auth=["password"], **CLIENT_OPTIONS,
    )  # fmt: skip


async def connect_bare(rig: Rig, name: str) -> asyncssh.SSHClientConnection:
    """To a bare asyncssh relay (bench.bare_relay), which asks for no authentication."""
    return await asyncssh.connect(
        "127.0.0.1", rig.bare_relays[name][1], username="root", client_keys=None,
        **CLIENT_OPTIONS,
    )  # fmt: skip


def given(session: S) -> Callable[[], S]:
    """A session factory for asyncssh that hands over an object made beforehand (typed)."""
    return lambda: session


class EchoSession(asyncssh.SSHClientSession[bytes]):
    """Notes the arrival time of the bytes it is waiting for, in the data callback itself."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.want = b""
        self.seen: asyncio.Future[int] | None = None

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.buf += data
        if self.seen is not None and not self.seen.done() and self.want in self.buf:
            self.seen.set_result(time.perf_counter_ns())

    async def expect(self, chan: asyncssh.SSHClientChannel[bytes], send: bytes, want: bytes) -> int:
        """Send ``send``; microseconds until ``want`` has arrived."""
        self.buf.clear()
        self.want = want
        self.seen = asyncio.get_running_loop().create_future()
        start = time.perf_counter_ns()
        chan.write(send)
        arrived = await asyncio.wait_for(self.seen, 10)
        return (arrived - start) // 1000


async def bench_keys(rig: Rig, keystrokes: int) -> dict[str, Any]:
    await gateway_quiet(rig)
    jump = await connect_direct(rig, jump=True)
    conns = {
        "direct": await connect_direct(rig),
        "proxyjump": await connect_direct(rig, tunnel=jump),
        "bare": await connect_bare(rig, "bare"),
        "bare_fastpath": await connect_bare(rig, "bare_fastpath"),
        "relay": await connect_relay(rig, (await connect_codes(rig, 1))[0]),
    }
    sessions: dict[str, tuple[asyncssh.SSHClientChannel[bytes], EchoSession]] = {}
    samples: dict[str, list[float]] = {name: [] for name in (*conns, "relay_while_other_closes")}
    typed: dict[str, bytes] = {name: b"" for name in conns}
    try:
        for name, conn in conns.items():
            session = EchoSession()
            chan, _ = await conn.create_session(
                given(session), "exec cat", term_type="xterm", term_size=(200, 50), encoding=None
            )
            sessions[name] = (chan, session)
        await asyncio.sleep(0.5)  # shells started, cat waiting
        letters = b"abcdefghijklmnopqrstuvwxyz"
        rounds = -(-keystrokes // 25)
        for r in range(rounds):
            for name, (chan, session) in sessions.items():
                for i in range(min(25, keystrokes - r * 25)):
                    key = letters[i % 26 : i % 26 + 1]
                    samples[name].append(await session.expect(chan, key, key))
                    typed[name] += key
                    await asyncio.sleep(0.005)  # typing, not a flood
                    if len(typed[name]) >= 50:  # end the line: the tty's line has a limit
                        await session.expect(chan, b"\r", b"\r\n" + typed[name] + b"\r\n")
                        typed[name] = b""
        # Typing while another session ends: the gateway verifies that session's recording
        # and indexes its text (up to 64 MiB of output) in a thread, after the client left.
        chan, session = sessions["relay"]
        code = (await rig.connect_codes(1))[0]
        big = rig.relay(f"head -c {CLOSE_MIB * MIB} /dev/zero")
        await asyncio.to_thread(bulk_once, big, rig.env(code), CLOSE_MIB * MIB, 300)
        busy_from = time.monotonic()
        for i in range(keystrokes):
            key = letters[i % 26 : i % 26 + 1]
            samples["relay_while_other_closes"].append(await session.expect(chan, key, key))
            typed["relay"] += key
            await asyncio.sleep(0.005)
            if len(typed["relay"]) >= 50:
                await session.expect(chan, b"\r", b"\r\n" + typed["relay"] + b"\r\n")
                typed["relay"] = b""
        await gateway_quiet(rig)
        busy_s = time.monotonic() - busy_from
    finally:
        for conn in (*conns.values(), jump):
            conn.close()
    out: dict[str, Any] = {"keystrokes": keystrokes, "command": "cat in a pty (tty echo)"}
    out["other_session_output_mib"] = CLOSE_MIB
    out["gateway_busy_after_other_closes_s"] = round(busy_s, 1)
    for name, values in samples.items():
        out[name] = {
            "p50_us": rnd(percentile(values, 0.5), 0),
            "p99_us": rnd(percentile(values, 0.99), 0),
            "max_us": rnd(max(values), 0),
        }
    return out


# -- idle ----------------------------------------------------------------------------------
class IdleSession(asyncssh.SSHClientSession[bytes]):
    def __init__(self) -> None:
        self.first = asyncio.Event()
        self.closed = False
        self.why = ""  # for a session that ends while it should be held
        self.tail = b""

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.first.set()  # the shell's prompt: the asset end is attached
        self.tail = (self.tail + data)[-160:]

    def exit_status_received(self, status: int) -> None:
        self.why = self.why or f"exit status {status}"

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.why = self.why or f"signal {signal}"

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.why = self.why or (f"{type(exc).__name__}: {exc}" if exc else "closed")


async def live_count(rig: Rig, user: str = CODE_USER) -> int:
    async with rig.authz_services.sessions() as db:
        return len([r for r in await live_store.listing(db) if r.username == user])


def gateway_log_problems(rig: Rig, limit: int = 5) -> list[str]:
    """A few distinct warning/error lines from the gateway's log, to say why sessions failed."""
    seen: list[str] = []
    with contextlib.suppress(OSError):
        for line in (rig.work / "gateway.log").read_text(errors="replace").splitlines():
            if any(word in line for word in ("ERROR", "WARNING", "Error", "refusing")):
                text = line.strip()[:200]
                if text not in seen:
                    seen.append(text)
            if len(seen) >= limit:
                break
    return seen


async def bench_idle(rig: Rig, count: int) -> dict[str, Any]:
    pid = rig.gateway_pid()
    await gateway_quiet(rig)
    rss0, threads0 = status_field(pid, "VmRSS"), status_field(pid, "Threads")
    sshd_rss0 = tree_pss_kb(rig.procs[0].pid)
    conns: list[asyncssh.SSHClientConnection] = []
    attached: list[IdleSession] = []
    errors: list[str] = []
    # Ten at a time: the figure here is what is held, not how fast it opens; more at once
    # only queue inside the gateway (and on a loaded machine trip its 30 s login timeout).
    limit = asyncio.Semaphore(10)
    deadline = time.monotonic() + max(120.0, count * 0.6)

    async def open_one(code: str) -> None:
        async with limit:
            if time.monotonic() > deadline or len(errors) > 50:
                return
            try:
                conn = await connect_relay(rig, code)
            except (OSError, asyncssh.Error) as exc:
                errors.append(f"connect: {type(exc).__name__}: {exc}")
                return
            conns.append(conn)
            try:
                session = IdleSession()
                await conn.create_session(
                    given(session), term_type="xterm", term_size=(80, 24), encoding=None
                )
                await asyncio.wait_for(session.first.wait(), 30)
                attached.append(session)
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                errors.append(f"session: {type(exc).__name__}: {exc}")

    start = time.perf_counter()
    first_batch: tuple[int, int] | None = None  # (held, VmRSS kB) after the first batch
    for batch in range(0, count, 100):  # codes live 5 minutes: make them as we go
        batch_start = time.perf_counter()
        codes = await rig.connect_codes(min(100, count - batch))
        await asyncio.gather(*(open_one(code) for code in codes))
        rate = len(codes) / (time.perf_counter() - batch_start)
        print(f"idle: {len(attached)} held, {len(errors)} errors, {rate:.1f}/s", flush=True)
        if first_batch is None:
            first_batch = len(attached), status_field(pid, "VmRSS")
    open_s = time.perf_counter() - start
    await asyncio.sleep(3)
    held = len([s for s in attached if not s.closed])
    dropped = [f"{s.why}: {s.tail.decode(errors='replace')!r}" for s in attached if s.closed]
    rss1, threads1 = status_field(pid, "VmRSS"), status_field(pid, "Threads")
    sshd_rss1 = tree_pss_kb(rig.procs[0].pid)
    cpu0 = cpu_seconds(pid)
    await asyncio.sleep(5)
    idle_cpu = (cpu_seconds(pid) - cpu0) / 5 * 100  # pollers included
    live = await live_count(rig)
    close_start = time.perf_counter()
    for conn in conns:
        conn.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(60):
            await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)
    drain_deadline = time.monotonic() + 180  # the gateway ends each session: rows go away
    while await live_count(rig) and time.monotonic() < drain_deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.5)  # another process's database: nothing to await but a poll
    drained_s = time.perf_counter() - close_start
    await gateway_quiet(rig)
    rss2, threads2 = status_field(pid, "VmRSS"), status_field(pid, "Threads")
    out: dict[str, Any] = {
        "asked": count,
        "held": held,
        "live_sessions_listed": live,
        "open_s": round(open_s, 1),
        "opened_per_s": round(len(attached) / open_s, 1) if open_s else None,
        "rss_kb_before": rss0,
        "rss_kb_held": rss1,
        "rss_kb_after_close": rss2,
        "kb_per_session": round((rss1 - rss0) / held, 1) if held else None,
        # Past the first 100 (allocator warm-up, first-use imports): the cost of one more.
        "kb_per_session_marginal": (
            round((rss1 - first_batch[1]) / (held - first_batch[0]), 1)
            if first_batch and held > first_batch[0]
            else None
        ),
        "threads_before": threads0,
        "threads_held": threads1,
        "threads_after_close": threads2,
        "closed_and_drained_s": round(drained_s, 1),
        "live_sessions_after_close": await live_count(rig),
        "idle_cpu_percent_held": round(idle_cpu, 1),
        # The asset side, for scale: sshd's session processes and the shells they run.
        "sshd_tree_pss_kb_per_session": round((sshd_rss1 - sshd_rss0) / held, 1) if held else None,
        "gateway_nofile_limit": open_files_limit(pid),
        "errors": len(errors),
        "ended_while_held": len(dropped),
    }
    if errors or dropped:
        out["first_errors"] = sorted(set(errors))[:3] + dropped[:3]
        out["gateway_log"] = gateway_log_problems(rig)
    return out


# -- end -----------------------------------------------------------------------------------
class EndSession(asyncssh.SSHClientSession[bytes]):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.started = asyncio.Event()
        self.ended = asyncio.Event()
        self.ended_at = (0.0, 0.0)  # perf_counter, wall clock

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.buf += data
        if b"started" in self.buf:
            self.started.set()

    def _end(self) -> None:
        if not self.ended.is_set():
            self.ended_at = (time.perf_counter(), time.time())
            self.ended.set()

    def exit_status_received(self, status: int) -> None:
        self._end()

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self._end()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()


async def open_end_session(
    rig: Rig, user: str
) -> tuple[asyncssh.SSHClientConnection, EndSession, str]:
    """A session running ``sleep``, retried while the gateway has not yet seen a new grant."""
    deadline = time.monotonic() + 15
    async with rig.authz_services.sessions() as db:
        before = {r.session_id for r in await live_store.listing(db)}
    while True:
        conn = await connect_relay(rig, (await rig.connect_codes(1, user))[0], user)
        session = EndSession()
        await conn.create_session(given(session), "echo started; exec sleep 60", encoding=None)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(session.started.wait(), 10)
        if session.started.is_set():
            break
        conn.close()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{user}: no session: {bytes(session.buf)!r}")
        await asyncio.sleep(0.2)
    async with rig.authz_services.sessions() as db:
        rows = [r for r in await live_store.listing(db) if r.session_id not in before]
    [row] = [r for r in rows if r.username == user]
    return conn, session, row.session_id


async def measure_end(
    rig: Rig, user: str, trigger: Callable[[str], Awaitable[float]]
) -> tuple[float, float]:
    """ms from what ``trigger`` returns (a perf_counter time) to the client seeing the end,
    and the wall-clock time it saw the end."""
    conn, session, session_id = await open_end_session(rig, user)
    try:
        t0 = await trigger(session_id)
        await asyncio.wait_for(session.ended.wait(), 15)
        return (session.ended_at[0] - t0) * 1000, session.ended_at[1]
    finally:
        conn.close()


async def negotiated_kex(argv: Argv, env: Env | None) -> str:
    """The key exchange OpenSSH's client agreed on (from ``ssh -v``)."""
    proc = await asyncio.create_subprocess_exec(
        argv[0], "-v", *argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    found = re.search(r"kex: algorithm: (\S+)", err.decode(errors="replace"))
    return found.group(1) if found else "?"


async def conduit_cli(rig: Rig, runs_ms: list[float], *args: str) -> float:
    """Run the real CLI; returns when it started (perf_counter) and notes how long it ran."""
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *CONDUIT, *args, "--data-dir", str(rig.data), env=clean_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    if proc.returncode != 0:
        raise RuntimeError(f"conduit {' '.join(args)}: {err.decode()}")
    runs_ms.append((time.perf_counter() - start) * 1000)
    return start


async def bench_end(rig: Rig, repeat: int) -> dict[str, Any]:
    services = rig.authz_services
    authz = services.authz
    cli_runs: list[float] = []  # how long each ``conduit`` command took, start to exit

    async def kill(session_id: str) -> float:
        async with services.sessions() as db, db.begin():
            assert await live_store.request_kill(db, session_id, "bench-kill", "cli:bench")
        return time.perf_counter()

    async def kill_cli(session_id: str) -> float:
        reason = ("--reason", "bench-kill")
        return await conduit_cli(rig, cli_runs, "sessions", "kill", session_id, *reason)

    async def grant(valid_until: Any = None) -> str:
        made = await authz.add_grant(
            subject_kind="user", subject=END_USER, object_kind="asset", obj=ASSET,
            action="ssh", actor="bench", valid_until=valid_until,
        )  # fmt: skip
        return made.id

    async def revoke_after(grant_id: str) -> Callable[[str], Awaitable[float]]:
        async def trigger(_: str) -> float:
            await authz.revoke_grant(grant_id, actor="cli:bench")
            return time.perf_counter()

        return trigger

    async def revoke_cli_after(grant_id: str) -> Callable[[str], Awaitable[float]]:
        async def trigger(_: str) -> float:
            return await conduit_cli(rig, cli_runs, "grant", "revoke", grant_id)

        return trigger

    async def nothing(_: str) -> float:
        return 0.0

    await gateway_quiet(rig)
    kills, revokes, expiries = [], [], []
    for _ in range(repeat):
        kills.append((await measure_end(rig, CODE_USER, kill))[0])
        revokes.append((await measure_end(rig, END_USER, await revoke_after(await grant())))[0])
        until = utc_in(4)  # time to see the grant (0.5 s poll) and connect
        await grant(until)
        _, ended_wall = await measure_end(rig, END_USER, nothing)
        expiries.append((ended_wall - until.timestamp()) * 1000)
    cli_kill = (await measure_end(rig, CODE_USER, kill_cli))[0]
    cli_revoke = (await measure_end(rig, END_USER, await revoke_cli_after(await grant())))[0]
    return {
        "kill_ms": rnd(median(kills)),
        "revoke_ms": rnd(median(revokes)),
        "expiry_ms": rnd(median(expiries)),
        "runs_ms": {
            "kill": [round(v) for v in kills],
            "revoke": [round(v) for v in revokes],
            "expiry": [round(v) for v in expiries],
        },
        "cli_kill_from_start_ms": round(cli_kill),
        "cli_revoke_from_start_ms": round(cli_revoke),
        "cli_run_ms": [round(v) for v in cli_runs],
    }


# -- report --------------------------------------------------------------------------------
def verdict(figures: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bool | None]]:
    ratios: dict[str, Any] = {}
    met: dict[str, bool | None] = {}

    def check(name: str, value: float | None, ok: Callable[[float], bool]) -> None:
        met[name] = None if value is None else ok(value)

    if bulk := figures.get("bulk"):
        for payload in PAYLOADS:
            one = bulk[payload]
            relay = one["relay"]["mib_s"]
            pre = f"bulk_{payload}"
            ratios[f"{pre}_relay_vs_proxyjump"] = ratio(relay, one["proxyjump"]["mib_s"])
            ratios[f"{pre}_relay_vs_nested"] = ratio(relay, one["nested"]["mib_s"])
            ratios[f"{pre}_relay_vs_direct"] = ratio(relay, one["direct"]["mib_s"])
            for bare in ("bare", "bare_fastpath"):  # what asyncssh alone reaches here
                if bare in one:
                    ratios[f"{pre}_{bare}_vs_proxyjump"] = ratio(
                        one[bare]["mib_s"], one["proxyjump"]["mib_s"]
                    )
                    ratios[f"{pre}_relay_vs_{bare}"] = ratio(relay, one[bare]["mib_s"])
            # Gateway CPU per MiB (recording on) against the bare fast-path relay's.
            fast = one.get("bare_fastpath", {}).get("relay_cpu_ms_per_mib")
            ratios[f"{pre}_relay_cpu_vs_bare_fastpath"] = ratio(
                one["relay"]["gateway_cpu_ms_per_mib"], fast
            )
            ratios[f"{pre}_stored_vs_output"] = one["relay"]["stored_vs_output"]
        r, t = "bulk_random", "bulk_text"
        check("bulk_random_vs_proxyjump", ratios[f"{r}_relay_vs_proxyjump"], lambda v: v >= 1.0)
        check("bulk_random_cpu", ratios[f"{r}_relay_cpu_vs_bare_fastpath"], lambda v: v <= 1.5)
        check("bulk_random_vs_nested", ratios[f"{r}_relay_vs_nested"], lambda v: v >= 0.9)
        check("bulk_text_vs_proxyjump", ratios[f"{t}_relay_vs_proxyjump"], lambda v: v >= 1.2)
        check("bulk_text_stored", ratios[f"{t}_stored_vs_output"], lambda v: v <= 0.2)
        for payload in PAYLOADS:  # a relay run that broke misses its targets
            if bulk[payload]["relay"].get("failed"):
                for name in [n for n in met if n.startswith(f"bulk_{payload}")]:
                    met[name] = False
    if connect := figures.get("connect"):
        seq, par = connect["sequential"], connect["parallel_runs"]
        for login in ("relay_code", "relay_totp", "relay_cert"):
            r_seq = ratio(seq[login]["median_ms"], seq["proxyjump"]["median_ms"])
            r_par = ratio(par[login]["median_ms"], par["proxyjump"]["median_ms"])
            ratios[f"connect_{login}_vs_proxyjump"] = r_seq
            ratios[f"connect_parallel_{login}_vs_proxyjump"] = r_par
            ratios[f"connect_parallel_wall_{login}_vs_proxyjump"] = ratio(
                par[login].get("wall_ms"), par["proxyjump"].get("wall_ms")
            )
            ratios[f"connect_{login}_vs_proxyjump_c25519"] = ratio(
                seq[login]["median_ms"], seq["proxyjump_c25519"]["median_ms"]
            )
            ratios[f"connect_parallel_{login}_vs_proxyjump_c25519"] = ratio(
                par[login]["median_ms"], par["proxyjump_c25519"]["median_ms"]
            )
            check(f"connect_{login}", r_seq, lambda v: v <= 0.5)
            check(f"connect_parallel_{login}", r_par, lambda v: v <= 0.5)
            if par[login]["failed"] or seq[login]["failed"]:  # a refused login misses it
                met[f"connect_{login}"] = met[f"connect_parallel_{login}"] = False
    if keys := figures.get("keys"):
        ratios["keys_p50_relay_vs_proxyjump"] = ratio(
            keys["relay"]["p50_us"], keys["proxyjump"]["p50_us"]
        )
        ratios["keys_p99_relay_us"] = keys["relay"]["p99_us"]
        for bare in ("bare", "bare_fastpath"):
            ratios[f"keys_p50_{bare}_vs_proxyjump"] = ratio(
                keys[bare]["p50_us"], keys["proxyjump"]["p50_us"]
            )
        ratios["keys_p99_relay_while_other_closes_us"] = keys["relay_while_other_closes"]["p99_us"]
        check("keys_p50", ratios["keys_p50_relay_vs_proxyjump"], lambda v: v <= 1.2)
        check("keys_p99", keys["relay"]["p99_us"], lambda v: v <= 1500)
    if idle := figures.get("idle"):
        ratios["idle_kb_per_session"] = idle["kb_per_session"]
        met["idle_all_held"] = idle["held"] == idle["asked"]
    if end := figures.get("end"):
        for kind in ("kill", "revoke", "expiry"):
            ratios[f"end_{kind}_ms"] = end[f"{kind}_ms"]
            check(f"end_{kind}", end[f"{kind}_ms"], lambda v: v <= 1000)
    return ratios, met


async def run(args: argparse.Namespace) -> dict[str, Any]:
    parts = args.only or list(PARTS)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The gateway inherits this: two sockets per relayed session, plus its recordings.
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    totp_users = 3 * args.repeat + args.parallel + 2 if "connect" in parts else 0
    figures: dict[str, Any] = {"benchmark": "ssh_relay", "parts": parts}
    version = await asyncio.create_subprocess_exec("ssh", "-V", stderr=subprocess.PIPE)
    _, ssh_version = await version.communicate()
    with tempfile.TemporaryDirectory(prefix="conduit-ssh-relay-") as tmp:
        rig = await build(Path(tmp), totp_users)
        try:
            await gateway_quiet(rig)
            await GatewayCPU.calibrate(rig)
            figures["setup"] = {
                "gateway_idle_cpu_percent": round(GatewayCPU.idle_rate * 100, 2),
                "ssh": ssh_version.decode().strip(),
                "asyncssh": asyncssh.__version__,
                "nofile_bench": f"{soft}->{hard}",
                "nofile_gateway": open_files_limit(rig.gateway_pid()),
                "cpus": os.cpu_count(),
                "loadavg_start": os.getloadavg(),  # other jobs on the machine skew every figure
                "kex_direct": await negotiated_kex(rig.direct("true"), None),
                "kex_client_to_gateway": await negotiated_kex(
                    rig.relay("true"), rig.env((await rig.connect_codes(1))[0])
                ),
            }
            if "bulk" in parts:
                figures["bulk"] = await bench_bulk(rig, args.size_mib, args.repeat)
            if "connect" in parts:
                figures["connect"] = await bench_connect(rig, args.repeat, args.parallel)
            if "keys" in parts:
                figures["keys"] = await bench_keys(rig, args.keystrokes)
                print("keys", json.dumps(figures["keys"]), flush=True)
            if "idle" in parts:
                figures["idle"] = await bench_idle(rig, args.idle)
                print("idle", json.dumps(figures["idle"]), flush=True)
            if "end" in parts:
                figures["end"] = await bench_end(rig, args.repeat)
            figures["setup"]["loadavg_end"] = os.getloadavg()
        finally:
            await rig.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="bulk transfer size")
    parser.add_argument("--repeat", type=int, default=3, help="bulk runs; 3x sequential connects")
    parser.add_argument("--parallel", type=int, default=50, help="connects at once")
    parser.add_argument("--idle", type=int, default=1000, help="idle sessions held at once")
    parser.add_argument("--keystrokes", type=int, default=200, help="keystrokes per path")
    parser.add_argument("--only", choices=PARTS, action="append", help="run a part (repeatable)")
    parser.add_argument("--event-loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="the gateway's [server] event_loop")  # fmt: skip
    args = parser.parse_args()
    reason = missing_reason()
    if reason:
        raise SystemExit(f"ssh_relay bench needs the real sshd: {reason}")
    GATEWAY_ENV["CONDUIT_SERVER__EVENT_LOOP"] = args.event_loop
    figures = asyncio.run(run(args))
    figures["event_loop"] = args.event_loop
    ratios, met = verdict(figures)
    figures["ratios"] = ratios
    figures["targets"] = TARGETS
    figures["targets_met"] = met
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
