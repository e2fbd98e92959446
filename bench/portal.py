"""Benchmark the portal (issue 15): the browser terminal beside native SSH, many browser
terminals held by one gateway, and the live-sessions table with 500 sessions.

The test bed is ``bench.ssh_relay_rig``'s: a real OpenSSH sshd as the asset and a real
``conduit serve`` (portal and SSH in one process) with recording on. Parts (``--only``;
default all):

* ``echo``: keystroke echo round trip in a pty (``cat`` under a tty: the line discipline
  echoes), p50/p99 in microseconds, two paths interleaved in rounds of 25 keystrokes with
  5 ms between keystrokes: ``native`` is an SSH client (asyncssh, in this process, connect
  code) through the gateway, the baseline; ``browser`` is the browser terminal's own
  protocol (websocket: one-time ticket, binary frames) spoken by the ``websockets`` client
  in this process, through the same gateway to the same asset. No browser runs: what is
  timed is the gateway path a browser uses; xterm.js drawing in a browser comes on top
  (and would on top of a native terminal emulator too). Target: browser p50 <= 1.3x native.
* ``hold``: ``--hold`` browser terminals opened (ten at a time) and held at once; gateway
  VmRSS before/held/after and KB per session, gateway CPU while they idle; beside the same
  number of native SSH shells (asyncssh, connect codes) held through the same gateway first.
* ``table``: ``bench.portal_table`` (in process, server time): ``/live/table`` with
  ``--rows`` live sessions beside the JSON API's listing. Target: < 300 ms.
* ``evidence`` (issue 16, not in the default set: it writes a 1 GiB recording):
  ``bench.evidence``'s parts (first frame, search, history) with its flags.

The portal session the websocket paths use is made directly in the database (as a login
with password and TOTP would make it; login is ``bench.login``'s subject, not timed here).
The last printed line is one JSON object: figures, ratios, and whether each target holds.
Run from the repository root as root (sshd logs in as root by key):
``python -m bench.portal [--keystrokes 200] [--hold 200] [--rows 500]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncssh
import httpx
from websockets.asyncio.client import ClientConnection, connect

from bench import evidence, portal_table
from bench.ssh_relay import (
    EchoSession,
    IdleSession,
    connect_relay,
    gateway_quiet,
    given,
    percentile,
    rnd,
)
from bench.ssh_relay_rig import ASSET, CODE_USER, Rig, _user_id, build, cpu_seconds, status_field
from gateway.identity import pending, portal_sessions
from gateway.web.auth import SESSION_COOKIE

PARTS = ("echo", "hold", "table")
EXTRA_PARTS = ("evidence",)
COLS, ROWS = 200, 50
LETTERS = b"abcdefghijklmnopqrstuvwxyz"


class Browser:
    """A portal session, as a signed-in browser holds it: its cookie and its CSRF token."""

    def __init__(self, rig: Rig, raw: str, csrf: str) -> None:
        self.rig, self.cookie, self.csrf = rig, f"{SESSION_COOKIE}={raw}", csrf
        self.origin = f"https://127.0.0.1:{rig.portal_port}"
        self.tls = portal_tls(rig)

    @classmethod
    async def sign_in(cls, rig: Rig, user: str = CODE_USER) -> Browser:
        services = rig._services()
        async with services.sessions() as db, db.begin():
            now = services.clock()
            user_id = await _user_id(db, user)
            raw = await portal_sessions.create(db, user_id, now, now, "127.0.0.1", "bench")
        return cls(rig, raw, pending.csrf_token(services.keys.master_key, "session", raw))

    async def terminal(self, client: httpx.AsyncClient) -> ClientConnection:
        """A browser terminal on the bench asset: ticket, then the websocket."""
        answer = await client.post(
            f"{self.origin}/connect/{ASSET}/terminal/ticket",
            headers={"Cookie": self.cookie, "X-CSRF-Token": self.csrf},
        )
        answer.raise_for_status()
        ticket = answer.json()["ticket"]
        url = (
            f"wss://127.0.0.1:{self.rig.portal_port}/ws/terminal"
            f"?ticket={ticket}&cols={COLS}&rows={ROWS}"
        )
        headers = {"Cookie": self.cookie, "Origin": self.origin}
        return await connect(url, additional_headers=headers, max_size=2**20, ssl=self.tls)


def portal_tls(rig: Rig) -> ssl.SSLContext:
    """Trust exactly the portal's own certificate (``conduit init`` made it, self-signed)."""
    return ssl.create_default_context(cafile=str(rig.data / "tls" / "portal.crt"))


