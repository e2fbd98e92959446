"""Recordings service on SQLite and PostgreSQL: catalog, verify, search, retention, quota,
recovery of catalog-open recordings only, and audited reads."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, text

from gateway.audit import AuditLog
from gateway.audit.tables import AuditEventRow
from gateway.config import Overrides, load_settings
from gateway.db import migrate
from gateway.db.engine import make_engine, make_sessionmaker
from gateway.recorder import (
    QuotaExceeded,
    RecordingService,
    SessionInfo,
    apply_retention,
    catalog,
    quota_status,
)
from gateway.recorder.service import INLINE_INDEX_BYTES
from recordings import Integrity, Kind, RecordingUnavailable
from recordings.container import FRAME_CHUNK, MAGIC, read_frame
from recordings.terminal import TerminalEvent

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
INFO = SessionInfo(username="alice", asset="plc-eng-01", protocol="ssh", session_id="s-1")


class Clock:
    """Wall clock the test sets; never moves on its own."""

    def __init__(self, now: dt.datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


class Monotonic:
    """Writer clock for exact event offsets."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Site:
    service: RecordingService
    clock: Clock
    mono: Monotonic
    audit: AuditLog
    root: Path
    signing_key: Ed25519PrivateKey

    def another_start(self, node: str = "node-a") -> RecordingService:
        """The service as the next start of ``node`` builds it (same database and files)."""
        return RecordingService(
            sessions=self.service.sessions,
            store_root=self.root,
            master_key=bytes(range(32)),
            signing_key=self.signing_key,
            clock=self.clock,
            audit=self.audit,
            node=node,
            monotonic=self.mono,
        )

    async def audit_events(self, action: str) -> list[AuditEventRow]:
        async with self.service.sessions() as db:
            rows = await db.scalars(select(AuditEventRow).where(AuditEventRow.action == action))
            return list(rows)

    async def record(self, outputs: list[tuple[float, bytes]], reason: str = "closed") -> str:
        failures: list[str] = []
        self.mono.t = 0.0  # each recording's offsets count from its own start
        writer = await self.service.start(INFO, kind=Kind.TERMINAL, on_failure=failures.append)
        for at, payload in outputs:
            self.mono.t = at
            assert writer.record(TerminalEvent.OUTPUT, payload)
        entry = await self.service.close(writer, reason)
        assert not failures
        return entry.id

    def path_of(self, recording_id: str) -> Path:
        (path,) = self.root.glob(f"*/*/*/{recording_id}.rec")
        return path


@pytest.fixture
async def site(database_url: str, tmp_path: Path) -> AsyncIterator[Site]:
    data = tmp_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    settings = load_settings(
        None, Overrides(data_dir=data), environ={"CONDUIT_DATABASE__URL": database_url}
    )
    engine = make_engine(settings)
    await migrate.upgrade(engine)
    sessions = make_sessionmaker(engine)
    key = Ed25519PrivateKey.generate()
    clock, mono = Clock(), Monotonic()
    audit = AuditLog(sessions, key, clock)
    service = RecordingService(
        sessions=sessions,
        store_root=data / "recordings",
        master_key=bytes(range(32)),
        signing_key=key,
        clock=clock,
        audit=audit,
        node="node-a",
        monotonic=mono,
    )
    try:
        yield Site(service, clock, mono, audit, data / "recordings", key)
    finally:
        await service.aclose()
        await engine.dispose()


async def test_start_record_close_then_catalog_and_verify(site: Site) -> None:
    recording_id = await site.record([(0.1, b"$ uname -a\r\n"), (0.2, b"Linux plc 6.1\r\n")])
    entry = await site.service.entry(recording_id)
    assert (entry.state, entry.end_reason, entry.integrity) == ("closed", "closed", "intact")
    assert (entry.username, entry.asset, entry.protocol, entry.session_id) == (
        "alice", "plc-eng-01", "ssh", "s-1",
    )  # fmt: skip
    assert entry.size_bytes == site.path_of(recording_id).stat().st_size > 0
    assert entry.output_bytes == len(b"$ uname -a\r\n" + b"Linux plc 6.1\r\n")
    assert entry.indexed_lines == 2
    assert entry.started_at == NOW
    result = await site.service.verify(recording_id)
    assert result.status is Integrity.INTACT and result.header is not None
    assert result.header.metadata["user"] == "alice"
    assert [e.id for e in await site.service.entries()] == [recording_id]


