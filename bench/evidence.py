"""Benchmark the auditors' evidence pages (issue 16): first frame of a huge recording, search
across many recordings, and the session history with many sessions on PostgreSQL.

Parts (``--only``; default all):

* ``frame``: a terminal recording of ``--size`` bytes of output (default 1 GiB; 64 MiB for a
  quick run) written by the real ``RecordingWriter`` into a data directory that a real
  ``conduit serve`` reads. Server: a signed-in auditor opens the player page at
  ``?t=0.5`` and fetches the cast URL it names over HTTPS; time to the first cast bytes and
  to the last. Browser: Debian's Chromium (Playwright) opens the same page; time from
  navigation to the first visible text in the player, and when the cast's download ended
  (None if it never did within ``--browser-timeout``). Baseline: ``conduit recordings
  export`` of the same recording to a file. Target: first frame <= 2 s whatever the size.
* ``search``: ``--recordings`` small recordings (made and indexed by the recordings service
  as at a session's end), then ``/evidence/search`` over HTTPS for a word in one recording
  and a word in all; p50/p95 over ``--repeat`` requests (wall time on loopback: server time
  plus a local round trip). Baseline: the same queries through ``RecordingService.search``
  in this process on the same database.
* ``history``: ``bench.evidence_history.time_history_page`` with ``--sessions`` rows in a
  throwaway PostgreSQL database (127.0.0.1:5432, trust auth; created, then dropped).
  Target: < 300 ms server time.

The last printed line is one JSON object: figures, ratios and whether each target holds.
Run from the repository root: ``python -m bench.evidence [--size-mib 64] [--only frame]``.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import re
import secrets
import ssl
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.evidence_history import time_history_page
from bench.evidence_site import AUDITOR, Site, big_output
from tests.support import PG_ADMIN_DSN, Served, serving

PARTS = ("frame", "search", "history")
MIB = 1 << 20
MAX_SIZE_MIB = 4096
FRAME_AT = 0.5  # seconds into the recording: the first frame asked for
CAST_URL = re.compile(r'data-cast="([^"]+)"')
CHROMIUM = "/usr/bin/chromium"


def portal_client(site: Site, served: Served, cookie: tuple[str, str]) -> httpx.AsyncClient:
    tls = ssl.create_default_context(cafile=str(site.data_dir / "tls" / "portal.crt"))
    return httpx.AsyncClient(
        base_url=served.base, verify=tls, timeout=3600, cookies={cookie[0]: cookie[1]}
    )


async def server_cast(client: httpx.AsyncClient, recording_id: str) -> dict[str, Any]:
    """The player page, then its cast: seconds to the page, the first cast bytes, the last."""
    began = time.perf_counter()
    page = await client.get(f"/evidence/recordings/{recording_id}?t={FRAME_AT}")
    page.raise_for_status()
    found = CAST_URL.search(page.text)
    if found is None:
        raise RuntimeError("the player page names no cast URL")
    paged = time.perf_counter() - began
    first: float | None = None
    size = 0
    async with client.stream("GET", html.unescape(found.group(1))) as answer:
        answer.raise_for_status()
        async for chunk in answer.aiter_raw():
            if first is None and chunk:
                first = time.perf_counter() - began
            size += len(chunk)
    return {"page_s": rnd(paged), "first_bytes_s": rnd(first),
            "last_bytes_s": rnd(time.perf_counter() - began), "cast_bytes": size}  # fmt: skip


def browser_first_text(
    base: str, cookie: tuple[str, str], path: str, timeout_s: float
) -> dict[str, Any]:
    """Chromium opens the player page; seconds to the first text on the player's screen and
    to the end of the cast's download (None when either did not happen in time)."""
    from playwright.sync_api import Error, sync_playwright

    out: dict[str, Any] = {"first_text_s": None, "cast_done_s": None, "error": None}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            context = browser.new_context(ignore_https_errors=True)
            name, value = cookie
            context.add_cookies(
                [{"name": name, "value": value, "url": base, "secure": True, "httpOnly": True}]
            )
            page = context.new_page()
            began = time.perf_counter()

            def finished(request: Any) -> None:
                if "/cast" in request.url and out["cast_done_s"] is None:
                    out["cast_done_s"] = rnd(time.perf_counter() - began)

            page.on("requestfinished", finished)
            page.on("requestfailed", lambda r: out.update(error=f"cast failed: {r.failure}")
                    if "/cast" in r.url else None)  # fmt: skip
            try:
                page.goto(base + path, wait_until="commit")
                page.wait_for_function(
                    "() => { const t = document.querySelector('#player .ap-term');"
                    " return t !== null && t.innerText.trim().length > 0; }",
                    timeout=timeout_s * 1000, polling=20,
                )  # fmt: skip
                out["first_text_s"] = rnd(time.perf_counter() - began)
            except Error as exc:
                out["error"] = out["error"] or f"{type(exc).__name__}: {str(exc)[:160]}"
            out["status"] = page.locator("#player-status").inner_text(timeout=2000)
            context.close()
        finally:
            browser.close()
    return out