def portal_client(rig: Rig) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=60, verify=portal_tls(rig))


class WebEcho:
    """Collects a browser terminal's output; times the arrival of what it waits for."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws, self.buf = ws, bytearray()
        self.want = b""
        self.seen: asyncio.Future[int] | None = None
        self.first = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for message in self.ws:
                if isinstance(message, str):
                    continue  # a control (size, end): not terminal output
                self.buf += message
                self.first.set()
                if self.seen is not None and not self.seen.done() and self.want in self.buf:
                    self.seen.set_result(time.perf_counter_ns())

    async def expect(self, send: bytes, want: bytes) -> int:
        self.buf.clear()
        self.want, self.seen = want, asyncio.get_running_loop().create_future()
        start = time.perf_counter_ns()
        await self.ws.send(send)
        arrived = await asyncio.wait_for(self.seen, 10)
        return (arrived - start) // 1000

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


async def _browser_cat(rig: Rig, client: httpx.AsyncClient) -> WebEcho:
    echo = WebEcho(await (await Browser.sign_in(rig)).terminal(client))
    await asyncio.wait_for(echo.first.wait(), 30)  # the shell's prompt
    await echo.ws.send(b"exec cat\r")
    await asyncio.sleep(0.5)
    return echo


async def bench_echo(rig: Rig, keystrokes: int) -> dict[str, Any]:
    await gateway_quiet(rig)
    conn = await connect_relay(rig, (await rig.connect_codes(1))[0])
    native = EchoSession()
    chan, _ = await conn.create_session(
        given(native), "exec cat", term_type="xterm", term_size=(COLS, ROWS), encoding=None
    )
    samples: dict[str, list[float]] = {"native": [], "browser": []}
    async with portal_client(rig) as client:
        web = await _browser_cat(rig, client)
        try:
            await asyncio.sleep(0.5)
            typed = {"native": b"", "browser": b""}
            for r in range(-(-keystrokes // 25)):
                for name in samples:
                    for i in range(min(25, keystrokes - r * 25)):
                        key = LETTERS[i % 26 : i % 26 + 1]
                        if name == "native":
                            took = await native.expect(chan, key, key)
                        else:
                            took = await web.expect(key, key)
                        samples[name].append(took)
                        typed[name] += key
                        await asyncio.sleep(0.005)
                        if len(typed[name]) >= 50:  # end the line: the tty's line has a limit
                            line = b"\r\n" + typed[name] + b"\r\n"
                            if name == "native":
                                await native.expect(chan, b"\r", line)
                            else:
                                await web.expect(b"\r", line)
                            typed[name] = b""
        finally:
            await web.close()
            conn.close()
    out: dict[str, Any] = {"keystrokes": keystrokes, "command": "cat in a pty (tty echo)"}
    for name, values in samples.items():
        out[name] = {
            "p50_us": rnd(percentile(values, 0.5), 0),
            "p99_us": rnd(percentile(values, 0.99), 0),
        }
    out["browser_vs_native_p50"] = _ratio(out["browser"]["p50_us"], out["native"]["p50_us"])
    out["browser_vs_native_p99"] = _ratio(out["browser"]["p99_us"], out["native"]["p99_us"])
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


async def hold_native(rig: Rig, count: int) -> dict[str, Any]:
    """The baseline: ``count`` interactive SSH shells through the same gateway, held at once."""
    pid = rig.gateway_pid()
    await gateway_quiet(rig)
    await asyncio.sleep(2)
    rss0 = status_field(pid, "VmRSS")
    conns: list[asyncssh.SSHClientConnection] = []
    sessions: list[IdleSession] = []
    limit = asyncio.Semaphore(10)

    async def open_one(code: str) -> None:
        async with limit:
            with contextlib.suppress(OSError, asyncssh.Error, TimeoutError):
                conn = await connect_relay(rig, code)
                conns.append(conn)
                session = IdleSession()
                await conn.create_session(
                    given(session), term_type="xterm", term_size=(COLS, ROWS), encoding=None
                )
                await asyncio.wait_for(session.first.wait(), 30)
                sessions.append(session)

    for batch in range(0, count, 100):  # codes live 5 minutes: make them as we go
        codes = await rig.connect_codes(min(100, count - batch))
        await asyncio.gather(*(open_one(code) for code in codes))
    await asyncio.sleep(3)
    held = sum(1 for s in sessions if not s.closed)
    rss1 = status_field(pid, "VmRSS")
    for conn in conns:
        conn.close()
    await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)
    await gateway_quiet(rig)
    return {
        "held": held,
        "gateway_rss_kb": {"before": rss0, "held": rss1},
        "kb_per_session": round((rss1 - rss0) / held) if held else None,
    }


async def bench_hold(rig: Rig, count: int) -> dict[str, Any]:
    native = await hold_native(rig, count)
    print("hold native:", json.dumps(native), flush=True)
    pid = rig.gateway_pid()
    await gateway_quiet(rig)
    rss0 = status_field(pid, "VmRSS")
    held: list[WebEcho] = []
    errors: list[str] = []
    limit = asyncio.Semaphore(10)
    deadline = time.monotonic() + max(120.0, count * 0.6)
    browser = await Browser.sign_in(rig)
    async with portal_client(rig) as client:

        async def open_one() -> None:
            async with limit:
                if time.monotonic() > deadline or len(errors) > 20:
                    return
                try:
                    echo = WebEcho(await browser.terminal(client))
                except Exception as exc:  # noqa: BLE001 - counted and reported, not raised
                    errors.append(f"open: {type(exc).__name__}: {exc}")
                    return
                held.append(echo)
                try:
                    await asyncio.wait_for(echo.first.wait(), 30)
                except TimeoutError:
                    errors.append("no prompt within 30 s")

        start = time.perf_counter()
        await asyncio.gather(*(open_one() for _ in range(count)))
        open_s = time.perf_counter() - start
        await asyncio.sleep(3)
        attached = sum(1 for e in held if e.first.is_set() and not e.reader.done())
        rss1 = status_field(pid, "VmRSS")
        cpu0 = cpu_seconds(pid)
        await asyncio.sleep(5)
        idle_cpu = (cpu_seconds(pid) - cpu0) / 5 * 100
        await asyncio.gather(*(e.close() for e in held), return_exceptions=True)
    await gateway_quiet(rig)
    await asyncio.sleep(2)
    rss2 = status_field(pid, "VmRSS")
    per_session = round((rss1 - rss0) / attached) if attached else None
    return {
        "native": native,
        "browser_vs_native_kb_per_session": _ratio(per_session, native["kb_per_session"]),
        "asked": count,
        "held": attached,
        "errors": errors[:5],
        "error_count": len(errors),
        "open_s": round(open_s, 1),
        "gateway_rss_kb": {"before": rss0, "held": rss1, "after": rss2},
        "kb_per_session": per_session,
        "gateway_idle_cpu_percent": round(idle_cpu, 1),
    }


def verdict(figures: dict[str, Any]) -> dict[str, bool | None]:
    echo, table = figures.get("echo"), figures.get("table")
    ratio = echo.get("browser_vs_native_p50") if echo else None
    return {
        "echo_p50_within_1_3x": None if ratio is None else ratio <= 1.3,
        "table_under_300_ms": None if table is None else bool(table["target_met"]),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    parts = args.only or list(PARTS)
    figures: dict[str, Any] = {}
    if "table" in parts:
        figures["table"] = await portal_table.measure(args.rows, 30)
        print("table:", json.dumps(figures["table"]), flush=True)
    if "echo" in parts or "hold" in parts:
        with tempfile.TemporaryDirectory(prefix="conduit-bench-portal-") as tmp:
            rig = await build(Path(tmp), 0)
            try:
                if "echo" in parts:
                    figures["echo"] = await bench_echo(rig, args.keystrokes)
                    print("echo:", json.dumps(figures["echo"]), flush=True)
                if "hold" in parts:
                    figures["hold"] = await bench_hold(rig, args.hold)
                    print("hold:", json.dumps(figures["hold"]), flush=True)
            finally:
                await rig.close()
    figures["targets"] = verdict(figures)
    if "evidence" in parts:
        args.only = None  # every evidence part
        figures["evidence"] = await evidence.run(args)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=PARTS + EXTRA_PARTS)
    parser.add_argument("--keystrokes", type=int, default=200)
    parser.add_argument("--hold", type=int, default=200)
    parser.add_argument("--rows", type=int, default=500)
    evidence.add_arguments(parser)
    args = evidence.bounded(parser.parse_args())
    args.keystrokes = max(25, min(args.keystrokes, 5000))
    args.hold = max(1, min(args.hold, 1000))
    args.rows = max(1, min(args.rows, 20000))
    result = asyncio.run(run(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