async def test_large_recording_is_indexed_in_a_child_process_after_close(site: Site) -> None:
    noise = os.urandom(3 << 20).hex().encode()  # 6 MiB of output: beyond INLINE_INDEX_BYTES
    outputs = [(0.1, b"$ flash firmware\r\n"), (0.2, noise), (0.3, b"\r\nflashed-ok\r\n")]
    recording_id = await site.record(outputs)
    entry = await site.service.entry(recording_id)
    # Judged by the output recorded: format 2 stores hex text at about half its size.
    assert entry.output_bytes is not None and entry.output_bytes > INLINE_INDEX_BYTES
    assert entry.state == "closed"  # close returned before the text was read
    for _ in range(600):  # the child process verifies and indexes it; bounded wait
        entry = await site.service.entry(recording_id)
        if entry.integrity != "unverified" and entry.indexed_lines:
            break
        await asyncio.sleep(0.1)
    assert entry.integrity == "intact", entry
    hits = await site.service.search("flashed-ok", actor="auditor")
    assert [h.recording_id for h in hits] == [recording_id]


async def test_indexing_cut_short_by_a_stop_is_resumed_at_the_next_start(site: Site) -> None:
    noise = os.urandom(3 << 20).hex().encode()  # beyond INLINE_INDEX_BYTES: indexed later
    recording_id = await site.record([(0.1, noise), (0.2, b"\r\nresumed-ok\r\n")])
    await site.service.aclose()  # the stop: background indexing is cancelled
    entry = await site.service.entry(recording_id)
    assert (entry.integrity, entry.indexed_lines) == ("unverified", 0)

    elsewhere = site.another_start(node="node-b")  # only the node that closed it takes it up
    try:
        assert await elsewhere.resume_indexing() == []
    finally:
        await elsewhere.aclose()
    restarted = site.another_start()
    try:
        assert await restarted.resume_indexing() == [recording_id]
        for _ in range(600):  # verified and indexed in a child process; bounded wait
            entry = await restarted.entry(recording_id)
            if entry.integrity != "unverified":
                break
            await asyncio.sleep(0.1)
        assert entry.integrity == "intact" and entry.indexed_lines > 0, entry
        hits = await restarted.search("resumed-ok", actor="auditor")
        assert [h.recording_id for h in hits] == [recording_id]
        assert await restarted.resume_indexing() == []  # done: not taken up again
    finally:
        await restarted.aclose()


def _frames(data: bytes) -> list[tuple[int, int, int]]:
    """(type, start, end) of every frame after the magic."""
    stream = io.BytesIO(data)
    stream.seek(len(MAGIC))
    found = []
    while (start := stream.tell()) < len(data) and (frame := read_frame(stream)) is not None:
        found.append((frame[0], start, stream.tell()))
    return found


