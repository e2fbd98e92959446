"""Session history queries over the recordings catalog: filtered keyset pages, newest first.

A page is ``ORDER BY started_at DESC, id DESC`` strictly after the last row of the previous
one (``Cursor``), ``LIMIT size + 1`` to know whether another follows: one indexed query per
page (migration ``0011_recordings_history``) and no count of everything. The vendor
organisation filter reads ``users``, the zone filter ``asset_zones`` (direct members), both as
subqueries of the same statement. Does not check the filter's values (the caller bounds
them) and does not decide who may read the history.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.authz.tables import AssetZone
from gateway.db.models import User
from gateway.recorder.catalog import CatalogEntry
from gateway.recorder.tables import STATE_OPEN, RecordingRow

EARLIEST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
LIVE = "live"  # the end-reason filter for sessions still recording
_CURSOR = re.compile(r"(\d{1,17})-([A-Za-z0-9_-]{1,32})")


@dataclass(frozen=True)
class SessionFilter:
    """Every field optional (empty or None: no condition); all given ones must hold."""

    user: str = ""
    org: str = ""
    asset: str = ""
    zone: str = ""
    protocol: str = ""
    end: str = ""  # an end reason, or LIVE
    since: dt.datetime | None = None
    until: dt.datetime | None = None


@dataclass(frozen=True)
class Cursor:
    """Where the next page starts: strictly older than this (started_at, id)."""

    started_at: dt.datetime
    recording_id: str

    def text(self) -> str:
        micros = (self.started_at - EARLIEST) // dt.timedelta(microseconds=1)
        return f"{micros}-{self.recording_id}"

    @classmethod
    def parse(cls, value: str) -> Cursor:
        found = _CURSOR.fullmatch(value)
        if found is None:
            raise ValueError("not a page position")
        at = EARLIEST + dt.timedelta(microseconds=int(found.group(1)))
        return cls(at, found.group(2))


def history_query(f: SessionFilter, after: Cursor | None, limit: int) -> Select[RecordingRow]:
    """Newest first, strictly older than ``after``; at most ``limit`` rows."""
    query = select(RecordingRow)
    if f.user:
        query = query.where(RecordingRow.username == f.user)
    if f.org:
        members = select(User.username).where(User.organisation == f.org)
        query = query.where(RecordingRow.username.in_(members))
    if f.asset:
        query = query.where(RecordingRow.asset == f.asset)
    if f.zone:
        in_zone = select(AssetZone.asset).where(AssetZone.zone == f.zone)
        query = query.where(RecordingRow.asset.in_(in_zone))
    if f.protocol:
        query = query.where(RecordingRow.protocol == f.protocol)
    if f.end == LIVE:
        query = query.where(RecordingRow.state == STATE_OPEN)
    elif f.end:
        query = query.where(RecordingRow.end_reason == f.end)
    if f.since is not None:
        query = query.where(RecordingRow.started_at >= f.since)
    if f.until is not None:
        query = query.where(RecordingRow.started_at < f.until)
    if after is not None:
        query = query.where(
            or_(
                RecordingRow.started_at < after.started_at,
                and_(
                    RecordingRow.started_at == after.started_at,
                    RecordingRow.id < after.recording_id,
                ),
            )
        )
    order = (RecordingRow.started_at.desc(), RecordingRow.id.desc())
    return query.order_by(*order).limit(limit)


async def history_page(
    db: AsyncSession, f: SessionFilter, after: Cursor | None, size: int
) -> tuple[list[CatalogEntry], Cursor | None]:
    """One page and the cursor of the next (None on the last page): one query."""
    rows = list(await db.scalars(history_query(f, after, size + 1)))
    entries = [CatalogEntry.of(row) for row in rows[:size]]
    more = len(rows) > size and entries
    nxt = Cursor(entries[-1].started_at, entries[-1].id) if more else None
    return entries, nxt
