"""Benchmark the recording overhead: MB/s and CPU seconds per MB of terminal output through
the full writer (event framing, AES-256-GCM, hash chain, fsync at most every 64 KiB / 1 s,
writer thread) against a plain buffered file append of the same payloads, in the same
process, one run each, bounded to a few seconds (``--mb``, default 64 MB).

CPU time is ``time.process_time()`` (every thread of the process), so the writer's thread is
counted. The last printed line is one JSON object with the figures and ratios; the issue's
target is at least 100 MB/s of terminal output on one core. Baseline and writer code are
``bench.recording_throughput``'s, so the two benchmarks measure the same thing.

Run from the repository root: ``python -m bench.recording_overhead [--mb 64]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from bench.recording_throughput import payloads, plain_append, through_writer

MB = 1_000_000
TARGET_MB_S = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=64, help="MB of output written (one run)")
    parser.add_argument("--event-bytes", type=int, default=4096, help="bytes per output event")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: tmp)")
    args = parser.parse_args()
    # payloads() takes MiB; round the MB request up to whole MiB.
    data = payloads(args.event_bytes, max(1, -(-args.mb * MB // (1 << 20))))
    total_mb = len(data) * args.event_bytes / MB
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="conduit-overhead-") as tmp:
        plain_s, plain_cpu = plain_append(Path(tmp), data, None)
        writer_s, writer_cpu, chunks = asyncio.run(through_writer(Path(tmp) / "writer", data))
    figures = {
        "benchmark": "recording_overhead",
        "mb": round(total_mb, 3),
        "event_bytes": args.event_bytes,
        "chunks": chunks,
        "plain_append_mb_s": round(total_mb / plain_s, 1),
        "writer_mb_s": round(total_mb / writer_s, 1),
        "plain_cpu_s_per_mb": round(plain_cpu / total_mb, 6),
        "writer_cpu_s_per_mb": round(writer_cpu / total_mb, 6),
        "writer_vs_plain_throughput": round(plain_s / writer_s, 4),
        "writer_vs_plain_cpu": round(writer_cpu / plain_cpu, 2) if plain_cpu else None,
        "writer_one_core_mb_s": round(total_mb / writer_cpu, 1) if writer_cpu else None,
        "target_mb_s": TARGET_MB_S,
        "meets_target": total_mb / writer_s >= TARGET_MB_S,
    }
    print(
        f"{total_mb:.1f} MB in {args.event_bytes} B events: writer {figures['writer_mb_s']} MB/s "
        f"({writer_cpu / total_mb * 1000:.2f} ms CPU/MB), plain append "
        f"{figures['plain_append_mb_s']} MB/s ({plain_cpu / total_mb * 1000:.2f} ms CPU/MB)"
    )
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
