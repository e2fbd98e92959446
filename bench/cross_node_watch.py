"""Benchmark cross-node live watch (decision 0024): how late, and at what cost, a watcher on
node a sees output of a session node b relays, beside a watcher on b itself, and beside the
transport of the alternative measured (PostgreSQL NOTIFY as the channel).

Two real ``conduit serve`` nodes on one fresh PostgreSQL database (dropped at the end), the
real sshd as the asset (set up as ``bench.cluster`` does). An asyncssh client logs in to
node b and runs ``cat``; two watchers (websocket clients with the admin's portal cookie: the
same sign-in works on both nodes) watch it, one through a's portal (relayed from b), one
through b's own. The bench writes a marker line into the session and times, per marker, from
the write until: the client sees its echo (the session's own path, the baseline), the watcher
on b sees it (a local watch), the watcher on a sees it (relayed). Then a bulk run: ``--bulk-mib``
MiB written through ``cat`` in 1 MiB rounds while both watch, each round timed until each
watcher has all of it (a watcher more than 1 MiB behind is dropped by design), with
node a's CPU seconds over the run (what relaying costs the watcher's node).

The alternative is measured only as far as its transport: the same markers and the same bulk
bytes sent as ``pg_notify`` payloads (base64, at most 7,500 characters each: NOTIFY's 8,000
byte limit) from one connection to a LISTENing one on the same PostgreSQL, with the server's
CPU seconds (``pg_stat_activity`` cannot give them; /proc of the PostgreSQL backends can).
The last printed line is one JSON object; ratios are against the local watch in the same run.

Run from the repository root as root: ``python -m bench.cross_node_watch [--count 50]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import asyncssh
from websockets.asyncio.client import ClientConnection, connect

from bench.cluster import (
    ASSET,
    CLIENT_OPTIONS,
    VENDOR,
    Bench,
    Node,
    pg_exec,
    populate,
    summary,
)
from gateway.config import Overrides, load_settings
from gateway.keys import load_keyring
from gateway.services import Services
from tests.sshd_target import missing_reason, start_sshd
from tests.support import clean_env, init_data_dir

NOTIFY_CHUNK = 5600  # bytes: base64 of it is 7,468 characters, under NOTIFY's 8,000


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _postgres_cpu() -> float:
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if (entry / "comm").read_text().strip() == "postgres":
                    total += _cpu_seconds(int(entry.name))
    return total


class Follower:
    """A reader that timestamps when each awaited marker (or byte count) arrives."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.changed = asyncio.Event()

    def feed(self, data: bytes) -> None:
        self.buf += data
        self.changed.set()

    async def until(self, marker: bytes, start: int = 0) -> float:
        while marker not in self.buf[start:]:
            self.changed.clear()
            await self.changed.wait()
        return time.perf_counter()

    async def until_size(self, size: int) -> float:
        while len(self.buf) < size:
            self.changed.clear()
            await self.changed.wait()
        return time.perf_counter()


class Echo(asyncssh.SSHClientSession[bytes]):
    def __init__(self, follower: Follower) -> None:
        self.follower = follower

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.follower.feed(data)


async def _watch(node: Node, cookie: str, session_id: str, follower: Follower) -> ClientConnection:
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE  # the node's own self-signed certificate, on loopback
    base = f"127.0.0.1:{node.portal}"
    ws = await connect(
        f"wss://{base}/ws/watch/{session_id}", ssl=tls, origin=f"https://{base}",  # type: ignore[arg-type]
        additional_headers={"Cookie": cookie}, max_size=None, compression=None,
    )  # fmt: skip
    json.loads(await ws.recv())  # start
    follower.feed(bytes(await ws.recv()))  # the screen

    async def pump() -> None:
        with contextlib.suppress(Exception):
            async for frame in ws:
                if isinstance(frame, bytes):
                    follower.feed(frame)

    ws.pump = asyncio.create_task(pump())  # type: ignore[attr-defined]
    return ws


async def _notify_transport(dsn: str, count: int, bulk: bytes) -> dict[str, Any]:
    """The alternative's transport alone: markers and bulk as pg_notify payloads."""
    listener, sender = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    heard = Follower()
    await listener.add_listener("bench_watch", lambda *a: heard.feed(base64.b64decode(a[3])))
    lat = []
    try:
        for i in range(count):
            marker = f"n-{i}-{secrets.token_hex(4)}\n".encode()
            start = len(heard.buf)
            t0 = time.perf_counter()
            await sender.execute(
                "SELECT pg_notify('bench_watch', $1)", base64.b64encode(marker).decode()
            )
            lat.append((await heard.until(marker, start) - t0) * 1000)
        base = len(heard.buf)
        cpu0, t0 = _postgres_cpu(), time.perf_counter()
        for off in range(0, len(bulk), NOTIFY_CHUNK):
            chunk = base64.b64encode(bulk[off : off + NOTIFY_CHUNK]).decode()
            await sender.execute("SELECT pg_notify('bench_watch', $1)", chunk)
        done = await heard.until_size(base + len(bulk))
        return {"marker_ms": summary(lat), "bulk_s": round(done - t0, 3),
                "postgres_cpu_s": round(_postgres_cpu() - cpu0, 3)}  # fmt: skip
    finally:
        await listener.close()
        await sender.close()


