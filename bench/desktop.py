"""Benchmark desktop sessions (issue 17): a VNC desktop through Conduit's ``/ws/desktop`` beside
the same desktop reached without Conduit, gateway CPU and RSS per desktop, recording overhead,
and how fast kill, revoke and expiry end a live desktop.

Test bed: a real TigerVNC ``Xvnc`` (VNC authentication, 1024x768) on 127.0.0.1 running an
``xterm`` with ``cat`` (the tty echoes what is typed), and a real ``conduit serve`` with
the desktop as a ``vnc`` asset (password vaulted, recording on: that is the product). The
viewer is a minimal RFB 3.8 client in this process (``websockets`` client, 32-bit colour,
Hextile/CopyRect/RRE/Raw, a framebuffer decoded by ``gateway.desktop.framebuffer``); no
browser runs, so what is timed is the path a browser's noVNC uses, without its drawing.

Baseline: the issue asks for noVNC -> websockify -> Xvnc. websockify is not installed here, so
the stand-in is a minimal websocket-to-TCP relay written in this file (``--relay-to``,
``websockets`` server, one binary frame per TCP read) run as its own process, so that its CPU
is counted apart, as the gateway's is. The baseline viewer does the VNC authentication
itself (the password is the bench's, not a secret); Conduit's viewer speaks security None to
the gateway, which did the target's handshake with the vaulted password.

Parts, in one run:

* ``latency``: a key pressed (down and up) until the first FramebufferUpdate after which the
  decoded framebuffer differs from before (the xterm drew the echoed letter; a keyframe's
  full update repaints the same pixels and does not count), p50/p99 in ms; the two paths
  interleaved in rounds of 20 keys, the other viewer paused meanwhile. Target: Conduit p50
  <= 1.3x baseline.
* ``fps``: a full-screen xterm repainting every cell in random colours at ``--paint-hz``
  (video-like: every frame changes the whole screen); the viewer keeps one incremental update
  request outstanding (a new one as each update arrives, as noVNC does) and counts updates per
  second; paths alternated in windows of ``--fps-seconds``, not decoded. Target: Conduit fps
  >= 0.9x baseline. Gateway CPU (percent of one core) over Conduit's windows, the relay's over
  the baseline's: CPU per desktop session under full-screen change.
* ``recording``: bytes the session's recording takes on disk per minute of that desktop
  session, beside the raw RFB stream relayed (both directions) in the same session.
* ``rss``: gateway VmRSS with ``--hold`` VNC desktops open beside none: KB per session; with
  root and xrdp installed, the RSS of one RDP renderer (Xvnc + xfreerdp) against a local
  xrdp + xorgxrdp target (``bench.desktop_rdp``'s: the gateway's own share is the VNC figure).
* ``end``: ms from a kill (the live table's kill request), a grant revoke, and a grant's
  expiry until the viewer receives the ``{"type": "end"}`` control. Issue target: 1 s.

Run from the repository root: ``python -m bench.desktop [--keys 100] [--hold 4]``. Bounded:
at most 500 keys, 8 held desktops, 20 s fps windows. The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pyotp
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from bench.ssh_relay import percentile, rnd
from bench.ssh_relay_rig import cpu_seconds, start_gateway, status_field, utc_in
from gateway.config import Overrides, load_settings
from gateway.desktop import rfb
from gateway.identity.accounts import create_user
from gateway.keys import load_keyring
from gateway.services import Services
from gateway.sessions import store as live_store
from gateway.vault import set_credential
from tests.desktop_targets import XvncTarget, start_xvnc
from tests.desktop_targets import missing_reason as vnc_missing
from tests.desktop_targets import stop as stop_proc
from tests.desktop_ws import Viewer, open_desktop
from tests.support import init_data_dir

ASSET = "desk"
USER, END_USER = "bench", "ender"
VNC_PASSWORD = "bench-vnc-pw"  # noqa: S105 - a throwaway target's
WIDTH, HEIGHT = 1024, 768
KEYS = b"abcdefghijklmnopqrstuvwxyz"
KEYSYM_RETURN = 0xFF0D
PAINTER = """\
import os, shutil, sys, time
hz = float(sys.argv[1])
cols, rows = shutil.get_terminal_size()
out = sys.stdout.buffer
while True:
    start = time.monotonic()
    noise = os.urandom(cols * (rows - 1))
    frame = bytearray(b"\\x1b[H")
    for r in range(rows - 1):
        for c in noise[r * cols:(r + 1) * cols]:
            frame += b"\\x1b[48;5;%dm " % c
        frame += b"\\r\\n"
    out.write(bytes(frame))
    out.flush()
    time.sleep(max(0.0, 1 / hz - (time.monotonic() - start)))
