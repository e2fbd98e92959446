"""Benchmark the RDP renderer against a local xrdp + xorgxrdp: start times, RSS, concurrency.

One run: a first renderer alone (the baseline), then renderers added one at a time while the
earlier ones keep running, until a start (``start()`` called to the first RDP frame drawn)
passes 2 s or ``--max`` are up. Per start: Xvnc socket ready, RDP connection active, first
RDP frame, and the first RFB FramebufferUpdate read on the socket (a minimal RFB client in
this process). RSS is the renderer's two processes (Xvnc + xfreerdp), read 2 s after start.
The target runs on this machine (sesman Policy=UBDC: an Xorg per connection), so its cost is in
every figure; a remote asset would leave the node only the renderer's share.

Needs root (a local test user, the conduit-render user) and the Debian packages in
deploy/debian-packages.txt. Run from the repository root: ``python -m bench.desktop_rdp``.
The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import time
from pathlib import Path
from typing import Any

from gateway.desktop.freerdp import RenderRequest
from gateway.desktop.renderer import RDPRenderer, ensure_render_account
from tests.rdp_target import RDPTarget, missing_reason, start_rdp_target

LIMIT_S = 2.0


async def first_rfb_update(path: Path) -> None:
    """RFB 3.8, security None, ClientInit, ServerInit, one full update request, the reply."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        await reader.readexactly(12)
        writer.write(b"RFB 003.008\n")
        types = await reader.readexactly((await reader.readexactly(1))[0])
        if 1 not in types:
            raise RuntimeError(f"no security type None: {types!r}")
        writer.write(b"\x01")
        if struct.unpack(">I", await reader.readexactly(4))[0] != 0:
            raise RuntimeError("security None refused")
        writer.write(b"\x01")
        width, height = struct.unpack(">HH", await reader.readexactly(4))
        await reader.readexactly(16)
        await reader.readexactly(struct.unpack(">I", await reader.readexactly(4))[0])
        writer.write(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))
        await writer.drain()
        if (await reader.readexactly(1))[0] != 0:
            raise RuntimeError("first server message is not a FramebufferUpdate")
    finally:
        writer.close()


async def one_start(
    target: RDPTarget, width: int, height: int
) -> tuple[RDPRenderer, dict[str, float]]:
    renderer = RDPRenderer(
        RenderRequest("127.0.0.1", target.port, target.username, target.password,
                      target.fingerprint, width, height)
    )  # fmt: skip
    await renderer.start()
    await first_rfb_update(renderer.socket_path)
    rfb_done = time.monotonic()
    t = renderer.timings
    return renderer, {
        "socket_ready_s": round(t.socket_ready - t.started, 3),
        "active_s": round(t.active - t.started, 3),
        "first_frame_s": round(t.first_frame - t.started, 3),
        "first_rfb_update_s": round(rfb_done - t.started, 3),
    }


async def run(target: RDPTarget, maximum: int, width: int, height: int) -> dict[str, Any]:
    running: list[RDPRenderer] = []
    starts: list[dict[str, float]] = []
    try:
        while len(running) < maximum:
            renderer, figures = await one_start(target, width, height)
            running.append(renderer)
            starts.append(figures)
            if figures["first_frame_s"] > LIMIT_S:
                break
        await asyncio.sleep(2)
        rss = [r.rss_bytes() for r in running]
    finally:
        for renderer in running:
            await renderer.stop("bench")
    baseline = starts[0]["first_frame_s"]
    held = sum(1 for s in starts if s["first_frame_s"] <= LIMIT_S)
    return {
        "geometry": f"{width}x{height}",
        "first": starts[0],
        "starts": starts,
        "rss_mb_per_session": round(sum(rss) / len(rss) / (1 << 20), 1),
        "rss_mb_first": round(rss[0] / (1 << 20), 1),
        "concurrent_within_2s": held,
        "reached_max": held == maximum,
        "last_start_vs_first": round(starts[-1]["first_frame_s"] / baseline, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=int, default=8, help="most renderers at once (1..8)")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    args = parser.parse_args()
    maximum = max(1, min(args.max, 8))
    reason = missing_reason()
    if reason:
        raise SystemExit(reason)
    ensure_render_account()
    target = start_rdp_target()
    try:
        figures = asyncio.run(run(target, maximum, args.width, args.height))
    finally:
        target.stop()
    for index, start in enumerate(figures["starts"], 1):
        print(f"session {index}: {json.dumps(start)}", flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
