"""Cluster membership and notifications, in process, on SQLite and PostgreSQL.

Two ``Services`` on one database stand for two surviving nodes (on PostgreSQL they are two
connection pools racing for real). The two-process acceptance tests are in
test_cluster_nodes.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from gateway.audit.tables import AuditEventRow
from gateway.config import ClusterSettings, Overrides, load_settings
from gateway.db import migrate
from gateway.keys import init_key_material, load_keyring
from gateway.recorder import SessionInfo
from gateway.services import Services
from gateway.sessions import cluster, notify
from gateway.sessions import store as live_store
from gateway.sessions.live import LiveSession
from recordings import Kind
from recordings.terminal import TerminalEvent


async def _never(reason: str) -> None:
    raise AssertionError("nothing here ends a session through its handle")


def build(database_url: str, data_dir: Path, node: str) -> Services:
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = load_settings(
        None,
        Overrides(data_dir=data_dir),
        environ={"CONDUIT_DATABASE__URL": database_url, "CONDUIT_SERVER__NODE_NAME": node},
    )
    init_key_material(settings)
    return Services.build(settings, load_keyring(settings, environ={}))


@pytest.fixture
async def pair(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[Services, Services]]:
    """Nodes a and b on one database (and one data directory: shared keys)."""
    a = build(database_url, tmp_path / "data", "node-a")
    await migrate.upgrade(a.engine)
    b = build(database_url, tmp_path / "data", "node-b")
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def add_session(services: Services, user: str, node: str) -> str:
    session_id = secrets.token_hex(12)
    live = LiveSession(
        session_id=session_id, node=node, username=user, asset="plc-1", protocol="ssh",
        started_at=services.clock(), valid_until=None, kill=_never,
    )  # fmt: skip
    async with services.sessions() as db, db.begin():
        await live_store.add(db, live)
    return session_id


async def make_stale(services: Services, name: str, seconds: float) -> None:
    """Node ``name``'s row as if its last heartbeat was ``seconds`` ago (a frozen node)."""
    async with services.sessions() as db, db.begin():
        now = await cluster.database_now(db, services.clock)
        row = await db.get(cluster.NodeRow, (name, 0))
        assert row is not None
        row.heartbeat_at = now - dt.timedelta(seconds=seconds)


@dataclass(frozen=True)
class Event:
    actor: str
    target: str
    detail: dict[str, Any]


async def audit_of(services: Services, action: str) -> list[Event]:
    async with services.sessions() as db:
        rows = await db.scalars(
            select(AuditEventRow).where(AuditEventRow.action == action).order_by(AuditEventRow.id)
        )
        return [Event(r.actor, r.target, json.loads(r.detail)) for r in rows]


async def test_members_list_heartbeat_age_and_live_sessions(
    pair: tuple[Services, Services],
) -> None:
    a, b = pair
    await cluster.join(a)
    await cluster.join(b)
    await add_session(b, "alice", "node-b")
    await add_session(b, "bob", "node-b")
    await make_stale(a, "node-a", 2)
    assert await cluster.heartbeat(b)
    listed = {m.name: m for m in await cluster.members(a)}
    assert set(listed) == {"node-a", "node-b"}
    assert listed["node-b"].live_sessions == 2 and listed["node-a"].live_sessions == 0
    assert listed["node-a"].age >= 2 > listed["node-b"].age
    assert all(m.alive for m in listed.values())
    assert listed["node-b"].version and listed["node-b"].pid > 0


async def test_a_dead_node_is_reaped_exactly_once_by_racing_survivors(
    pair: tuple[Services, Services], tmp_path: Path, database_url: str
) -> None:
    a, b = pair
    c = build(database_url, tmp_path / "data", "node-c")
    try:
        for node in (a, b, c):
            await cluster.join(node)
        lost = [await add_session(c, user, "node-c") for user in ("alice", "bob")]
        kept = await add_session(a, "carol", "node-a")
        await make_stale(a, "node-c", 3600)

        # Both survivors notice at once; only one may end and audit the sessions.
        first, second = await asyncio.gather(cluster.reap_dead(a), cluster.reap_dead(b))
        assert sorted(first + second) == [("node-c", 0, 2)]

        ends = await audit_of(a, "session.end")
        assert sorted(e.detail["session_id"] for e in ends) == sorted(lost)
        assert {e.detail["reason"] for e in ends} == {"node_lost"}
        assert {e.detail["node"] for e in ends} == {"node-c"}
        [gone] = await audit_of(a, "node.lost")
        assert gone.target == "node-c" and gone.detail["sessions_ended"] == 2
        async with a.sessions() as db:
            assert [r.session_id for r in await live_store.listing(db)] == [kept]
        assert {m.name for m in await cluster.members(a)} == {"node-a", "node-b"}
        # A second round finds nothing more to do.
        assert await cluster.reap_dead(b) == []
        assert len(await audit_of(a, "session.end")) == 2
        # The dead node's own row is gone: when it wakes it learns it was judged dead.
        assert not await cluster.heartbeat(c)
    finally:
        await c.close()