async def test_tampered_chunk_is_named_and_stored_in_catalog(site: Site) -> None:
    recording_id = await site.record([(0.1, b"x" * 70_000), (0.2, b"y" * 1000)])
    path = site.path_of(recording_id)
    data = bytearray(path.read_bytes())
    chunk_1 = [f for f in _frames(bytes(data)) if f[0] == FRAME_CHUNK][1]
    data[(chunk_1[1] + chunk_1[2]) // 2] ^= 0x01  # the middle of chunk 1
    path.write_bytes(bytes(data))
    result = await site.service.verify(recording_id)
    assert result.status is Integrity.TAMPERED and result.tampered_chunk == 1
    entry = await site.service.entry(recording_id)
    assert entry.integrity == "tampered" and entry.integrity_detail.startswith("chunk 1")


async def test_search_finds_backspace_corrected_word_at_its_offset(site: Site) -> None:
    first = await site.record(
        [
            (0.2, b"Welcome to plc-eng-01\r\n"),
            (1.0, b"$ "),
            (2.0, b"cat paws"),
            (2.5, b"\b \b\b \b"),  # the tty echoes two rubouts
            (3.0, b"ssword.txt\r\n"),
            (3.5, b"\x1b[1mhunter2\x1b[0m is the \x1b[31mvalve\x1b[0m code\r\n$ "),
        ]
    )
    site.clock.now = NOW + dt.timedelta(hours=1)
    second = await site.record([(4.0, b"valve opened\r\n")])
    hits = await site.service.search("password.txt", actor="auditor")
    assert [(h.recording_id, h.offset_us) for h in hits] == [(first, 1_000_000)]
    assert "password" in hits[0].snippet and "[" in hits[0].snippet
    assert await site.service.search("paws", actor="auditor") == []
    assert await site.service.search("1mhunter2", actor="auditor") == []
    valve = await site.service.search("valve", actor="auditor")
    assert [(h.recording_id, h.offset_us) for h in valve] == [
        (second, 4_000_000),
        (first, 3_500_000),
    ]
    assert await site.service.search('valve" OR "x', actor="auditor") == []  # no injection
    assert len(await site.audit_events("recording.search")) == 5


async def test_retention_deletes_only_expired_and_audits(site: Site) -> None:
    site.clock.now = NOW - dt.timedelta(days=40)
    old = await site.record([(0.1, b"old session secret-word\r\n")])
    site.clock.now = NOW - dt.timedelta(days=1)
    recent = await site.record([(0.1, b"recent session\r\n")])
    old_entry = await site.service.entry(old)
    old_path = site.path_of(old)
    site.clock.now = NOW
    report = await apply_retention(site.service, 30)
    assert report.deleted == [old] and report.failed == []
    assert not old_path.exists()
    assert not (site.root / "keys" / f"{old_entry.data_key_id}.key").exists()
    assert [e.id for e in await site.service.entries()] == [recent]
    assert await site.service.search("secret-word", actor="auditor") == []
    assert (await site.service.verify(recent)).status is Integrity.INTACT
    deletions = await site.audit_events("recording.delete")
    assert [(d.target, d.result) for d in deletions] == [(old, "success")]
    assert '"retention_days":30' in deletions[0].detail
    assert (await apply_retention(site.service, 0)).deleted == []


async def test_quota_warns_at_80_percent_and_refuses_at_100(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    recording_id = await site.record([(0.1, b"some output\r\n")])
    size = (await site.service.entry(recording_id)).size_bytes
    site.service.quota_bytes = int(size / 0.85)
    with caplog.at_level(logging.WARNING, logger="gateway.recorder.quota"):
        status = await quota_status(site.service.sessions, site.service.quota_bytes)
    assert status.warning and not status.exceeded
    assert "recordings storage" in caplog.text
    await site.record([(0.1, b"still allowed\r\n")])  # 85% used: allowed, with a warning
    site.service.quota_bytes = 2 * size
    with pytest.raises(QuotaExceeded):
        await site.service.start(INFO, kind=Kind.TERMINAL, on_failure=lambda _: None)
    denied = await site.audit_events("recording.start")
    assert [d.result for d in denied] == ["denied"]
    assert len(await site.service.entries()) == 2


async def test_recovery_closes_only_what_the_catalog_says_was_open(site: Site) -> None:
    crashed = await site.record([(0.1, b"a" * 70_000), (0.2, b"tail")])
    cut = await site.record([(0.1, b"b" * 70_000), (0.2, b"tail")])
    for recording_id in (crashed, cut):
        result = await site.service.verify(recording_id)
        with site.path_of(recording_id).open("r+b") as f:
            f.truncate(result.intact_length)  # the footer is gone, as after a crash
    async with site.service.sessions() as db, db.begin():
        await db.execute(text("UPDATE recordings SET state='open' WHERE id=:i"), {"i": crashed})
    recovered = await site.service.recover_open()
    assert [(rid, r.status if r else None) for rid, r in recovered] == [
        (crashed, Integrity.INCOMPLETE)
    ]
    after = await site.service.verify(crashed)
    assert after.signed and after.end_reason == "incomplete" and after.intact_chunks == 2
    entry = await site.service.entry(crashed)
    assert (entry.state, entry.end_reason) == ("closed", "incomplete")
    untouched = await site.service.verify(cut)  # closed in the catalog: never re-signed
    # ... and a closed recording without its footer was cut: truncated, not incomplete.
    assert untouched.status is Integrity.TRUNCATED and not untouched.signed
    assert "no footer" in untouched.detail
    assert [e.target for e in await site.audit_events("recording.recover")] == [crashed]


async def test_open_for_reading_is_audited_before_any_byte(site: Site) -> None:
    recording_id = await site.record([(0.1, b"hello\r\n")])
    async with site.service.open_for_reading(
        recording_id, actor="auditor", source="10.0.0.9", purpose="view"
    ) as (entry, stream):
        assert entry.id == recording_id
        views = await site.audit_events("recording.view")
        assert [(v.actor, v.target, v.source) for v in views] == [
            ("auditor", recording_id, "10.0.0.9")
        ]
        events = list(site.service.reader(stream).events())
    assert [e.payload for e in events] == [b"hello\r\n"]


async def test_unregistrable_recording_is_refused_and_closed(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: object) -> None:
        raise OSError("database gone")

    monkeypatch.setattr(catalog, "register_open", broken)
    with pytest.raises(RecordingUnavailable, match="cannot register recording"):
        await site.service.start(INFO, kind=Kind.TERMINAL, on_failure=lambda _: None)
    (orphan,) = site.service.store.ids()  # the file exists but was closed, never left open
    result = await asyncio.to_thread(site.service._verify_file, orphan)
    assert result.status is Integrity.INTACT and result.end_reason == "recording_failed"


async def test_no_catalog_means_no_recording(site: Site) -> None:
    async with site.service.sessions() as db, db.begin():
        await db.execute(text("DROP TABLE recording_lines"))
        await db.execute(text("DROP TABLE recordings"))
    with pytest.raises(RecordingUnavailable, match="cannot register recording"):
        await site.service.start(INFO, kind=Kind.TERMINAL, on_failure=lambda _: None)
    site.service.quota_bytes = 1 << 30  # with a quota, the usage query is the first to fail
    with pytest.raises(RecordingUnavailable, match="cannot check recording quota"):
        await site.service.start(INFO, kind=Kind.TERMINAL, on_failure=lambda _: None)
