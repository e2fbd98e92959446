"""Writer behaviour between start and close: time-based sealing, backpressure, bad input."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest
from recording_helpers import STARTED_AT, Env

from recordings import (
    Header,
    Integrity,
    Kind,
    MasterKey,
    RecordingSink,
    RecordingWriter,
    WriterPolicy,
    rewrap_data_key,
    start_recording,
)
from recordings.ids import new_recording_id
from recordings.keys import UnknownKey, unwrap_data_key
from recordings.terminal import TerminalEvent


async def test_quiet_session_is_synced_by_time_before_close(env: Env) -> None:
    writer = await env.start(policy=WriterPolicy(max_unsynced_seconds=0.2))
    assert writer.record(TerminalEvent.OUTPUT, b"one small line\n")
    path = env.path(writer.recording_id)
    # No more events and no close: only the time threshold can put this chunk on disk.
    for _ in range(1000):
        snapshot = path.read_bytes()
        result = env.verify_bytes(snapshot)
        if result.intact_chunks == 1:
            break
        await asyncio.sleep(0.01)
    assert result.status is Integrity.INCOMPLETE and result.intact_chunks == 1
    await writer.close("closed")
    assert env.verify(writer.recording_id).status is Integrity.INTACT


class GateSink(RecordingSink):
    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.blocked = threading.Event()
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        if not self.gate.is_set():
            self.blocked.set()
        self.gate.wait()
        self.data += data

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


def _voluntary_switches(native_id: int) -> int:
    """How often a thread of this process went to sleep (/proc, per thread)."""
    status = f"/proc/self/task/{native_id}/status"
    with open(status) as lines:
        for line in lines:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError(f"no context switches in {status}")


async def test_typing_does_not_wake_the_writer_per_keystroke(env: Env) -> None:
    """Small events within the seal interval wait for the writer's deadline: a keystroke
    costs the relay no thread wake-up, and the bound on unsynced data still holds."""
    writer = await env.start(policy=WriterPolicy(max_unsynced_seconds=0.5))
    native_id = writer._thread.native_id  # noqa: SLF001 - the writer's own thread
    assert native_id is not None
    await asyncio.sleep(0.05)  # the thread is waiting for its first event
    before = _voluntary_switches(native_id)
    keystrokes = 150
    for _ in range(keystrokes):
        assert writer.record(TerminalEvent.INPUT, b"k")
        assert writer.record(TerminalEvent.OUTPUT, b"k")
        await asyncio.sleep(0.004)
    wakeups = _voluntary_switches(native_id) - before
    # ~0.6 s of typing with a 0.45 s seal deadline: a few wake-ups, not one per event.
    assert wakeups < 20, f"{wakeups} writer wake-ups for {2 * keystrokes} events"
    # And every event was sealed within the bound without close: wait past one deadline.
    path = env.path(writer.recording_id)
    await asyncio.sleep(0.6)
    assert env.verify_bytes(path.read_bytes()).intact_chunks >= 1
    await writer.close("closed")
    result = env.verify(writer.recording_id)
    assert result.status is Integrity.INTACT


async def test_room_waits_until_the_writer_catches_up(env: Env) -> None:
    data_key_id, data_key = env.data_keys.new_data_key()
    header = Header(
        new_recording_id(),
        Kind.TERMINAL,
        STARTED_AT,
        data_key_id,
        format_version=env.format_version,
    )
    sink = GateSink()
    writer = await RecordingWriter.start(
        sink,
        header,
        data_key,
        env.signing_key,
        clock=time.monotonic,
        on_failure=env.failures.append,
        policy=WriterPolicy(max_unsynced_bytes=16, max_queued_bytes=1 << 20),
    )
    sink.gate.clear()
    assert writer.record(TerminalEvent.OUTPUT, b"first")
    assert await asyncio.to_thread(sink.blocked.wait, 30)  # the writer is stuck in write()
    for _ in range(20):
        assert writer.record(TerminalEvent.OUTPUT, b"p" * 1000)
    waiting = asyncio.ensure_future(writer.room(100))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # the queue is still full: a relay would stay paused
    sink.gate.set()
    await asyncio.wait_for(waiting, timeout=30)
    assert writer.queued_bytes <= 100
    outcome = await writer.close("closed")
    assert outcome.footer_written and env.failures == []


async def test_event_type_outside_a_byte_is_a_programming_error(env: Env) -> None:
    writer = await start_recording(
        store=env.store,
        data_keys=env.data_keys,
        signing_key=env.signing_key,
        kind=Kind.TUNNEL,
        started_at=STARTED_AT,
        metadata={},
        clock=time.monotonic,
        on_failure=env.failures.append,
        format_version=env.format_version,
    )
    with pytest.raises(ValueError):
        writer.record(256, b"x")
    with pytest.raises(ValueError):
        writer.record(-1, b"x")
    assert writer.record(255, bytearray(b"mutable"))
    await writer.close("closed")
    events, result = env.read(writer.recording_id)
    assert result.status is Integrity.INTACT
    assert [(e.type, e.payload) for e in events] == [(255, b"mutable")]


async def test_bad_end_reason_is_refused(env: Env) -> None:
    writer = await start_recording(
        store=env.store,
        data_keys=env.data_keys,
        signing_key=env.signing_key,
        kind=Kind.TERMINAL,
        started_at=STARTED_AT,
        metadata={},
        clock=time.monotonic,
        on_failure=env.failures.append,
        format_version=env.format_version,
    )
    with pytest.raises(ValueError):
        await writer.close("Bad Reason\n")
    assert (await writer.close("closed")).footer_written


def test_rewrap_moves_a_key_to_the_new_master_only(env: Env) -> None:
    data_key_id, data_key = env.data_keys.new_data_key()
    wrapped = env.key_store.get(data_key_id)
    new_master = MasterKey("m2", os.urandom(32))
    rewrapped = rewrap_data_key({"m1": env.master}, wrapped, new_master)
    assert rewrapped.master_key_id == "m2" and rewrapped.data_key_id == data_key_id
    assert unwrap_data_key({"m2": new_master}, rewrapped) == data_key
    with pytest.raises(UnknownKey):
        unwrap_data_key({"m1": env.master}, rewrapped)
    with pytest.raises(UnknownKey):
        rewrap_data_key({"m9": new_master}, wrapped, new_master)
    assert "key=" not in repr(env.master) and env.master.key.hex() not in repr(env.master)