async def run(count: int, bulk_mib: int, work: Path) -> dict[str, Any]:
    name = f"conduit_bench_{secrets.token_hex(6)}"
    await pg_exec(f'CREATE DATABASE "{name}"')
    environ = {"CONDUIT_DATABASE__URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"}
    sshd = start_sshd(work / "sshd")
    nodes: dict[str, Node] = {}
    services: Services | None = None
    try:
        data = work / "data"
        await asyncio.to_thread(init_data_dir, data, env=clean_env(**environ))
        await populate(data, environ, sshd)
        for node in ("a", "b"):
            nodes[node] = Node(node, data, environ, work)
        for node in nodes.values():
            await asyncio.to_thread(node.wait_ready)
        settings = load_settings(None, Overrides(data_dir=data), environ=environ)
        services = Services.build(settings, load_keyring(settings))
        bench = Bench(services, nodes["a"], nodes)
        cookie = "; ".join(f"{k}={v}" for k, v in bench.client.cookies.items())
        b = nodes["b"]
        conn = await asyncssh.connect(
            "127.0.0.1", b.ssh_port, username=f"{VENDOR}+{ASSET}", password=await bench.code(),
            **CLIENT_OPTIONS,
        )  # fmt: skip
        echo = Follower()
        chan, _ = await conn.create_session(lambda: Echo(echo), "cat", encoding=None)
        listed: list[dict[str, Any]] = []
        while not listed:  # the session's row appears once the upstream is connected
            await asyncio.sleep(0.05)
            listed = (await asyncio.to_thread(bench.client.get, "/api/v1/sessions")).json()
        [row] = listed
        local, relayed = Follower(), Follower()
        watchers = [await _watch(b, cookie, row["id"], local),
                    await _watch(nodes["a"], cookie, row["id"], relayed)]  # fmt: skip
        runs: dict[str, list[float]] = {"echo": [], "local": [], "relayed": []}
        for i in range(count):
            marker = f"m-{i}-{secrets.token_hex(4)}\n".encode()
            starts = {k: len(f.buf) for k, f in (("echo", echo), ("local", local),
                                                 ("relayed", relayed))}  # fmt: skip
            t0 = time.perf_counter()
            chan.write(marker)
            for key, follower in (("echo", echo), ("local", local), ("relayed", relayed)):
                try:
                    arrived = await asyncio.wait_for(follower.until(marker, starts[key]), 30)
                except TimeoutError:
                    raise RuntimeError(
                        f"{key} never saw {marker!r}: {bytes(follower.buf[-200:])!r}"
                    ) from None
                runs[key].append((arrived - t0) * 1000)
            await asyncio.sleep(0.02)
        # Bulk in 1 MiB rounds: a watcher more than 1 MiB behind is dropped by design (tap.py),
        # so each round waits until both watchers have all of it.
        bulk_s = {"local": 0.0, "relayed": 0.0}
        cpu_a0 = _cpu_seconds(nodes["a"].proc.pid)
        for _ in range(bulk_mib):
            piece = os.urandom(1 << 19).hex().encode()
            sizes = {"local": len(local.buf) + len(piece), "relayed": len(relayed.buf) + len(piece)}
            t0 = time.perf_counter()
            chan.write(piece)
            for key, follower in (("local", local), ("relayed", relayed)):
                arrived = await asyncio.wait_for(follower.until_size(sizes[key]), 60)
                bulk_s[key] += arrived - t0
        cpu_a = round(_cpu_seconds(nodes["a"].proc.pid) - cpu_a0, 3)
        bulk = os.urandom(1 << 19).hex().encode() * bulk_mib
        for ws in watchers:
            await ws.close()
        conn.close()
        bench.client.close()
        notify = await _notify_transport(f"postgresql://postgres@127.0.0.1:5432/{name}", count,
                                         bulk)  # fmt: skip
    finally:
        if services is not None:
            await services.close()
        for node in nodes.values():
            node.stop()
        sshd.stop()
        await pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    echo_s, local_s, relayed_s = (summary(runs[k]) for k in ("echo", "local", "relayed"))
    for figures in (echo_s, local_s, relayed_s, notify["marker_ms"]):
        figures.pop("runs")
    return {
        "marker_ms": {"client_echo": echo_s, "watch_on_owner": local_s,
                      "watch_relayed": relayed_s, "notify_transport": notify["marker_ms"]},
        "bulk": {"mib": bulk_mib, "watch_on_owner_s": round(bulk_s["local"], 3),
                 "watch_relayed_s": round(bulk_s["relayed"], 3), "relaying_node_cpu_s": cpu_a,
                 "notify_transport_s": notify["bulk_s"],
                 "notify_postgres_cpu_s": notify["postgres_cpu_s"]},
        "ratios": {
            "relayed_vs_owner_p50": round(relayed_s["p50"] / local_s["p50"], 2),
            "relayed_vs_owner_p99": round(relayed_s["p99"] / local_s["p99"], 2),
            "relayed_vs_owner_bulk": _ratio(bulk_s["relayed"], bulk_s["local"]),
            "notify_vs_relayed_bulk": _ratio(notify["bulk_s"], bulk_s["relayed"]),
        },
    }  # fmt: skip


def _ratio(over: float, under: float) -> float:
    return round(over / under, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50, help="markers (1-500)")
    parser.add_argument("--bulk-mib", type=int, default=8, help="bulk MiB (1-256)")
    args = parser.parse_args()
    if not 1 <= args.count <= 500 or not 1 <= args.bulk_mib <= 256:
        raise SystemExit("--count must be 1-500 and --bulk-mib 1-256")
    reason = missing_reason()
    if reason:
        raise SystemExit(f"cross-node watch bench needs the real sshd: {reason}")
    with tempfile.TemporaryDirectory(prefix="conduit-watch-bench-") as tmp:
        figures = asyncio.run(run(args.count, args.bulk_mib, Path(tmp)))
    with contextlib.suppress(BrokenPipeError):
        print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