"""


# -- the baseline relay (a separate process) ---------------------------------------------------
async def relay_main(target_port: int) -> None:
    """websocket -> TCP 127.0.0.1:target_port, bytes as they come: the websockify stand-in."""

    async def handle(ws: ServerConnection) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", target_port)

        async def down() -> None:
            while data := await reader.read(1 << 16):
                await ws.send(data)

        async def up() -> None:
            async for message in ws:
                writer.write(message if isinstance(message, bytes) else message.encode())
                await writer.drain()

        tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()

    async with serve(handle, "127.0.0.1", 0, max_size=None, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"listening {port}", flush=True)
        await asyncio.Future()


def start_relay(work: Path, target_port: int) -> tuple[subprocess.Popen[bytes], int]:
    with (work / "relay.log").open("ab") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.desktop", "--relay-to", str(target_port)],
            stdout=subprocess.PIPE, stderr=sink, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert proc.stdout is not None  # noqa: S101
    line = proc.stdout.readline().decode()
    if not line.startswith("listening "):
        stop_proc(proc)
        raise RuntimeError(f"the baseline relay did not start: {line!r}")
    proc.stdout.close()
    return proc, int(line.split()[1])


# -- the test bed -------------------------------------------------------------------------------
class Bed:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.data = work / "data"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.gateway: subprocess.Popen[bytes] | None = None
        self.target: XvncTarget | None = None
        self.services: Services | None = None
        self.portal_port = self.relay_port = 0
        self.relay: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.target = await asyncio.to_thread(
            start_xvnc, self.work / "xvnc", password=VNC_PASSWORD, geometry=f"{WIDTH}x{HEIGHT}"
        )
        self.procs.append(self.target.proc)
        self.procs.append(self.x_client("xterm", "-geometry", "80x24+0+0", "-fa", "Monospace",
                                        "-fs", "12", "-e", "cat"))  # fmt: skip
        await asyncio.to_thread(init_data_dir, self.data)
        await self._populate()
        self.gateway, self.portal_port, _ = await asyncio.to_thread(
            start_gateway, self.data, self.work
        )
        relay, self.relay_port = await asyncio.to_thread(start_relay, self.work, self.target.port)
        self.relay = relay
        self.procs.append(relay)

    def x_client(self, *argv: str) -> subprocess.Popen[bytes]:
        assert self.target is not None  # noqa: S101
        env = {k: v for k, v in os.environ.items() if k != "XAUTHORITY"}
        env["DISPLAY"] = self.target.display_name
        return subprocess.Popen(
            list(argv), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def svc(self) -> Services:
        if self.services is None:
            settings = load_settings(None, Overrides(data_dir=self.data), environ={})
            self.services = Services.build(settings, load_keyring(settings))
        return self.services

    async def _populate(self) -> None:
        assert self.target is not None  # noqa: S101
        services = self.svc()
        async with services.sessions() as db, db.begin():
            for user, org in ((USER, "acme"), (END_USER, "endorg")):
                await create_user(
                    db, username=user, roles=["vendor"], now=services.clock(),
                    master_key=services.keys.master_key, totp_secret=pyotp.random_base32(),
                    status="active", organisation=org,
                )  # fmt: skip
        await services.authz.add_asset(ASSET, "127.0.0.1", self.target.port, "vnc", actor="bench")
        async with services.sessions() as db, db.begin():
            await set_credential(
                db, services.keys.master_key, asset=ASSET, username="vnc",
                password=VNC_PASSWORD, now=services.clock(),
            )  # fmt: skip
        await services.authz.add_grant(
            subject_kind="user", subject=USER, object_kind="asset", obj=ASSET,
            action="vnc", actor="bench",
        )  # fmt: skip

    async def conduit_viewer(self, user: str = USER) -> Viewer:
        base = f"https://127.0.0.1:{self.portal_port}"
        return await open_desktop(base, self.data, user, ASSET, (WIDTH, HEIGHT))

    async def direct_viewer(self) -> Viewer:
        ws = await connect(f"ws://127.0.0.1:{self.relay_port}", max_size=None, compression=None)
        viewer = Viewer(ws, "direct")
        await viewer.handshake(VNC_PASSWORD)
        return viewer

    def gateway_pid(self) -> int:
        assert self.gateway is not None  # noqa: S101
        return self.gateway.pid

    async def close(self) -> None:
        if self.services is not None:
            await self.services.close()
        if self.gateway is not None:
            stop_proc(self.gateway)
        for proc in reversed(self.procs):
            stop_proc(proc)


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


# -- parts ---------------------------------------------------------------------------------
async def bench_latency(viewers: dict[str, Viewer], keys: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {name: [] for name in viewers}
    typed = dict.fromkeys(viewers, 0)
    for viewer in viewers.values():
        await viewer.pause()
    # Keyboard focus follows the pointer (no window manager): over the xterm.
    first = next(iter(viewers.values()))
    await first.send(rfb.pointer_event(0, 200, 150))
    for r in range(-(-keys // 20)):
        for name, viewer in viewers.items():
            await viewer.resume(decode=True)
            for i in range(min(20, keys - r * 20)):
                samples[name].append(await viewer.key(KEYS[i % 26]))
                typed[name] += 1
                if typed[name] % 60 == 0:  # a new line now and then: the xterm scrolls
                    await viewer.key(KEYSYM_RETURN)
            await viewer.pause()
    out: dict[str, Any] = {"keys": keys, "what": "xterm running cat: the echoed letter drawn"}
    for name, values in samples.items():
        out[name] = {
            "p50_ms": rnd(percentile(values, 0.5), 2),
            "p99_ms": rnd(percentile(values, 0.99), 2),
        }
    out["conduit_vs_direct_p50"] = ratio(out["conduit"]["p50_ms"], out["direct"]["p50_ms"])
    return out


async def bench_fps(
    bed: Bed, viewers: dict[str, Viewer], seconds: float, rounds: int, hz: float
) -> dict[str, Any]:
    painter = bed.x_client(
        "xterm", "-geometry", "170x64+0+0", "-fa", "Monospace", "-fs", "8",
        "-e", sys.executable, "-c", PAINTER, str(hz),
    )  # fmt: skip
    cpu_pid = {"conduit": bed.gateway_pid(), "direct": bed.relay.pid if bed.relay else 0}
    figures: dict[str, dict[str, float]] = {
        name: {"updates": 0, "bytes": 0, "seconds": 0.0, "cpu": 0.0} for name in viewers
    }
    try:
        await asyncio.sleep(2)  # the painter's window is up and painting
        for _ in range(rounds):
            for name, viewer in viewers.items():
                await viewer.resume(decode=False)
                await asyncio.sleep(0.5)
                u0, b0, c0 = viewer.updates, viewer.bytes_in, cpu_seconds(cpu_pid[name])
                t0 = time.perf_counter()
                await asyncio.sleep(seconds)
                f = figures[name]
                f["updates"] += viewer.updates - u0
                f["bytes"] += viewer.bytes_in - b0
                f["cpu"] += cpu_seconds(cpu_pid[name]) - c0
                f["seconds"] += time.perf_counter() - t0
                await viewer.pause()
    finally:
        stop_proc(painter)
    out: dict[str, Any] = {"paint_hz": hz, "window_s": seconds, "rounds": rounds}
    for name, f in figures.items():
        out[name] = {
            "fps": round(f["updates"] / f["seconds"], 1),
            "mbit_s": round(f["bytes"] * 8 / f["seconds"] / 1e6, 1),
            "relay_cpu_percent": round(f["cpu"] / f["seconds"] * 100, 1),
        }
    out["conduit_vs_direct_fps"] = ratio(out["conduit"]["fps"], out["direct"]["fps"])
    out["gateway_cpu_percent_per_session"] = out["conduit"]["relay_cpu_percent"]
    out["gateway_vs_bare_relay_cpu"] = ratio(
        out["conduit"]["relay_cpu_percent"], out["direct"]["relay_cpu_percent"]
    )
    return out


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


async def bench_rss(bed: Bed, hold: int) -> dict[str, Any]:
    pid = bed.gateway_pid()
    await asyncio.sleep(1)
    rss0 = status_field(pid, "VmRSS")
    held = []
    for _ in range(hold):
        viewer = await bed.conduit_viewer()
        await viewer.settle()
        held.append(viewer)
    await asyncio.sleep(2)
    rss1 = status_field(pid, "VmRSS")
    for viewer in held:
        await viewer.close()
    out: dict[str, Any] = {
        "vnc_held": len(held),
        "gateway_rss_kb": {"before": rss0, "held": rss1},
        "vnc_kb_per_session": round((rss1 - rss0) / len(held)) if held else None,
    }
    out["rdp"] = await rdp_rss()
    return out


async def rdp_rss() -> dict[str, Any]:
    """One RDP renderer against a local xrdp target: its processes' RSS (needs root)."""
    from tests.rdp_target import missing_reason as rdp_missing

    if os.geteuid() != 0:
        return {"skipped": "not root (the RDP target needs a local user)"}
    missing = rdp_missing()
    if missing:
        return {"skipped": missing}
    from bench.desktop_rdp import one_start
    from gateway.desktop.renderer import ensure_render_account
    from tests.rdp_target import start_rdp_target

    await asyncio.to_thread(ensure_render_account)
    target = await asyncio.to_thread(start_rdp_target)
    try:
        renderer, starts = await one_start(target, WIDTH, HEIGHT)
        try:
            await asyncio.sleep(2)
            rss = renderer.rss_bytes()
        finally:
            await renderer.stop("bench")
    finally:
        await asyncio.to_thread(target.stop)
    return {"renderer_rss_mb": round(rss / (1 << 20), 1), "first_frame_s": starts["first_frame_s"]}


