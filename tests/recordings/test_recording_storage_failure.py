"""Fail closed: full disk, read-only storage, I/O errors and a slow disk end the session.

Storage failures are produced two ways. Real: a 64 KiB tmpfs (ENOSPC mid-recording) and a
tmpfs remounted read-only (the recording cannot be created, so the session is refused);
these need root and mount(2), and skip if mounting is not permitted. Injected: a sink that
raises OSError (EROFS, EIO) at a chosen write or fsync, which always runs.
"""

from __future__ import annotations

import asyncio
import errno
import io
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from recording_helpers import STARTED_AT, Env, make_env

from recordings import (
    RECORDING_FAILED,
    Header,
    Integrity,
    Kind,
    LocalRecordingStore,
    RecordingReader,
    RecordingSink,
    RecordingUnavailable,
    RecordingWriter,
    WriterPolicy,
    new_recording_id,
)
from recordings.terminal import TerminalEvent


def _mount(args: list[str]) -> bool:
    done = subprocess.run(["mount", *args], capture_output=True, check=False)
    return done.returncode == 0


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    if not _mount(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mountpoint)]):
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


class Recorder:
    """A session stand-in: records the failure callback and wakes the test."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.failed = asyncio.Event()

    def on_failure(self, reason: str) -> None:
        self.reasons.append(reason)
        self.failed.set()


async def _start(
    env: Env, recorder: Recorder, policy: WriterPolicy | None = None
) -> RecordingWriter:
    return await env.start(policy=policy, on_failure=recorder.on_failure)


async def test_full_disk_mid_recording_fires_on_failure_once(
    tmp_path: Path, small_fs: Path, format_version: int
) -> None:
    env = make_env(tmp_path, format_version)
    env.store = LocalRecordingStore(small_fs / "rec")
    recorder = Recorder()
    writer = await _start(env, recorder, WriterPolicy(max_unsynced_bytes=4096))
    accepted = 0
    for _ in range(200):  # 800 KiB into a 64 KiB filesystem; random: format 2 compresses
        if not writer.record(TerminalEvent.OUTPUT, os.urandom(4096)):
            break
        accepted += 1
        await asyncio.sleep(0.001)  # give the writer thread a turn, like a real relay
    await asyncio.wait_for(recorder.failed.wait(), timeout=30)
    assert len(recorder.reasons) == 1
    assert "No space left" in recorder.reasons[0]
    assert accepted < 200
    assert not writer.record(TerminalEvent.OUTPUT, b"after failure")
    outcome = await writer.close(RECORDING_FAILED)
    assert not outcome.footer_written
    assert outcome.failure == recorder.reasons[0]
    assert recorder.reasons == [outcome.failure]  # still exactly once


async def test_read_only_storage_refuses_to_open_the_recording(
    tmp_path: Path, small_fs: Path, format_version: int
) -> None:
    env = make_env(tmp_path, format_version)
    env.store = LocalRecordingStore(small_fs / "rec")
    assert _mount(["-o", "remount,ro", str(small_fs)])
    recorder = Recorder()
    with pytest.raises(RecordingUnavailable, match="Read-only"):
        await _start(env, recorder)
    assert list(env.store.ids()) == []


class FailingSink(RecordingSink):
    """Fails with ``error`` on the ``fail_at``-th write (1-based) or on the first sync after it."""

    def __init__(self, error: OSError, *, fail_at: int, on: str = "write") -> None:
        self.error = error
        self.fail_at = fail_at
        self.on = on
        self.writes = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes += 1
        if self.on == "write" and self.writes >= self.fail_at:
            raise self.error

    def sync(self) -> None:
        if self.on == "sync" and self.writes >= self.fail_at:
            raise self.error

    def close(self) -> None:
        self.closed = True


def _header(env: Env) -> tuple[Header, bytes]:
    data_key_id, data_key = env.data_keys.new_data_key()
    header = Header(
        new_recording_id(), Kind.TERMINAL, STARTED_AT, data_key_id,
        format_version=env.format_version,
    )  # fmt: skip
    return header, data_key


@pytest.mark.parametrize(
    "error,on",
    [
        (OSError(errno.EROFS, "Read-only file system"), "write"),
        (OSError(errno.EIO, "Input/output error"), "sync"),
        (OSError(errno.ENOSPC, "No space left on device"), "write"),
    ],
)
async def test_injected_storage_error_fires_on_failure(env: Env, error: OSError, on: str) -> None:
    header, data_key = _header(env)
    sink = FailingSink(error, fail_at=2, on=on)  # write 1 is the header
    recorder = Recorder()
    writer = await RecordingWriter.start(
        sink,
        header,
        data_key,
        env.signing_key,
        clock=time.monotonic,
        on_failure=recorder.on_failure,
        policy=WriterPolicy(max_unsynced_bytes=16),
    )
    assert writer.record(TerminalEvent.OUTPUT, b"x" * 64)
    await asyncio.wait_for(recorder.failed.wait(), timeout=30)
    assert recorder.reasons == [f"recording storage failed: {error.strerror}"]
    assert not writer.record(TerminalEvent.OUTPUT, b"more")
    outcome = await writer.close(RECORDING_FAILED)
    assert not outcome.footer_written and outcome.end_reason == RECORDING_FAILED
    assert sink.closed


async def test_header_write_failure_refuses_the_session(env: Env) -> None:
    header, data_key = _header(env)
    sink = FailingSink(OSError(errno.EIO, "Input/output error"), fail_at=1)
    with pytest.raises(RecordingUnavailable):
        await RecordingWriter.start(
            sink, header, data_key, env.signing_key, clock=time.monotonic, on_failure=print
        )
    assert sink.closed


class StallingSink(RecordingSink):
    """Appends to memory, but chunk writes block until ``release`` is set (a stuck disk)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.release = threading.Event()
        self.stall = False

    def write(self, data: bytes) -> None:
        if self.stall:
            self.release.wait()
        self.data += data

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


