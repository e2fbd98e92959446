"""Write -> verify -> read round trips, encryption at rest, key rotation, file modes."""

from __future__ import annotations

import os
import stat

import pytest
from recording_helpers import Env

from recordings import (
    Integrity,
    Kind,
    MasterKey,
    WriterPolicy,
    rotate_master_key,
)
from recordings.keys import DataKeyRing, UnknownKey, UnwrapFailed
from recordings.terminal import TerminalEvent, resize_payload

EVENTS = [
    (TerminalEvent.RESIZE, resize_payload(120, 40)),
    (TerminalEvent.OUTPUT, b"login: alice\r\n"),
    (TerminalEvent.INPUT, b"ls -la\r"),
    (TerminalEvent.OUTPUT, b"secret-plant-output " * 50),
    (TerminalEvent.MARKER, "checkpoint \u2713".encode()),
    (TerminalEvent.OUTPUT, bytes(range(256))),
]


async def test_round_trip_is_intact_and_returns_every_event_in_order(env: Env) -> None:
    rid = await env.write(EVENTS, end_reason="user_closed")
    events, result = env.read(rid)
    assert result.status is Integrity.INTACT
    assert result.signed and result.end_reason == "user_closed"
    assert [(e.type, e.payload) for e in events] == EVENTS
    offsets = [e.offset_us for e in events]
    assert offsets == sorted(offsets)
    assert result.header is not None and result.header.recording_id == rid
    assert result.header.kind is Kind.TERMINAL
    assert result.header.metadata["asset"] == "plc-eng-01"
    assert env.failures == []


async def test_small_flush_threshold_spreads_events_over_many_chunks(env: Env) -> None:
    payloads = [(TerminalEvent.OUTPUT, os.urandom(1000)) for _ in range(50)]
    rid = await env.write(payloads, policy=WriterPolicy(max_unsynced_bytes=4096))
    events, result = env.read(rid)
    assert result.status is Integrity.INTACT
    assert result.intact_chunks >= 10  # 50 kB at 4 kB per chunk
    assert [e.payload for e in events] == [p for _, p in payloads]


async def test_empty_recording_is_intact(env: Env) -> None:
    rid = await env.write([])
    events, result = env.read(rid)
    assert result.status is Integrity.INTACT and result.intact_chunks == 0 and events == []


async def test_desktop_messages_are_opaque_typed_events(env: Env) -> None:
    messages = [(200, b"\x00\x01rfb-update"), (201, b"key-event"), (0, b"")]
    rid = await env.write(messages, kind=Kind.DESKTOP)
    events, result = env.read(rid)
    assert result.status is Integrity.INTACT
    assert result.header is not None and result.header.kind is Kind.DESKTOP
    assert [(e.type, e.payload) for e in events] == messages


async def test_payload_is_not_stored_in_plaintext(env: Env) -> None:
    rid = await env.write(EVENTS)
    raw = env.path(rid).read_bytes()
    assert b"secret-plant-output" not in raw
    assert b"ls -la" not in raw


async def test_files_are_0600_and_directories_0700(env: Env) -> None:
    rid = await env.write(EVENTS)
    path = env.path(rid)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for directory in (path.parent, path.parent.parent, path.parent.parent.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    key_file = next((env.root / "keys").iterdir())
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


async def test_master_key_rotation_rewraps_without_rewriting_recordings(env: Env) -> None:
    rid = await env.write(EVENTS)
    before = env.path(rid).read_bytes()
    new_master = MasterKey("m2", os.urandom(32))
    assert rotate_master_key(env.key_store, {"m1": env.master}, new_master) == 1
    # Re-running is a no-op: everything is already under m2.
    assert rotate_master_key(env.key_store, {"m1": env.master}, new_master) == 0
    assert env.path(rid).read_bytes() == before
    only_new = DataKeyRing(env.key_store, new_master)
    env.data_keys = only_new
    events, result = env.read(rid)
    assert result.status is Integrity.INTACT and len(events) == len(EVENTS)
    # The old master alone can no longer unwrap anything.
    with pytest.raises(UnknownKey):
        DataKeyRing(env.key_store, env.master).resolve(result.header.data_key_id)  # type: ignore[union-attr]


async def test_wrong_master_key_cannot_unwrap(env: Env) -> None:
    rid = await env.write(EVENTS)
    header = env.verify(rid).header
    assert header is not None
    impostor = DataKeyRing(env.key_store, MasterKey("m1", os.urandom(32)))
    with pytest.raises(UnwrapFailed):
        impostor.resolve(header.data_key_id)
    env.data_keys = impostor
    result = env.verify(rid)
    assert result.status is Integrity.TAMPERED and result.location == "header"


async def test_footer_signed_by_an_untrusted_key_is_tampered(env: Env) -> None:
    rid = await env.write(EVENTS)
    env.verify_keys = {}
    result = env.verify(rid)
    assert result.status is Integrity.TAMPERED and result.location == "footer"


async def test_record_after_close_is_refused(env: Env) -> None:
    writer = await env.start()
    assert writer.record(TerminalEvent.OUTPUT, b"a")
    first = await writer.close("closed")
    assert not writer.record(TerminalEvent.OUTPUT, b"b")
    assert await writer.close("other") == first
    events, _ = env.read(writer.recording_id)
    assert [e.payload for e in events] == [b"a"]
