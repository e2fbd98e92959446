"""Cluster membership: which serving processes (node and worker) are alive, and reaping the
sessions of one that died.

Each ``conduit serve`` has a row in ``nodes`` and refreshes its heartbeat; ages are measured
on the database's clock (``database_now``), so nodes' clocks need not agree. A member whose
heartbeat is older than ``cluster.dead_after_seconds`` is dead: the first survivor to delete
its row (a conditional DELETE; PostgreSQL's row lock makes a racing survivor's DELETE match
nothing) ends its live sessions in the shared table with reason ``node_lost``, audits each
(``session.end``) and the node (``node.lost``), and closes its open recordings as incomplete
through crash recovery. A member that finds its own row gone was judged dead: it ends its
sessions (nobody else can kill them now) and joins again. Nobody can heartbeat while the
database is away, so a member reaps others only once its own database has answered without
a break for the dead limit and a heartbeat (``DatabaseHealth.up_for``): after an outage
every node had, the others heartbeat again before anyone may judge them; a member cut off
alone while another kept the database is still reaped by that one (decision 0023). Does
not end this process's
sessions itself (the caller's ``end_all`` does) and decides nothing about access.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import Integer, String, Text, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from gateway import __version__
from gateway.db.models import Base
from gateway.db.types import UTCDateTime
from gateway.recorder import catalog
from gateway.services import Services
from gateway.sessions.notify import is_postgresql
from gateway.sessions.store import LiveSessionRow

log = logging.getLogger(__name__)
NODE_LOST = "node_lost"  # the end reason of a session whose node died


class NodeRow(Base):
    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    worker: Mapped[int] = mapped_column(Integer, primary_key=True)
    pid: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    # Where other nodes reach this member's portal for a cross-node watch (watch_grants).
    portal_address: Mapped[str] = mapped_column(String(300), default="", server_default="")
    portal_certificate: Mapped[str] = mapped_column(Text, default="", server_default="")


@dataclass(frozen=True)
class Member:
    """A row of ``nodes`` as listings show it: ``age`` is seconds since its heartbeat."""

    name: str
    worker: int
    pid: int
    version: str
    started_at: dt.datetime
    heartbeat_at: dt.datetime
    age: float
    live_sessions: int
    alive: bool


@dataclass(frozen=True)
class LostSession:
    session_id: str
    username: str
    asset: str
    protocol: str
    started_at: dt.datetime


async def database_now(db: AsyncSession, clock: Callable[[], dt.datetime]) -> dt.datetime:
    """Now on PostgreSQL's clock (the one every node shares); on SQLite, one process: ours."""
    if is_postgresql(db):
        value = await db.scalar(select(func.clock_timestamp()))
        assert isinstance(value, dt.datetime)  # noqa: S101 - timestamptz from asyncpg
        return value.astimezone(dt.UTC)
    return clock()


async def join(services: Services) -> None:
    """Put this process in ``nodes`` (replacing a row a previous run left)."""
    async with services.sessions() as db, db.begin():
        now = await database_now(db, services.clock)
        await db.execute(
            delete(NodeRow).where(NodeRow.name == services.node, NodeRow.worker == services.worker)
        )
        db.add(
            NodeRow(
                name=services.node,
                worker=services.worker,
                pid=os.getpid(),
                version=__version__,
                started_at=now,
                heartbeat_at=now,
            )
        )


async def leave(services: Services) -> None:
    """At a clean stop: this process is gone, not dead."""
    async with services.sessions() as db, db.begin():
        await db.execute(
            delete(NodeRow).where(NodeRow.name == services.node, NodeRow.worker == services.worker)
        )


async def heartbeat(services: Services) -> bool:
    """Refresh this process's heartbeat; False when its row is gone (judged dead)."""
    async with services.sessions() as db, db.begin():
        now = await database_now(db, services.clock)
        result = await db.execute(
            update(NodeRow)
            .where(NodeRow.name == services.node, NodeRow.worker == services.worker)
            .values(heartbeat_at=now)
        )
    return bool(result.rowcount)


async def reap(
    services: Services, name: str, worker: int, *, dead_before: dt.datetime | None
) -> list[LostSession] | None:
    """End the live sessions of member (``name``, ``worker``) as ``node_lost`` and audit them.

    With ``dead_before``, only if its heartbeat is still older than that (None when another
    survivor reaped it first, or it came back); without, unconditionally (this process's own
    leftovers at start). Its open recordings are left to ``recover_open``.
    """
    async with services.sessions() as db, db.begin():
        gone = delete(NodeRow).where(NodeRow.name == name, NodeRow.worker == worker)
        if dead_before is not None:
            gone = gone.where(NodeRow.heartbeat_at < dead_before)
            if not (await db.execute(gone)).rowcount:
                return None
        rows = (
            await db.execute(
                delete(LiveSessionRow)
                .where(LiveSessionRow.node == name, LiveSessionRow.worker == worker)
                .returning(
                    LiveSessionRow.session_id,
                    LiveSessionRow.username,
                    LiveSessionRow.asset,
                    LiveSessionRow.protocol,
                    LiveSessionRow.started_at,
                )
            )
        ).all()
        lost = [LostSession(*row) for row in rows]
        recordings = {}
        for session in lost:
            entry = await catalog.entry_of_session(db, session.session_id)
            recordings[session.session_id] = entry.id if entry is not None else ""
    for session in lost:
        await services.audit.record(
            actor=session.username,
            action="session.end",
            result="success",
            target=session.asset,
            detail={
                "session_id": session.session_id,
                "reason": NODE_LOST,
                "recording_id": recordings[session.session_id],
                "node": name,
                "worker": worker,
                "noticed_by": services.node,
            },
        )
    return lost


