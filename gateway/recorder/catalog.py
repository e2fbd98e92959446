"""Recordings catalog queries: register, close, find, list and delete catalog rows.

One row per recording says who recorded what, where and when, whether the writer still
owns it (``open``) and the last integrity verdict. Recovery trusts this table, not the
files: only rows still ``open`` for this node and worker process are recovered (a sibling
worker's open rows are its live recordings). Does not touch recording
files, keys or the text index (see ``service``, ``retention`` and ``search``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.recorder.tables import (
    STATE_CLOSED,
    STATE_OPEN,
    UNVERIFIED,
    RecordingLineRow,
    RecordingRow,
)


@dataclass(frozen=True)
class CatalogEntry:
    """A catalog row as the rest of the gateway sees it (detached, immutable)."""

    id: str
    kind: str
    username: str
    asset: str
    protocol: str
    session_id: str
    node: str
    data_key_id: str
    state: str
    started_at: dt.datetime
    ended_at: dt.datetime | None
    end_reason: str | None
    size_bytes: int
    output_bytes: int | None
    integrity: str
    integrity_detail: str
    verified_at: dt.datetime | None
    indexed_lines: int

    @classmethod
    def of(cls, row: RecordingRow) -> CatalogEntry:
        return cls(
            id=row.id,
            kind=row.kind,
            username=row.username,
            asset=row.asset,
            protocol=row.protocol,
            session_id=row.session_id,
            node=row.node,
            data_key_id=row.data_key_id,
            state=row.state,
            started_at=row.started_at,
            ended_at=row.ended_at,
            end_reason=row.end_reason,
            size_bytes=row.size_bytes,
            output_bytes=row.output_bytes,
            integrity=row.integrity,
            integrity_detail=row.integrity_detail,
            verified_at=row.verified_at,
            indexed_lines=row.indexed_lines,
        )


async def register_open(db: AsyncSession, row: RecordingRow) -> None:
    row.state = STATE_OPEN
    db.add(row)
    await db.flush()


async def mark_closed(
    db: AsyncSession,
    recording_id: str,
    *,
    ended_at: dt.datetime,
    end_reason: str,
    size: int,
    output: int | None = None,
) -> None:
    await db.execute(
        update(RecordingRow)
        .where(RecordingRow.id == recording_id)
        .values(
            state=STATE_CLOSED,
            ended_at=ended_at,
            end_reason=end_reason,
            size_bytes=size,
            output_bytes=output,
        )
    )


async def set_integrity(
    db: AsyncSession, recording_id: str, status: str, detail: str, when: dt.datetime
) -> None:
    await db.execute(
        update(RecordingRow)
        .where(RecordingRow.id == recording_id)
        .values(integrity=status, integrity_detail=detail[:200], verified_at=when)
    )


async def set_indexed(db: AsyncSession, recording_id: str, lines: int) -> None:
    await db.execute(
        update(RecordingRow).where(RecordingRow.id == recording_id).values(indexed_lines=lines)
    )


async def get_entry(db: AsyncSession, recording_id: str) -> CatalogEntry | None:
    row = await db.get(RecordingRow, recording_id)
    return CatalogEntry.of(row) if row is not None else None


async def entry_of_session(db: AsyncSession, session_id: str) -> CatalogEntry | None:
    """The recording of session ``session_id`` (one per session), if any."""
    row = await db.scalar(
        select(RecordingRow).where(RecordingRow.session_id == session_id).limit(1)
    )
    return CatalogEntry.of(row) if row is not None else None


async def open_on_node(db: AsyncSession, node: str, worker: int) -> list[CatalogEntry]:
    """Recordings worker ``worker`` of ``node`` left open (only that process writes them)."""
    rows = await db.scalars(
        select(RecordingRow)
        .where(
            RecordingRow.state == STATE_OPEN,
            RecordingRow.node == node,
            RecordingRow.worker == worker,
        )
        .order_by(RecordingRow.started_at)
    )
    return [CatalogEntry.of(row) for row in rows]


async def closed_unverified_on_node(db: AsyncSession, node: str, worker: int) -> list[str]:
    """Recordings this node's worker closed but never verified and indexed: the background
    work on them was cut short by a stop (large recordings are done after the session's end).
    Per worker, so sibling workers do not verify the same recording twice at once."""
    ids = await db.scalars(
        select(RecordingRow.id)
        .where(
            RecordingRow.state == STATE_CLOSED,
            RecordingRow.node == node,
            RecordingRow.worker == worker,
            RecordingRow.integrity == UNVERIFIED,
        )
        .order_by(RecordingRow.started_at)
    )
    return list(ids)


async def list_entries(
    db: AsyncSession, *, limit: int | None = None, ids: Sequence[str] | None = None
) -> list[CatalogEntry]:
    """Newest first; ``ids`` restricts to those recordings."""
    query = select(RecordingRow).order_by(RecordingRow.started_at.desc(), RecordingRow.id)
    if ids is not None:
        query = query.where(RecordingRow.id.in_(list(ids)))
    if limit is not None:
        query = query.limit(limit)
    return [CatalogEntry.of(row) for row in await db.scalars(query)]


async def list_for_user(db: AsyncSession, username: str, limit: int) -> list[CatalogEntry]:
    """``username``'s recordings, newest first, at most ``limit`` (one per session)."""
    rows = await db.scalars(
        select(RecordingRow)
        .where(RecordingRow.username == username)
        .order_by(RecordingRow.started_at.desc(), RecordingRow.id)
        .limit(limit)
    )
    return [CatalogEntry.of(row) for row in rows]


async def closed_before(db: AsyncSession, cutoff: dt.datetime) -> list[CatalogEntry]:
    """Closed recordings that started before ``cutoff`` (open ones are never expired)."""
    rows = await db.scalars(
        select(RecordingRow)
        .where(RecordingRow.state == STATE_CLOSED, RecordingRow.started_at < cutoff)
        .order_by(RecordingRow.started_at)
    )
    return [CatalogEntry.of(row) for row in rows]


async def total_size(db: AsyncSession) -> int:
    return int(await db.scalar(select(func.coalesce(func.sum(RecordingRow.size_bytes), 0))) or 0)


async def delete_entry(db: AsyncSession, recording_id: str) -> None:
    # Lines first and explicitly: SQLite only cascades with foreign keys enabled.
    await db.execute(delete(RecordingLineRow).where(RecordingLineRow.recording_id == recording_id))
    await db.execute(delete(RecordingRow).where(RecordingRow.id == recording_id))
