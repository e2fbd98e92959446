"""Write windows: a person arms Modbus writes on one live session for a few minutes.

A ``modbus-write`` grant without ``always`` covers a write only while a window is open on
the session (``rbac.modbus``). Arming is a row here, written by whoever asks (CLI, API,
portal) after checking that the asker may approve on the session's asset; the owner node
reads its sessions' open windows as it polls for kills (``Broker.serve_write_windows``), so
a window binds within half a second anywhere. A window ends by itself at ``ends_at`` (the
guard compares with the clock on every write) or earlier when someone closes it. Does not
decide who may arm (callers do, through the authorizer) and does not judge requests.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import Integer, String, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.models import Base
from gateway.db.types import UTCDateTime
from gateway.errors import ConduitError
from gateway.services import Services
from gateway.sessions import store as live_store

MIN_MINUTES, MAX_MINUTES = 1, 240
MAX_REASON = 200


class WriteWindowRow(Base):
    __tablename__ = "modbus_write_windows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[str] = mapped_column(String(40), index=True)
    asset: Mapped[str] = mapped_column(String(64))
    username: Mapped[str] = mapped_column(String(64))
    armed_by: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(MAX_REASON))
    opened_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    ends_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    closed_by: Mapped[str | None] = mapped_column(String(64), default=None)


def check_minutes(minutes: int) -> int:
    if not MIN_MINUTES <= minutes <= MAX_MINUTES:
        raise ValueError(f"a write window lasts {MIN_MINUTES} to {MAX_MINUTES} minutes")
    return minutes


def check_reason(reason: str) -> str:
    if not reason.strip() or len(reason) > MAX_REASON or not reason.isprintable():
        raise ValueError(f"a reason is 1 to {MAX_REASON} printable characters on one line")
    return reason


async def arm(
    db: AsyncSession, *, session_id: str, asset: str, username: str, armed_by: str,
    reason: str, minutes: int, now: dt.datetime,
) -> WriteWindowRow:  # fmt: skip
    """Open a window of ``minutes`` from ``now`` (both already checked by the caller's
    request model; checked again here so no stored row is out of range)."""
    row = WriteWindowRow(
        session_id=session_id, asset=asset, username=username, armed_by=armed_by,
        reason=check_reason(reason), opened_at=now,
        ends_at=now + dt.timedelta(minutes=check_minutes(minutes)),
    )  # fmt: skip
    db.add(row)
    await db.flush()
    return row


async def close(db: AsyncSession, session_id: str, closed_by: str, now: dt.datetime) -> int:
    """End every open window of the session now; how many were open."""
    result = await db.execute(
        update(WriteWindowRow)
        .where(
            WriteWindowRow.session_id == session_id,
            WriteWindowRow.closed_by.is_(None),
            WriteWindowRow.ends_at > now,
        )
        .values(ends_at=now, closed_by=closed_by)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def open_until(
    db: AsyncSession, session_ids: Iterable[str], now: dt.datetime
) -> dict[str, dt.datetime]:
    """For each of ``session_ids`` with a window open at ``now``: when its last one ends."""
    ids = list(session_ids)
    if not ids:
        return {}
    rows = await db.execute(
        select(WriteWindowRow.session_id, WriteWindowRow.ends_at).where(
            WriteWindowRow.session_id.in_(ids), WriteWindowRow.ends_at > now
        )
    )
    out: dict[str, dt.datetime] = {}
    for session_id, ends_at in rows.all():
        if session_id not in out or ends_at > out[session_id]:
            out[session_id] = ends_at
    return out


class WindowRefused(ConduitError):
    """The session is not a live Modbus session (or the window cannot be changed)."""


async def arm_window(
    services: Services, session_id: str, *, minutes: int, reason: str, actor: str,
    source: str = "",
) -> WriteWindowRow:  # fmt: skip
    """Arm writes on live Modbus session ``session_id`` for ``minutes``; audited as
    ``modbus.window_armed``. The caller has checked that ``actor`` may (approve on the
    asset, or the local operator) and the bounds of ``minutes`` and ``reason``."""
    now = services.clock()
    async with services.sessions() as db, db.begin():
        live = await live_store.get(db, session_id)
        if live is not None and live.protocol == "modbus":
            row = await arm(
                db, session_id=session_id, asset=live.asset, username=live.username,
                armed_by=actor, reason=reason, minutes=minutes, now=now,
            )  # fmt: skip
    if live is None or live.protocol != "modbus":
        detail = f"write window for {session_id}: no live Modbus session"
        await services.audit.record(
            actor=actor, action="modbus.window_armed", result="denied", target=session_id,
            source=source, detail={"session_id": session_id, "reason": reason,
                                   "refused": detail},
        )  # fmt: skip
        raise WindowRefused("not found or not a live Modbus session", detail)
    await services.audit.record(
        actor=actor, action="modbus.window_armed", result="success", target=row.asset,
        source=source, detail={
            "session_id": session_id, "user": row.username, "minutes": minutes,
            "reason": reason, "ends_at": row.ends_at.isoformat(),
        },
    )  # fmt: skip
    return row


async def close_window(services: Services, session_id: str, *, actor: str, source: str = "") -> int:
    """End the session's open write windows now; audited as ``modbus.window_closed``."""
    now = services.clock()
    async with services.sessions() as db, db.begin():
        live = await live_store.get(db, session_id)
        closed = await close(db, session_id, actor, now)
    if live is None and not closed:
        raise WindowRefused(
            "not found or not a live Modbus session", f"write window for {session_id}: none"
        )
    await services.audit.record(
        actor=actor, action="modbus.window_closed", result="success",
        target=live.asset if live is not None else session_id, source=source,
        detail={"session_id": session_id, "closed": closed},
    )  # fmt: skip
    return closed