async def test_a_node_that_answers_again_is_not_reaped(pair: tuple[Services, Services]) -> None:
    a, b = pair
    await cluster.join(a)
    await cluster.join(b)
    session = await add_session(b, "alice", "node-b")
    await make_stale(a, "node-b", 3600)
    assert await cluster.heartbeat(b)  # back before anyone looked
    assert await cluster.reap_dead(a) == []
    async with a.sessions() as db:
        assert await live_store.get(db, session) is not None


@pytest.mark.parametrize("shared", [True, False])
async def test_a_dead_nodes_recordings_are_recovered_only_where_they_can_be_read(
    pair: tuple[Services, Services], tmp_path: Path, database_url: str, shared: bool
) -> None:
    """On a shared recordings store the survivor closes the dead node's recording as
    incomplete; one it cannot see stays open for that node's own next start."""
    a, _ = pair
    c = build(database_url, tmp_path / ("data" if shared else "data-c"), "node-c")
    try:
        await cluster.join(a)
        await cluster.join(c)
        session = await add_session(c, "alice", "node-c")
        info = SessionInfo(username="alice", asset="plc-1", protocol="ssh", session_id=session)
        writer = await c.recordings.start(info, kind=Kind.TERMINAL, on_failure=lambda _: None)
        writer.record(TerminalEvent.OUTPUT, b"hello")
        await make_stale(a, "node-c", 3600)  # c "dies": its writer is never closed

        assert await cluster.reap_dead(a) == [("node-c", 0, 1)]
        [end] = await audit_of(a, "session.end")
        assert end.detail["recording_id"] == writer.recording_id
        entry = await a.recordings.entry(writer.recording_id)
        if shared:
            assert (entry.state, entry.end_reason) == ("closed", "incomplete")
        else:
            assert entry.state == "open"
    finally:
        await c.close()


async def test_restart_with_the_same_name_ends_what_the_last_run_left(
    pair: tuple[Services, Services],
) -> None:
    a, _ = pair
    await cluster.join(a)
    left = await add_session(a, "alice", "node-a")
    await cluster.join(a)  # the next run of node-a
    lost = await cluster.reap(a, "node-a", 0, dead_before=None)
    assert lost is not None and [s.session_id for s in lost] == [left]
    [end] = await audit_of(a, "session.end")
    assert end.detail["reason"] == "node_lost" and end.actor == "alice"
    assert [m.name for m in await cluster.members(a)] == ["node-a"]


@pytest.mark.parametrize(
    ("heartbeat", "dead_after", "ok"),
    [(5, 30, True), (1, 3, True), (1, 2.9, False), (0.1, 30, False), (61, 600, False),
     (5, 601, False)],
)  # fmt: skip
def test_cluster_timings_are_bounded(heartbeat: float, dead_after: float, ok: bool) -> None:
    def make() -> ClusterSettings:
        return ClusterSettings(heartbeat_seconds=heartbeat, dead_after_seconds=dead_after)

    if ok:
        assert make().dead_after_seconds == dead_after
    else:
        with pytest.raises(ValidationError):
            make()


@pytest.mark.postgres
async def test_a_kill_request_notifies_its_owner_only_when_committed(
    pg_database: str, tmp_path: Path
) -> None:
    a = build(pg_database, tmp_path / "data", "node-a")
    await migrate.upgrade(a.engine)
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = notify.Listener(
        a.engine,
        {notify.KILL_CHANNEL: heard.put_nowait, notify.POLICY_CHANNEL: lambda _: None},
        connect_timeout=5,
    )
    task = asyncio.create_task(listener.run())
    try:
        async with asyncio.timeout(10):
            await listener.connected.wait()
        kept = await add_session(a, "alice", "node-b")
        async with a.sessions() as db:
            await db.begin()
            assert await live_store.request_kill(db, kept, "", "root")
            await db.rollback()  # a request that never happened announces nothing
        session = await add_session(a, "bob", "node-b")
        async with a.sessions() as db, db.begin():
            assert await live_store.request_kill(db, session, "note", "root")
            assert not await live_store.request_kill(db, "no-such-session", "", "root")
        async with asyncio.timeout(10):
            assert await heard.get() == "node-b"
        async with a.sessions() as db:
            row = await live_store.get(db, kept)
            assert row is not None and row.kill_reason is None
        assert heard.empty()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await a.close()
