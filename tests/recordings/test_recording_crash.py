"""Crash recovery against a real writer process killed with SIGKILL, and a cut-off file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from recording_helpers import Env, frames

from recordings import Integrity, WriterPolicy, recover_recording
from recordings.container import FRAME_CHUNK
from recordings.terminal import TerminalEvent

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def test_sigkilled_writer_recovers_as_incomplete_with_everything_older_than_1s(
    env: Env,
) -> None:
    with subprocess.Popen(
        [
            sys.executable,
            str(HERE / "recording_crash_child.py"),
            str(env.root),
            str(env.format_version),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{REPO}"},
    ) as child:
        try:
            assert child.stdout is not None
            ready = child.stdout.readline().split()
            assert ready[:1] == ["ready"], ready
            rid = ready[1]
            submitted: list[tuple[int, float]] = []
            # Let it run ~2.5 s so several 1-second flushes have happened, then kill it.
            while True:
                seq, stamp = child.stdout.readline().split()
                submitted.append((int(seq), float(stamp)))
                if submitted[-1][1] - submitted[0][1] >= 2.5:
                    break
            killed_at = time.monotonic()
            os.kill(child.pid, signal.SIGKILL)
            rest = child.stdout.read()
        finally:
            child.kill()
            child.wait()
    for line in rest.splitlines():
        seq, stamp = line.split()
        submitted.append((int(seq), float(stamp)))
    assert child.returncode == -signal.SIGKILL

    before = env.verify(rid)
    assert before.status is Integrity.INCOMPLETE and not before.signed

    result = recover_recording(
        env.store, rid, env.data_keys.resolve, env.signing_key, env.verify_keys
    )
    assert result.status is Integrity.INCOMPLETE
    assert result.signed and result.end_reason == "incomplete"

    events, again = env.read(rid)
    assert again.status is Integrity.INCOMPLETE and again.signed
    recorded = [e.payload for e in events]
    # What survived is exactly the first N events, in order.
    assert recorded == [f"line {i:08d}\n".encode() for i in range(len(recorded))]
    due = [seq for seq, stamp in submitted if stamp <= killed_at - 1.0]
    assert len(due) > 100  # the guarantee below is not vacuous
    assert len(recorded) > max(due), (len(recorded), max(due))


async def test_recovery_discards_a_partial_tail_chunk_and_signs(env: Env) -> None:
    payloads = [(TerminalEvent.OUTPUT, bytes([65 + i]) * 700) for i in range(5)]
    rid = await env.write(payloads, policy=WriterPolicy(max_unsynced_bytes=512))
    path = env.path(rid)
    data = path.read_bytes()
    chunks = [f for f in frames(data) if f[0] == FRAME_CHUNK]
    _, start, end = chunks[3]
    path.write_bytes(data[: (start + end) // 2])  # crash in the middle of writing chunk 3

    result = recover_recording(
        env.store, rid, env.data_keys.resolve, env.signing_key, env.verify_keys
    )
    assert result.status is Integrity.INCOMPLETE and result.signed
    assert result.intact_chunks == 3
    events, _ = env.read(rid)
    assert [e.payload for e in events] == [p for _, p in payloads[:3]]
    # A second recovery changes nothing: the recording is closed now.
    again = recover_recording(
        env.store, rid, env.data_keys.resolve, env.signing_key, env.verify_keys
    )
    assert again == result
    assert path.stat().st_size == len(path.read_bytes())


async def test_recovery_leaves_closed_and_tampered_recordings_alone(env: Env) -> None:
    rid = await env.write([(TerminalEvent.OUTPUT, b"x" * 10)])
    before = env.path(rid).read_bytes()
    result = recover_recording(
        env.store, rid, env.data_keys.resolve, env.signing_key, env.verify_keys
    )
    assert result.status is Integrity.INTACT
    assert env.path(rid).read_bytes() == before

    damaged = bytearray(before)
    damaged[-1] ^= 1  # signature byte
    env.path(rid).write_bytes(bytes(damaged))
    result = recover_recording(
        env.store, rid, env.data_keys.resolve, env.signing_key, env.verify_keys
    )
    assert result.status is Integrity.TAMPERED
    assert env.path(rid).read_bytes() == bytes(damaged)
