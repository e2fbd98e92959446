"""Site activity for the admin dashboard: recorded sessions per UTC day and per vendor
organisation over the last ``DAYS`` days, from one GROUP BY query over the recordings catalog.

Every session is recorded (no recording, no session), so a catalog row is a session. The
query groups by (UTC day, the user's organisation) inside a window of whole UTC days ending
today, so it reads at most ``DAYS`` days of rows through the ``started_at`` index and returns
at most ``DAYS`` x organisations rows; the two series are summed from those here. A user
without an organisation (staff) counts under ``""``; a catalog row whose user was deleted
counts there too. Does not decide who may see the numbers, and does not count refused
sessions (those are audit events).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.models import User
from gateway.recorder.tables import RecordingRow

DAYS = 30


@dataclass(frozen=True)
class Activity:
    """Sessions started per UTC day (oldest first, every day present) and per organisation."""

    days: tuple[dt.date, ...]
    per_day: tuple[int, ...]
    per_org: tuple[tuple[str, int], ...]  # most sessions first, then by name

    @property
    def total(self) -> int:
        return sum(self.per_day)


def window(now: dt.datetime, days: int = DAYS) -> tuple[dt.datetime, dt.datetime]:
    """[first midnight, next midnight) in UTC: ``days`` whole days ending with today."""
    today = now.astimezone(dt.UTC).date()
    first = dt.datetime.combine(today - dt.timedelta(days=days - 1), dt.time(), dt.UTC)
    return first, first + dt.timedelta(days=days)


def _day(db: AsyncSession) -> Any:
    """The UTC day of ``started_at`` as ``YYYY-MM-DD`` text, in the dialect's own words."""
    if db.get_bind().dialect.name == "postgresql":
        utc = func.timezone(literal("UTC"), RecordingRow.started_at)
        return func.to_char(utc, literal("YYYY-MM-DD"))
    # SQLite keeps the column as UTC text "YYYY-MM-DD HH:MM:SS..." (UTCDateTime binds UTC).
    return func.substr(RecordingRow.started_at, 1, 10)


async def session_activity(db: AsyncSession, now: dt.datetime, days: int = DAYS) -> Activity:
    """Sessions started in the ``days`` UTC days up to ``now``'s, by day and organisation."""
    first, end = window(now, days)
    day = _day(db).label("day")
    org = func.coalesce(User.organisation, "").label("org")
    query = (
        select(day, org, func.count().label("n"))
        .select_from(RecordingRow)
        .outerjoin(User, User.username == RecordingRow.username)
        .where(RecordingRow.started_at >= first, RecordingRow.started_at < end)
        .group_by(day, org)
    )
    by_day: Counter[str] = Counter()
    by_org: Counter[str] = Counter()
    for day_text, org_name, count in (await db.execute(query)).all():
        by_day[str(day_text)] += int(count)
        by_org[str(org_name)] += int(count)
    dates = tuple(first.date() + dt.timedelta(days=i) for i in range(days))
    return Activity(
        days=dates,
        per_day=tuple(by_day[d.isoformat()] for d in dates),
        per_org=tuple(sorted(by_org.items(), key=lambda item: (-item[1], item[0]))),
    )