async def bench_end(bed: Bed, repeat: int) -> dict[str, Any]:
    """Kill, revoke, expiry: ms until the viewer has the end control."""
    services = bed.svc()
    authz = services.authz

    async def session_of(viewer_open: Callable[[], Awaitable[Viewer]]) -> tuple[Viewer, str]:
        async with services.sessions() as db:
            before = {r.session_id for r in await live_store.listing(db)}
        viewer = await viewer_open()
        await viewer.settle()
        async with services.sessions() as db:
            rows = [r for r in await live_store.listing(db) if r.session_id not in before]
        return viewer, rows[0].session_id

    async def grant(until: Any = None) -> str:
        made = await authz.add_grant(
            subject_kind="user", subject=END_USER, object_kind="asset", obj=ASSET,
            action="vnc", actor="bench", valid_until=until,
        )  # fmt: skip
        return made.id

    async def ender() -> Viewer:
        deadline = time.monotonic() + 15
        while True:  # the gateway sees a new grant within its policy poll
            try:
                return await bed.conduit_viewer(END_USER)
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    kills, revokes, expiries, reasons = [], [], [], set()
    for _ in range(repeat):
        viewer, session_id = await session_of(bed.conduit_viewer)
        start = time.perf_counter()
        async with services.sessions() as db, db.begin():
            await live_store.request_kill(db, session_id, "bench-kill", "cli:bench")
        await asyncio.wait_for(viewer.ended.wait(), 15)
        kills.append((viewer.ended_at - start) * 1000)
        reasons.add(viewer.end_reason)
        await viewer.close()

        grant_id = await grant()
        viewer, _ = await session_of(ender)
        start = time.perf_counter()
        await authz.revoke_grant(grant_id, actor="cli:bench")
        await asyncio.wait_for(viewer.ended.wait(), 15)
        revokes.append((viewer.ended_at - start) * 1000)
        reasons.add(viewer.end_reason)
        await viewer.close()

        until = utc_in(5)
        await grant(until)
        viewer, _ = await session_of(ender)
        await asyncio.wait_for(viewer.ended.wait(), 30)
        expiries.append((viewer.ended_wall - until.timestamp()) * 1000)
        reasons.add(viewer.end_reason)
        await viewer.close()
    return {
        "kill_ms": rnd(percentile(kills, 0.5)),
        "revoke_ms": rnd(percentile(revokes, 0.5)),
        "expiry_ms": rnd(percentile(expiries, 0.5)),
        "runs_ms": {
            "kill": [round(v) for v in kills],
            "revoke": [round(v) for v in revokes],
            "expiry": [round(v) for v in expiries],
        },
        "end_lines": sorted(r for r in reasons if r),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    missing = vnc_missing("xterm")
    if missing:
        raise SystemExit(missing)
    figures: dict[str, Any] = {
        "baseline": "websocket-to-TCP relay in this file (websockify stand-in)"
    }
    with tempfile.TemporaryDirectory(prefix="conduit-bench-desktop-") as tmp:
        bed = Bed(Path(tmp))
        try:
            await bed.start()
            await asyncio.sleep(1)
            recordings = bed.svc().settings.recordings_dir
            rec0 = tree_bytes(recordings)
            opened = time.perf_counter()
            viewers = {"conduit": await bed.conduit_viewer(), "direct": await bed.direct_viewer()}
            figures["latency"] = await bench_latency(viewers, args.keys)
            print("latency:", json.dumps(figures["latency"]), flush=True)
            figures["fps"] = await bench_fps(
                bed, viewers, args.fps_seconds, args.fps_rounds, args.paint_hz
            )
            print("fps:", json.dumps(figures["fps"]), flush=True)
            conduit = viewers["conduit"]
            raw = conduit.bytes_in + conduit.bytes_out
            for viewer in viewers.values():
                await viewer.close()
            minutes = (time.perf_counter() - opened) / 60
            await asyncio.sleep(3)  # the recording's last blocks and footer written
            recorded = tree_bytes(recordings) - rec0
            figures["recording"] = {
                "session_minutes": round(minutes, 2),
                "raw_rfb_bytes_per_minute": round(raw / minutes),
                "recording_bytes_per_minute": round(recorded / minutes),
                "recording_vs_raw": ratio(recorded, raw),
            }
            print("recording:", json.dumps(figures["recording"]), flush=True)
            figures["end"] = await bench_end(bed, args.end_repeat)
            print("end:", json.dumps(figures["end"]), flush=True)
            figures["rss"] = await bench_rss(bed, args.hold)
            print("rss:", json.dumps(figures["rss"]), flush=True)
        finally:
            await bed.close()
    lat, fps, end = figures["latency"], figures["fps"], figures["end"]
    figures["targets"] = {
        "fps_at_least_0_9x": fps["conduit_vs_direct_fps"] is not None
        and fps["conduit_vs_direct_fps"] >= 0.9,
        "latency_p50_within_1_3x": lat["conduit_vs_direct_p50"] is not None
        and lat["conduit_vs_direct_p50"] <= 1.3,
        "end_within_1s": all(
            v is not None and v <= 1000
            for v in (end["kill_ms"], end["revoke_ms"], end["expiry_ms"])
        ),
    }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relay-to", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--fps-seconds", type=float, default=6)
    parser.add_argument("--fps-rounds", type=int, default=3)
    parser.add_argument("--paint-hz", type=float, default=30)
    parser.add_argument("--hold", type=int, default=4)
    parser.add_argument("--end-repeat", type=int, default=3)
    args = parser.parse_args()
    if args.relay_to:
        asyncio.run(relay_main(args.relay_to))
        return
    args.keys = max(20, min(args.keys, 500))
    args.fps_seconds = max(2.0, min(args.fps_seconds, 20.0))
    args.fps_rounds = max(1, min(args.fps_rounds, 5))
    args.paint_hz = max(1.0, min(args.paint_hz, 60.0))
    args.hold = max(1, min(args.hold, 8))
    args.end_repeat = max(1, min(args.end_repeat, 5))
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