async def bench_frame(root: Path, size: int, browser: bool, timeout_s: float) -> dict[str, Any]:
    site = await Site.create(root / "frame")
    try:
        began = time.perf_counter()
        recording_id = await site.record("vendor", "plc-big", big_output(size))
        written = time.perf_counter() - began
        entry = await site.services.recordings.entry(recording_id)
        out: dict[str, Any] = {
            "output_bytes": size,
            "file_bytes": entry.size_bytes,
            "write_and_verify_s": rnd(written),
            "integrity": entry.integrity,
        }
        cookie = await site.auditor_cookie()
        with serving(site.data_dir) as (served, _ssh):
            async with portal_client(site, served, cookie) as client:
                out["server"] = await server_cast(client, recording_id)
            print("frame server:", json.dumps(out["server"]), flush=True)
            if browser:
                path = f"/evidence/recordings/{recording_id}?t={FRAME_AT}"
                out["browser"] = await asyncio.to_thread(
                    browser_first_text, served.base, cookie, path, timeout_s
                )
                print("frame browser:", json.dumps(out["browser"]), flush=True)
        began = time.perf_counter()
        done = site.export(recording_id, root / "frame" / "export.cast")
        out["export_s"] = rnd(time.perf_counter() - began)
        out["export_ok"] = done.returncode == 0
        (root / "frame" / "export.cast").unlink(missing_ok=True)
    finally:
        await site.close()
    first = (out.get("browser") or {}).get("first_text_s")
    out["first_text_vs_export"] = ratio(first, out["export_s"])
    out["server_first_bytes_vs_export"] = ratio(out["server"]["first_bytes_s"], out["export_s"])
    out["server_last_bytes_vs_export"] = ratio(out["server"]["last_bytes_s"], out["export_s"])
    return out


def small_output(i: int, word: str) -> Any:
    """About 50 lines of a maintenance session; recording 0 alone prints ``word``."""
    lines = [f"recording {i} line {n}: valve {n % 7} position {n * 3 % 100} percent, pump ok"
             for n in range(50)]  # fmt: skip
    if i == 0:
        lines[25] = f"the rare word is {word}"
    text = ("\r\n".join(lines) + "\r\n").encode()
    return lambda n: text if n == 0 else None


async def bench_search(root: Path, recordings: int, repeat: int) -> dict[str, Any]:
    site = await Site.create(root / "search")
    word = "okapi" + secrets.token_hex(4)
    try:
        began = time.perf_counter()
        for i in range(recordings):
            await site.record(f"user{i % 20}", f"asset-{i % 30}", small_output(i, word))
        out: dict[str, Any] = {"recordings": recordings, "made_s": rnd(time.perf_counter() - began)}
        queries = {"rare": word, "common": "valve pump"}
        cookie = await site.auditor_cookie()
        with serving(site.data_dir) as (served, _ssh):
            async with portal_client(site, served, cookie) as client:
                for name, query in queries.items():
                    times = []
                    for _ in range(repeat):
                        start = time.perf_counter()
                        answer = await client.get("/evidence/search", params={"q": query})
                        times.append(time.perf_counter() - start)
                        answer.raise_for_status()
                    out[f"http_{name}"] = spread(times)
        for name, query in queries.items():
            times, hits = [], 0
            for _ in range(repeat):
                start = time.perf_counter()
                hits = len(await site.services.recordings.search(query, actor=AUDITOR))
                times.append(time.perf_counter() - start)
            out[f"service_{name}"] = {**spread(times), "hits": hits}
            out[f"http_vs_service_p50_{name}"] = ratio(
                out[f"http_{name}"]["p50_ms"], out[f"service_{name}"]["p50_ms"]
            )
    finally:
        await site.close()
    return out


async def bench_history(sessions: int, repeat: int) -> dict[str, Any]:
    """``time_history_page`` on a database made for it and dropped after."""
    name = f"conduit_bench_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
            figures = await time_history_page(sessions, repeat=repeat, database_url=url)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
    worst = max(figures[k]["median_ms"] for k in ("newest_page", "middle_page", "one_user"))
    figures["worst_median_ms"] = worst
    return figures


def spread(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {"p50_ms": round(statistics.median(ms), 2),
            "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 2)}  # fmt: skip


def rnd(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def verdict(figures: dict[str, Any]) -> dict[str, bool | None]:
    frame, history = figures.get("frame"), figures.get("history")
    first = (frame or {}).get("browser", {}).get("first_text_s") if frame else None
    return {
        "first_frame_within_2_s": None if frame is None else first is not None and first <= 2,
        "history_under_300_ms": None if history is None else history["worst_median_ms"] < 300,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    parts = args.only or list(PARTS)
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="conduit-bench-evidence-") as tmp:
        root = Path(tmp)
        if "frame" in parts:
            figures["frame"] = await bench_frame(
                root, args.size_mib * MIB, not args.no_browser, args.browser_timeout
            )
            print("frame:", json.dumps(figures["frame"]), flush=True)
        if "search" in parts:
            figures["search"] = await bench_search(root, args.recordings, args.repeat)
            print("search:", json.dumps(figures["search"]), flush=True)
    if "history" in parts:
        figures["history"] = await bench_history(args.sessions, args.repeat)
        print("history:", json.dumps(figures["history"]), flush=True)
    figures["targets"] = verdict(figures)
    return figures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size-mib", type=int, default=1024, help="output of the big recording")
    parser.add_argument("--no-browser", action="store_true", help="server side of frame only")
    parser.add_argument("--browser-timeout", type=float, default=120.0)
    parser.add_argument("--recordings", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=30)


def bounded(args: argparse.Namespace) -> argparse.Namespace:
    args.size_mib = max(1, min(args.size_mib, MAX_SIZE_MIB))
    args.browser_timeout = max(5.0, min(args.browser_timeout, 1800.0))
    args.recordings = max(1, min(args.recordings, 20_000))
    args.sessions = max(1, min(args.sessions, 1_000_000))
    args.repeat = max(3, min(args.repeat, 1000))
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=PARTS)
    add_arguments(parser)
    result = asyncio.run(run(bounded(parser.parse_args())))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
