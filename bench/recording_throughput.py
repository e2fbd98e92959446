"""Benchmark the recording writer: MiB/s of terminal output through the full writer
(event encoding, AES-256-GCM, hash chain, fsync policy, writer thread) against baselines
run alongside in the same process on the same payloads:

* ``plain_append`` - buffered appends of the raw payloads and one fsync at the end;
* ``plain_append_fsync_64k`` - the same with an fsync every 64 KiB: the writer's durability
  policy without encoding, encryption or the thread.

Payloads are random bytes (encryption cost does not depend on content), written as
``TerminalEvent.OUTPUT`` events from an asyncio loop that waits for room whenever more than
8 MiB are queued (the backpressure a relay would apply). Elapsed time runs from the first
event to the footer being fsynced; CPU seconds count every thread of the process. Each size
is one run. The last printed line is one JSON object with the figures and ratios. The issue's
target is at least 100 MB/s of terminal output on one core.

Run from the repository root: ``python -m bench.recording_throughput [--mib 128]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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


def payloads(event_bytes: int, total_mib: int) -> list[bytes]:
    # A pool of distinct random payloads reused round-robin: generation stays out of timing.
    pool = [os.urandom(event_bytes) for _ in range(64)]
    count = (total_mib << 20) // event_bytes
    return [pool[i % len(pool)] for i in range(count)]


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


async def through_writer(directory: Path, data: list[bytes]) -> tuple[float, float, int]:
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
    return elapsed, cpu_used, outcome.chunk_count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=128, help="MiB written per event size")
    parser.add_argument("--event-bytes", default="512,4096,32768")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: tmp)")
    args = parser.parse_args()
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="conduit-bench-") as tmp:
        for event_bytes in (int(s) for s in args.event_bytes.split(",")):
            data = payloads(event_bytes, args.mib)
            mib = len(data) * event_bytes / (1 << 20)
            plain_s, plain_cpu = plain_append(Path(tmp), data, None)
            synced_s, synced_cpu = plain_append(Path(tmp), data, 64 << 10)
            writer_s, writer_cpu, chunks = asyncio.run(
                through_writer(Path(tmp) / str(event_bytes), data)
            )
            row = {
                "mib": mib,
                "plain_append_mib_s": mib / plain_s,
                "plain_append_fsync_64k_mib_s": mib / synced_s,
                "writer_mib_s": mib / writer_s,
                "plain_cpu_s_per_mib": plain_cpu / mib,
                "plain_fsync_64k_cpu_s_per_mib": synced_cpu / mib,
                "writer_cpu_s_per_mib": writer_cpu / mib,
                "writer_vs_plain_throughput": plain_s / writer_s,
                "writer_vs_plain_fsync_64k_throughput": synced_s / writer_s,
                "writer_vs_plain_cpu": writer_cpu / plain_cpu if plain_cpu else float("inf"),
                "chunks": chunks,
            }
            figures[str(event_bytes)] = row
            print(
                f"{event_bytes:>6} B events: writer {row['writer_mib_s']:8.1f} MiB/s "
                f"({row['writer_cpu_s_per_mib'] * 1000:.2f} ms CPU/MiB), plain append "
                f"{row['plain_append_mib_s']:8.1f} MiB/s, with fsync/64 KiB "
                f"{row['plain_append_fsync_64k_mib_s']:8.1f} MiB/s, "
                f"ratio {row['writer_vs_plain_throughput']:.3f}"
            )
    slowest = min(row["writer_mib_s"] for row in figures.values())
    summary = {
        "benchmark": "recording_throughput",
        "by_event_bytes": {k: {n: round(v, 4) for n, v in r.items()} for k, r in figures.items()},
        "min_writer_mib_s": round(slowest, 1),
        "target_mib_s": 100,
        "meets_target": slowest >= 100,
    }
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