async def test_queue_overflow_fires_on_failure_and_keeps_what_was_accepted(env: Env) -> None:
    header, data_key = _header(env)
    sink = StallingSink()
    recorder = Recorder()
    writer = await RecordingWriter.start(
        sink,
        header,
        data_key,
        env.signing_key,
        clock=time.monotonic,
        on_failure=recorder.on_failure,
        policy=WriterPolicy(max_unsynced_bytes=16, max_queued_bytes=8192),
    )
    sink.stall = True
    accepted: list[bytes] = []
    for i in range(1000):
        payload = b"%04d" % i + b"." * 500
        if not writer.record(TerminalEvent.OUTPUT, payload):
            break
        accepted.append(payload)
    assert 0 < len(accepted) < 1000
    await asyncio.wait_for(recorder.failed.wait(), timeout=30)
    assert recorder.reasons == ["recording queue overflow: storage is falling behind"]
    sink.release.set()
    outcome = await writer.close(RECORDING_FAILED)
    assert outcome.footer_written
    reader = RecordingReader(io.BytesIO(bytes(sink.data)), env.data_keys.resolve, env.verify_keys)
    assert [e.payload for e in reader.events()] == accepted
    assert reader.result is not None and reader.result.status is Integrity.INTACT
    assert reader.result.end_reason == RECORDING_FAILED


async def test_oversized_event_fails_closed(env: Env) -> None:
    recorder = Recorder()
    writer = await _start(env, recorder, WriterPolicy(max_event_bytes=1024))
    assert not writer.record(TerminalEvent.OUTPUT, b"z" * 1025)
    await asyncio.wait_for(recorder.failed.wait(), timeout=30)
    assert recorder.reasons == ["event larger than the recording allows"]
    await writer.close(RECORDING_FAILED)
