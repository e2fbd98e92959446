"""Sibling worker processes of one node (``conduit serve --workers N``) on one database:
each recovers and reaps only what it owns, never a sibling's live sessions and recordings.
Two ``Services`` with one node name and different worker indexes stand for two workers, on
SQLite and PostgreSQL. The real multi-process test is test_workers.py."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.recorder import SessionInfo
from gateway.services import Services
from gateway.sessions import cluster
from gateway.sessions import store as live_store
from gateway.sessions.live import LiveSession
from recordings import Kind
from recordings.terminal import TerminalEvent
from tests.sibling_workers import sibling_workers, worker_services


async def _never(reason: str) -> None:
    raise AssertionError("nothing here ends a session through its handle")


@pytest.fixture
async def workers(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[Services, Services]]:
    """Workers 0 and 1 of one node: one database, one data directory."""
    async with sibling_workers(database_url, tmp_path / "data") as both:
        yield both


async def _live_session(services: Services) -> tuple[str, str]:
    """A live row and an open recording owned by ``services``'s worker: (session, recording)."""
    session_id = secrets.token_hex(12)
    live = LiveSession(
        session_id=session_id, node=services.node, username="alice", asset="plc-1",
        protocol="ssh", started_at=services.clock(), valid_until=None, kill=_never,
        worker=services.worker,
    )  # fmt: skip
    async with services.sessions() as db, db.begin():
        await live_store.add(db, live)
    info = SessionInfo(username="alice", asset="plc-1", protocol="ssh", session_id=session_id)
    writer = await services.recordings.start(info, kind=Kind.TERMINAL, on_failure=lambda _: None)
    writer.record(TerminalEvent.OUTPUT, b"hello")
    return session_id, writer.recording_id


async def test_a_starting_worker_leaves_its_siblings_sessions_and_recordings_alone(
    workers: tuple[Services, Services],
) -> None:
    first, second = workers
    sibling_session, sibling_recording = await _live_session(second)
    # Worker 0 (re)starts: recovery and the reap of its own leftovers, as ``serve`` does.
    assert await first.recordings.recover_open() == []
    assert await cluster.reap(first, first.node, first.worker, dead_before=None) == []
    entry = await first.recordings.entry(sibling_recording)
    assert entry is not None and entry.state == "open"
    async with first.sessions() as db:
        assert await live_store.get(db, sibling_session) is not None


async def test_a_crashed_workers_replacement_ends_its_sessions_and_closes_its_recordings(
    workers: tuple[Services, Services], database_url: str, tmp_path: Path
) -> None:
    first, second = workers
    mine_session, mine_recording = await _live_session(second)
    other_session, other_recording = await _live_session(first)
    # Worker 1 dies (its writer is never closed); its replacement starts under index 1.
    replacement = worker_services(database_url, tmp_path / "data", 1)
    try:
        recovered = await replacement.recordings.recover_open()
        assert [recording for recording, _ in recovered] == [mine_recording]
        lost = await cluster.reap(replacement, "node-a", 1, dead_before=None)
        assert lost is not None and [s.session_id for s in lost] == [mine_session]
    finally:
        await replacement.close()
    entry = await first.recordings.entry(mine_recording)
    assert entry is not None and (entry.state, entry.end_reason) == ("closed", "incomplete")
    other = await first.recordings.entry(other_recording)
    assert other is not None and other.state == "open"
    async with first.sessions() as db:
        assert await live_store.get(db, other_session) is not None


async def test_siblings_do_not_reap_each_other_and_worker_0_ends_indexes_no_longer_run(
    workers: tuple[Services, Services],
) -> None:
    first, second = workers
    await cluster.join(first)
    await cluster.join(second)
    left, recording = await _live_session(second)
    async with first.sessions() as db, db.begin():  # worker 1 froze long ago
        row = await db.get(cluster.NodeRow, ("node-a", 1))
        assert row is not None
        row.heartbeat_at = await cluster.database_now(db, first.clock) - dt.timedelta(hours=1)
    # Its sibling leaves it to the supervisor's replacement (no racing crash recovery) ...
    assert await cluster.reap_dead(first) == []
    async with first.sessions() as db:
        assert await live_store.get(db, left) is not None
    # ... and a node restarted with one worker ends, at worker 0's start, what worker 1 left.
    lost = await cluster.reap_own_leftovers(first, workers=1)
    assert [s.session_id for s in lost] == [left]
    entry = await first.recordings.entry(recording)
    assert entry is not None and (entry.state, entry.end_reason) == ("closed", "incomplete")
    async with first.sessions() as db:
        assert await live_store.get(db, left) is None
    assert [(m.name, m.worker) for m in await cluster.members(first)] == [("node-a", 0)]
