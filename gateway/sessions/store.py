"""Live sessions in the database: what every process and node sees, and kill requests.

Each process keeps its sessions' kill handles in ``gateway.sessions.live.LiveRegistry``;
this table is the shared view (``conduit sessions list``, the sessions API) and the mailbox
for kills: any process (the CLI, another node's API) marks a row, and the owner node, woken
by a notification (``gateway.sessions.notify``) or by its poll, ends the session. The owner
also publishes its sessions' byte counts here as it polls, so the counts other processes see
are at most one poll old. Does not decide
access and does not end sessions itself.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from sqlalchemy import BigInteger, Integer, String, bindparam, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.models import Base, User
from gateway.db.types import UTCDateTime
from gateway.sessions import notify
from gateway.sessions.live import LiveSession

KILL_NOTE_MAX = 64  # a kill's note (the person's text), as the column holds it


class LiveSessionRow(Base):
    __tablename__ = "live_sessions"

    session_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    node: Mapped[str] = mapped_column(String(255), index=True)
    worker: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    username: Mapped[str] = mapped_column(String(64))
    asset: Mapped[str] = mapped_column(String(64))
    protocol: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    valid_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    kill_reason: Mapped[str | None] = mapped_column(String(KILL_NOTE_MAX), default=None)
    kill_requested_by: Mapped[str | None] = mapped_column(String(64), default=None)
    bytes_up: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    bytes_down: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


async def add(db: AsyncSession, session: LiveSession) -> None:
    db.add(
        LiveSessionRow(
            session_id=session.session_id,
            node=session.node,
            worker=session.worker,
            username=session.username,
            asset=session.asset,
            protocol=session.protocol,
            started_at=session.started_at,
            valid_until=session.valid_until,
        )
    )


async def remove(db: AsyncSession, session_id: str) -> None:
    await db.execute(delete(LiveSessionRow).where(LiveSessionRow.session_id == session_id))


async def listing(db: AsyncSession) -> list[LiveSessionRow]:
    return list(
        (await db.execute(select(LiveSessionRow).order_by(LiveSessionRow.started_at))).scalars()
    )


async def count(db: AsyncSession) -> int:
    """How many sessions are live now, on every node (one COUNT)."""
    return int(await db.scalar(select(func.count()).select_from(LiveSessionRow)) or 0)


async def listing_with_org(db: AsyncSession) -> list[tuple[LiveSessionRow, str]]:
    """Every live session with its user's organisation ("" if none), oldest first: one
    query, however many rows (the portal's live table)."""
    rows = await db.execute(
        select(LiveSessionRow, User.organisation)
        .outerjoin(User, User.username == LiveSessionRow.username)
        .order_by(LiveSessionRow.started_at)
    )
    return [(row, org or "") for row, org in rows.all()]


async def get(db: AsyncSession, session_id: str) -> LiveSessionRow | None:
    return await db.get(LiveSessionRow, session_id, populate_existing=True)


async def publish_bytes(db: AsyncSession, counts: Mapping[str, tuple[int, int]]) -> None:
    """Store (bytes up, bytes down) per session id; rows already gone are skipped."""
    if not counts:
        return
    table = Base.metadata.tables[LiveSessionRow.__tablename__]
    # Core executemany: an ended session's missing row is not an error here.
    await db.execute(
        update(table)
        .where(table.c.session_id == bindparam("sid"))
        .values(bytes_up=bindparam("up"), bytes_down=bindparam("down")),
        [{"sid": sid, "up": up, "down": down} for sid, (up, down) in counts.items()],
    )


async def request_kill(db: AsyncSession, session_id: str, note: str, actor: str) -> bool:
    """Mark the session for killing; ``note`` is the person's text ("" for none).

    The column is named ``kill_reason`` for history; it holds the note, never the end reason
    (which is always ``killed``): a set column (even "") is the kill request. On PostgreSQL
    the owner is woken by a notification sent when the caller's transaction commits.
    """
    result = await db.execute(
        update(LiveSessionRow)
        .where(
            LiveSessionRow.session_id == session_id,
            LiveSessionRow.kill_reason.is_(None),
        )
        .values(kill_reason=note, kill_requested_by=actor)
        .returning(LiveSessionRow.node)
    )
    owner = result.scalar()
    if owner is None:
        return False
    await notify.announce(db, notify.KILL_CHANNEL, owner)
    return True


async def kill_requests(db: AsyncSession, node: str, worker: int = 0) -> list[tuple[str, str, str]]:
    """(session id, note, requested by) for this process's sessions marked for killing."""
    rows = await db.execute(
        select(
            LiveSessionRow.session_id, LiveSessionRow.kill_reason, LiveSessionRow.kill_requested_by
        ).where(
            LiveSessionRow.node == node,
            LiveSessionRow.worker == worker,
            LiveSessionRow.kill_reason.is_not(None),
        )
    )
    return [(s, r or "", b or "") for s, r, b in rows.all()]
