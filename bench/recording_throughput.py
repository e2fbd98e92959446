"""Benchmark the recording writer: MiB/s of terminal output through the full writer
(event encoding, compression in format 2, AES-256-GCM, hash chain, fsync policy, writer
thread), format 1 beside format 2, against baselines run alongside in the same process on the
same payloads:

* ``plain_append`` - buffered appends of the raw payloads and one fsync at the end;
* ``plain_append_fsync_64k`` - the same with an fsync every 64 KiB: the writer's durability
  policy without encoding, encryption or the thread.

Two payloads: ``random`` bytes (incompressible) and ``text``, this machine's ``ls -lR /usr``
output (CRLF line ends) cut into events: format 2 compresses it, so each figure is given for
both. Written as ``TerminalEvent.OUTPUT`` events from an asyncio loop that waits for room
whenever more than 8 MiB are queued (the backpressure a relay would apply). Elapsed time runs
from the first event to the footer being fsynced; CPU seconds count every thread of the
process, and ``writer_mib_per_cpu_s`` (MiB per CPU-second: per core) is the figure that does
not depend on how many cores the writer thread gets. Each size is one run. The last printed
line is one JSON object with the figures and ratios (v2 over v1). The original target is at
least 100 MB/s of terminal output on one core.

Run from the repository root: ``python -m bench.recording_throughput [--mib 128]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from recordings import (
    DataKeyRing,
    Integrity,
    Kind,
    LocalDataKeyStore,
    LocalRecordingStore,
    MasterKey,
    signing_key_id,
    start_recording,
    verify_recording,
)
from recordings.terminal import TerminalEvent

BACKPRESSURE_BYTES = 8 << 20


def text_corpus() -> bytes:
    """Realistic terminal text: ``ls -lR /usr`` of this machine, LF -> CRLF (as a pty)."""
    listing = subprocess.run(
        ["ls", "-lR", "/usr"], capture_output=True, check=False, timeout=120
    ).stdout.replace(b"\n", b"\r\n")
    if len(listing) < 1 << 20:
        raise SystemExit("ls -lR /usr gave less than 1 MiB of text: no corpus")
    return listing


def payloads(event_bytes: int, total_mib: int, kind: str, corpus: bytes) -> list[bytes]:
    """Events adding up to ``total_mib``; generation stays out of timing. Random: a pool of
    distinct payloads (at least 64, and 1 MiB of them) reused round-robin, so no chunk
    (64 KiB, compressed on its own) ever holds a payload twice. Text: consecutive slices of
    the corpus."""
    count = (total_mib << 20) // event_bytes
    if kind == "random":
        pool = [os.urandom(event_bytes) for _ in range(max(64, (1 << 20) // event_bytes))]
        return [pool[i % len(pool)] for i in range(count)]
    slices = max(1, len(corpus) // event_bytes)
    return [
        corpus[(i % slices) * event_bytes : (i % slices + 1) * event_bytes] for i in range(count)
    ]


def plain_append(directory: Path, data: list[bytes], sync_every: int | None) -> tuple[float, float]:
    """Buffered appends of the raw payloads; with ``sync_every``, fsync after that many bytes
    (the writer's durability policy without encoding, encryption or a thread)."""
    path = directory / "plain.bin"
    wall, cpu = time.perf_counter(), time.process_time()
    unsynced = 0
    with path.open("ab") as out:
        for payload in data:
            out.write(payload)
            unsynced += len(payload)
            if sync_every is not None and unsynced >= sync_every:
                out.flush()
                os.fsync(out.fileno())
                unsynced = 0
        out.flush()
        os.fsync(out.fileno())
    result = time.perf_counter() - wall, time.process_time() - cpu
    path.unlink()
    return result


async def through_writer(
    directory: Path, data: list[bytes], format_version: int
) -> tuple[float, float, int, int]:
    store = LocalRecordingStore(directory / "rec")
    master = MasterKey("bench", os.urandom(32))
    keys = DataKeyRing(LocalDataKeyStore(directory / "keys"), master)
    signing_key = Ed25519PrivateKey.generate()
    failures: list[str] = []
    writer = await start_recording(
        store=store,
        data_keys=keys,
        signing_key=signing_key,
        kind=Kind.TERMINAL,
        started_at=datetime.now(UTC),
        metadata={},
        clock=time.monotonic,
        on_failure=failures.append,
        format_version=format_version,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    for i, payload in enumerate(data):
        # Checking the queue costs a lock; a relay would check per read, not per byte.
        if i % 64 == 0 and writer.queued_bytes > BACKPRESSURE_BYTES:
            await writer.room(BACKPRESSURE_BYTES // 2)
        if not writer.record(TerminalEvent.OUTPUT, payload):
            raise SystemExit(f"writer refused an event: {failures}")
    outcome = await writer.close("bench")
    elapsed, cpu_used = time.perf_counter() - wall, time.process_time() - cpu
    if not outcome.footer_written or failures:
        raise SystemExit(f"writer failed: {failures or outcome}")
    public = signing_key.public_key()
    with store.open_read(writer.recording_id) as stream:
        verdict = verify_recording(stream, keys.resolve, {signing_key_id(public): public})
    if verdict.status is not Integrity.INTACT:
        raise SystemExit(f"benchmark recording does not verify: {verdict}")
    return elapsed, cpu_used, outcome.chunk_count, outcome.stored_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=128, help="MiB written per event size")
    parser.add_argument("--event-bytes", default="512,4096,32768")
    parser.add_argument("--payloads", default="random,text")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: tmp)")
    args = parser.parse_args()
    figures: dict[str, dict[str, float]] = {}
    corpus = text_corpus()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="conduit-bench-") as tmp:
        for kind in args.payloads.split(","):
            for event_bytes in (int(s) for s in args.event_bytes.split(",")):
                data = payloads(event_bytes, args.mib, kind, corpus)
                mib = len(data) * event_bytes / (1 << 20)
                plain_s, plain_cpu = plain_append(Path(tmp), data, None)
                synced_s, synced_cpu = plain_append(Path(tmp), data, 64 << 10)
                row: dict[str, float] = {
                    "mib": mib,
                    "plain_append_mib_s": mib / plain_s,
                    "plain_append_fsync_64k_mib_s": mib / synced_s,
                    "plain_cpu_ms_per_mib": plain_cpu * 1000 / mib,
                }
                for version in (1, 2):
                    where = Path(tmp) / f"{kind}-{event_bytes}-v{version}"
                    writer_s, writer_cpu, chunks, stored = asyncio.run(
                        through_writer(where, data, version)
                    )
                    v = f"v{version}_"
                    row[v + "writer_mib_s"] = mib / writer_s
                    row[v + "writer_mib_per_cpu_s"] = mib / writer_cpu
                    row[v + "writer_cpu_ms_per_mib"] = writer_cpu * 1000 / mib
                    row[v + "stored_vs_output"] = stored / (mib * (1 << 20))
                    row[v + "vs_plain_fsync_64k_throughput"] = synced_s / writer_s
                    row[v + "chunks"] = chunks
                row["v2_vs_v1_mib_per_cpu_s"] = (
                    row["v2_writer_mib_per_cpu_s"] / row["v1_writer_mib_per_cpu_s"]
                )
                row["v2_vs_v1_mib_s"] = row["v2_writer_mib_s"] / row["v1_writer_mib_s"]
                figures[f"{kind}/{event_bytes}"] = row
                print(
                    f"{kind:6} {event_bytes:>6} B: v1 {row['v1_writer_mib_s']:7.1f} MiB/s "
                    f"{row['v1_writer_mib_per_cpu_s']:7.1f} MiB/CPU-s, stored "
                    f"{row['v1_stored_vs_output']:.3f}x | v2 {row['v2_writer_mib_s']:7.1f} MiB/s "
                    f"{row['v2_writer_mib_per_cpu_s']:7.1f} MiB/CPU-s, stored "
                    f"{row['v2_stored_vs_output']:.3f}x | plain+fsync/64K "
                    f"{row['plain_append_fsync_64k_mib_s']:7.1f} MiB/s",
                    flush=True,
                )
    slowest = min(row["v2_writer_mib_per_cpu_s"] for row in figures.values())
    summary = {
        "benchmark": "recording_throughput",
        "by_payload_and_event_bytes": {
            k: {n: round(v, 4) for n, v in r.items()} for k, r in figures.items()
        },
        "min_v2_writer_mib_per_cpu_s": round(slowest, 1),
        "target_mib_s_per_core": 100,
        "meets_target": slowest >= 100,
    }
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
