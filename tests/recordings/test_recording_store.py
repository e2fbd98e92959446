"""The local store never lets an id or a symlink reach a file outside its root."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from recording_helpers import STARTED_AT, Env

from recordings import (
    InvalidRecordingId,
    LocalRecordingStore,
    RecordingNotFound,
    UnsafePath,
    check_id,
)
from recordings.ids import new_recording_id
from recordings.terminal import TerminalEvent

HOSTILE_IDS = [
    "../x",
    "..",
    "%2e%2e%2f",
    "%2e%2e%2fetc%2fpasswd",
    "/etc/passwd",
    "/tmp/" + "a" * 32,
    "a" * 31,
    "a" * 33,
    "A" * 32,  # uppercase hex is not canonical
    "a" * 32 + "\n",
    "a" * 16 + "/" + "a" * 15,
    "a" * 30 + "..",
    "\u0661" * 32,  # Arabic-Indic digits: \d would accept them
    "",
    "a" * 32 + "\x00",
]


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_hostile_ids_are_refused_everywhere(env: Env, hostile: str) -> None:
    with pytest.raises(InvalidRecordingId):
        check_id(hostile)
    with pytest.raises(InvalidRecordingId):
        env.store.create(hostile, STARTED_AT)
    with pytest.raises(InvalidRecordingId):
        env.store.open_read(hostile)
    with pytest.raises(InvalidRecordingId):
        env.store.reopen_for_recovery(hostile, 0)
    with pytest.raises(InvalidRecordingId):
        env.data_keys.resolve(hostile)
    assert not (env.root / "x").exists()


def test_generated_ids_are_valid_and_distinct() -> None:
    ids = {new_recording_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(check_id(i) == i for i in ids)


async def test_symlinked_recording_file_is_refused(env: Env, tmp_path: Path) -> None:
    rid = await env.write([(TerminalEvent.OUTPUT, b"real")])
    outside = tmp_path / "outside.rec"
    outside.write_bytes(b"not yours")
    victim = new_recording_id()
    (env.path(rid).parent / f"{victim}.rec").symlink_to(outside)
    with pytest.raises(UnsafePath):
        env.store.open_read(victim)
    with pytest.raises(UnsafePath):
        env.store.reopen_for_recovery(victim, 0)
    with pytest.raises(UnsafePath):
        env.store.create(victim, STARTED_AT)
    assert outside.read_bytes() == b"not yours"


def test_symlinked_day_directory_is_refused(env: Env, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    year = env.store.root / "2026"
    year.symlink_to(outside)
    with pytest.raises(UnsafePath):
        env.store.create(new_recording_id(), STARTED_AT)
    assert list(outside.iterdir()) == []


async def test_symlinked_month_is_invisible_to_lookup(env: Env, tmp_path: Path) -> None:
    rid = await env.write([(TerminalEvent.OUTPUT, b"real")])
    # Move the real day away and plant a symlink to it: lookups must not follow it.
    month = env.path(rid).parent.parent
    moved = tmp_path / "moved-month"
    os.rename(month, moved)
    month.symlink_to(moved)
    with pytest.raises((RecordingNotFound, UnsafePath)):
        env.store.open_read(rid)
    assert list(env.store.ids()) == []


async def test_lookup_and_listing_find_recordings_by_id(env: Env) -> None:
    rid = await env.write([(TerminalEvent.OUTPUT, b"one")])
    assert list(env.store.ids()) == [rid]
    with env.store.open_read(rid) as stream:
        assert stream.read(8) == b"CONDUITR"
    stray = env.path(rid).parent / "notes.txt"
    stray.write_text("ignored")
    assert list(env.store.ids()) == [rid]


def test_store_root_is_private(tmp_path: Path) -> None:
    store = LocalRecordingStore(tmp_path / "fresh" / "rec")
    assert (store.root.stat().st_mode & 0o777) == 0o700


async def test_symlink_pointing_inside_the_store_is_still_refused(env: Env) -> None:
    # Containment alone would accept this; O_NOFOLLOW / lstat must refuse it.
    rid = await env.write([(TerminalEvent.OUTPUT, b"real")])
    victim = new_recording_id()
    (env.path(rid).parent / f"{victim}.rec").symlink_to(env.path(rid))
    before = env.path(rid).read_bytes()
    with pytest.raises(UnsafePath):
        env.store.open_read(victim)
    with pytest.raises(FileExistsError):
        env.store.create(victim, STARTED_AT)
    assert env.path(rid).read_bytes() == before


def _resident_bytes(path: Path) -> int:
    """Bytes of ``path`` in the page cache, by util-linux's fincore (mincore(2))."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES",
                          str(path)], capture_output=True, text=True, check=True)  # fmt: skip
    return int(out.stdout.split()[0])


def test_synced_recording_pages_leave_the_page_cache(tmp_path: Path) -> None:
    """A recording is written once and read rarely: once durable, its pages are dropped,
    so a long bulk session does not evict everything else from memory."""
    store = LocalRecordingStore(tmp_path)
    recording_id = new_recording_id()
    sink = store.create(recording_id, STARTED_AT)
    path = next(tmp_path.rglob(recording_id + "*"))
    block = os.urandom(1 << 20)
    try:
        for _ in range(8):
            sink.write(block)
        assert _resident_bytes(path) >= 8 << 20  # written, not yet synced: cached
        sink.sync()
        assert _resident_bytes(path) < 1 << 20
        sink.write(block)  # later writes after a sync are dropped at the next one too
        sink.sync()
        assert _resident_bytes(path) < 1 << 20
    finally:
        sink.close()
    with store.open_read(recording_id) as reader:  # and the data is all there
        assert reader.read() == block * 9