async def reap_own_leftovers(services: Services, workers: int = 1) -> list[LostSession]:
    """At start: end what a previous run of this process (node and worker: a crashed
    worker's replacement, or the node's next start) left in the shared table, and audit the
    loss of that run (``node.lost``) when it left any. Worker 0 does the same for worker
    indexes this node no longer runs (``>= workers``: it was restarted with fewer), and
    closes their open recordings. Running siblings' rows are untouched."""
    owners = [services.worker]
    if services.worker == 0:
        async with services.sessions() as db:
            listed = select(NodeRow.worker).where(NodeRow.name == services.node)
            owning = select(LiveSessionRow.worker).where(LiveSessionRow.node == services.node)
            found = set((await db.scalars(listed)).all()) | set((await db.scalars(owning)).all())
        owners += sorted(w for w in found if w >= workers)
    ended: list[LostSession] = []
    for worker in owners:
        lost = await reap(services, services.node, worker, dead_before=None) or []
        if worker != services.worker:  # not run any more: out of the membership too
            async with services.sessions() as db, db.begin():
                await db.execute(
                    delete(NodeRow).where(NodeRow.name == services.node, NodeRow.worker == worker)
                )
            await services.recordings.recover_open(node=services.node, worker=worker)
        if not lost:
            continue
        log.error(
            "node %s worker %s: its previous run left %d sessions; ended",
            services.node, worker, len(lost),
        )  # fmt: skip
        await services.audit.record(
            actor="system",
            action="node.lost",
            result="success",
            target=services.node,
            detail={
                "worker": worker,
                "sessions_ended": len(lost),
                "noticed_by": services.node,
                "by": "restart",
            },
        )
        ended += lost
    return ended


async def reap_dead(services: Services) -> list[tuple[str, int, int]]:
    """Reap every member older than the dead limit; returns (name, worker, sessions) reaped.

    Nothing while this process's database has answered for less than the dead limit and a
    heartbeat: a member's old heartbeat then may only mean that nobody could write one.
    """
    cluster_settings = services.settings.cluster
    seen_for = cluster_settings.dead_after_seconds + cluster_settings.heartbeat_seconds
    if services.db_health.up_for() < seen_for:
        return []
    limit = dt.timedelta(seconds=cluster_settings.dead_after_seconds)
    async with services.sessions() as db:
        cutoff = await database_now(db, services.clock) - limit
        dead = (
            await db.execute(
                select(NodeRow.name, NodeRow.worker, NodeRow.heartbeat_at).where(
                    NodeRow.heartbeat_at < cutoff
                )
            )
        ).all()
    reaped = []
    for name, worker, last in dead:
        if name == services.node:
            # Our own row is old only if we stalled (the heartbeat sorts that out); a
            # sibling worker's is its supervisor's to replace, and the replacement ends
            # what it left before serving (``reap_own_leftovers``): reaping it here as well
            # would race that replacement's crash recovery of the same recordings.
            continue
        lost = await reap(services, name, worker, dead_before=cutoff)
        if lost is None:
            continue
        log.error("node %s worker %s lost; %d sessions ended", name, worker, len(lost))
        await services.audit.record(
            actor="system",
            action="node.lost",
            result="success",
            target=name,
            detail={
                "worker": worker,
                "last_heartbeat": last.isoformat(),
                "sessions_ended": len(lost),
                "noticed_by": services.node,
            },
        )
        # Its recordings are on the shared store: close them as incomplete, signed, now.
        await services.recordings.recover_open(node=name, worker=worker)
        reaped.append((name, worker, len(lost)))
    return reaped


async def members(services: Services) -> list[Member]:
    """Every member with its heartbeat age and live-session count, by name and worker."""
    dead_after = services.settings.cluster.dead_after_seconds
    async with services.sessions() as db:
        now = await database_now(db, services.clock)
        rows = (await db.execute(select(NodeRow).order_by(NodeRow.name, NodeRow.worker))).scalars()
        per_owner = select(LiveSessionRow.node, LiveSessionRow.worker, func.count()).group_by(
            LiveSessionRow.node, LiveSessionRow.worker
        )
        counts = {(node, worker): n for node, worker, n in (await db.execute(per_owner)).all()}
        out = []
        for row in rows:
            age = max(0.0, (now - row.heartbeat_at).total_seconds())
            out.append(
                Member(
                    name=row.name,
                    worker=row.worker,
                    pid=row.pid,
                    version=row.version,
                    started_at=row.started_at,
                    heartbeat_at=row.heartbeat_at,
                    age=age,
                    live_sessions=counts.get((row.name, row.worker), 0),
                    alive=age <= dead_after,
                )
            )
    return out


async def keep_membership(
    services: Services, end_own_sessions: Callable[[str], Awaitable[int]]
) -> None:
    """Heartbeat, and reap dead members, every ``cluster.heartbeat_seconds`` until cancelled.

    If this process's row is gone it was judged dead and its sessions were ended elsewhere:
    ``end_own_sessions(node_lost)`` ends them here too (nobody else can reach them), then
    it joins again. Only a member that saw the database throughout a dead limit reaps
    (``reap_dead``), so a gone row means this process really was cut off while others were
    not: its sessions' rows are gone and their recordings closed, and they cannot go on. A
    row merely stale after an outage everyone had is refreshed by the heartbeat, and its
    sessions go on.
    """
    interval = services.settings.cluster.heartbeat_seconds
    while True:
        await asyncio.sleep(interval)
        try:
            if not await heartbeat(services):
                log.error("this node was judged dead by another; ending its sessions")
                await end_own_sessions(NODE_LOST)
                await join(services)
            await reap_dead(services)
        except Exception:  # the database may be briefly away; the next round retries
            log.exception("cluster heartbeat failed")
