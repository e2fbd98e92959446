"""Child process for the crash test: records output events until it is SIGKILLed.

Usage: python recording_crash_child.py ROOT VERSION (the container format, 1 or 2). Prints
``ready <id>`` then, after each event is handed to the writer, ``<seq> <time.monotonic()>``
(monotonic is system-wide on Linux, so the parent can compare it with its own clock).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from recording_helpers import STARTED_AT, make_env

from recordings import Kind, start_recording
from recordings.terminal import TerminalEvent


async def main(root: Path, format_version: int) -> None:
    env = make_env(root, format_version)
    writer = await start_recording(
        store=env.store,
        data_keys=env.data_keys,
        signing_key=env.signing_key,
        kind=Kind.TERMINAL,
        started_at=STARTED_AT,
        metadata={},
        clock=time.monotonic,
        on_failure=lambda reason: print(f"failed {reason}", flush=True),
        format_version=format_version,
    )
    print(f"ready {writer.recording_id}", flush=True)
    seq = 0
    while True:
        if not writer.record(TerminalEvent.OUTPUT, f"line {seq:08d}\n".encode()):
            print("refused", flush=True)
            return
        print(f"{seq} {time.monotonic()!r}", flush=True)
        seq += 1
        await asyncio.sleep(0.002)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
