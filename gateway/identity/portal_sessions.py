"""Portal sessions: server-side rows behind a 256-bit cookie id, checked on every request.

Only the SHA-256 of the id is stored. A session is valid while it is not revoked, the user
is active and not locked, and neither the idle nor the absolute limit has passed; so
logout, disable and admin revoke take effect on the next request. ``mfa_at`` records when
the user last passed a second factor, for step-up (``require_recent_mfa``). Does not set
cookies or read HTTP (see ``gateway.web.auth``).
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.models import User
from gateway.errors import ConduitError
from gateway.identity.lockout import is_locked
from gateway.identity.models import PortalSession
from gateway.identity.pending import digest

STEP_UP_MAX_AGE = dt.timedelta(minutes=5)
# Writing last_seen_at on every request would make each page view a write; a minute's
# precision is plenty against a 15-minute idle limit.
TOUCH_EVERY = dt.timedelta(seconds=60)


class StepUpRequired(ConduitError):
    def __init__(self) -> None:
        super().__init__("confirm with a fresh code", "second factor older than step-up limit")


@dataclass(frozen=True)
class SessionLimits:
    idle: dt.timedelta
    absolute: dt.timedelta


@dataclass(frozen=True)
class ActiveSession:
    """A valid session and its user, as a request sees it."""

    session_id: int
    user_id: int
    username: str
    roles: tuple[str, ...]
    created_at: dt.datetime
    mfa_at: dt.datetime


def require_recent_mfa(
    session: ActiveSession, now: dt.datetime, max_age: dt.timedelta = STEP_UP_MAX_AGE
) -> None:
    """Raise ``StepUpRequired`` unless the session passed MFA within ``max_age``."""
    if now - session.mfa_at > max_age:
        raise StepUpRequired()


async def create(
    db: AsyncSession,
    user_id: int,
    now: dt.datetime,
    mfa_at: dt.datetime,
    source: str = "",
    user_agent: str = "",
) -> str:
    """A new session id (for the cookie); each login gets a fresh one (caller commits)."""
    raw = secrets.token_urlsafe(32)
    db.add(
        PortalSession(
            id_sha256=digest(raw),
            user_id=user_id,
            created_at=now,
            last_seen_at=now,
            mfa_at=mfa_at,
            source=source[:64],
            user_agent=user_agent[:200],
        )
    )
    await db.flush()
    return raw


async def lookup(
    db: AsyncSession,
    raw: str | None,
    now: dt.datetime,
    limits: SessionLimits,
    *,
    touch: bool = True,
) -> ActiveSession | None:
    """The session for cookie id ``raw`` if it is valid now; refreshes its idle timer unless
    ``touch`` is False (a check that is not the person's own activity)."""
    if not raw or len(raw) > 64 or not raw.isascii():
        return None
    found = await _valid(db, PortalSession.id_sha256 == digest(raw), now, limits)
    if found is None:
        return None
    session, user = found
    if touch and now - session.last_seen_at > TOUCH_EVERY:
        await db.execute(
            update(PortalSession)
            .where(PortalSession.id == session.id)
            .values(last_seen_at=now)
            .execution_options(synchronize_session=False)
        )
    return ActiveSession(
        session.id, user.id, user.username, tuple(user.role_names), session.created_at,
        session.mfa_at,
    )  # fmt: skip


async def by_id(
    db: AsyncSession, session_id: int, now: dt.datetime, limits: SessionLimits
) -> ActiveSession | None:
    """The session with row id ``session_id`` if it is valid now (the same rules as
    ``lookup``; not the person's activity). For a node that holds the id, not the cookie."""
    found = await _valid(db, PortalSession.id == session_id, now, limits)
    if found is None:
        return None
    session, user = found
    return ActiveSession(
        session.id, user.id, user.username, tuple(user.role_names), session.created_at,
        session.mfa_at,
    )  # fmt: skip


async def _valid(
    db: AsyncSession, which: ColumnElement[bool], now: dt.datetime, limits: SessionLimits
) -> tuple[PortalSession, User] | None:
    """The session ``which`` selects and its user, if it is valid now."""
    row = (
        await db.execute(
            select(PortalSession, User).join(User, User.id == PortalSession.user_id).where(which)
        )
    ).first()
    if row is None:
        return None
    session, user = row
    if (
        session.revoked_at is not None
        or user.status != "active"
        or is_locked(user, now)
        or now - session.last_seen_at > limits.idle
        or now - session.created_at > limits.absolute
    ):
        return None
    return session, user


async def mark_mfa(db: AsyncSession, session_id: int, now: dt.datetime) -> None:
    await db.execute(
        update(PortalSession)
        .where(PortalSession.id == session_id)
        .values(mfa_at=now)
        .execution_options(synchronize_session=False)
    )


async def revoke(
    db: AsyncSession, now: dt.datetime, *, session_id: int, user_id: int | None = None
) -> bool:
    """End one session (only the user's own when ``user_id`` is given)."""
    query = update(PortalSession).where(
        PortalSession.id == session_id, PortalSession.revoked_at.is_(None)
    )
    if user_id is not None:
        query = query.where(PortalSession.user_id == user_id)
    result = await db.execute(
        query.values(revoked_at=now).execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def revoke_raw(db: AsyncSession, raw: str, now: dt.datetime) -> None:
    """End the session behind a cookie id, if any (a browser logging in again)."""
    if not raw or len(raw) > 64 or not raw.isascii():
        return
    await db.execute(
        update(PortalSession)
        .where(PortalSession.id_sha256 == digest(raw), PortalSession.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )


async def revoke_all(db: AsyncSession, user_id: int, now: dt.datetime) -> int:
    result = await db.execute(
        update(PortalSession)
        .where(PortalSession.user_id == user_id, PortalSession.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def list_for_user(
    db: AsyncSession, user_id: int, now: dt.datetime, limits: SessionLimits
) -> list[PortalSession]:
    """The user's sessions that are still valid, newest first."""
    rows = await db.scalars(
        select(PortalSession)
        .where(PortalSession.user_id == user_id, PortalSession.revoked_at.is_(None))
        .order_by(PortalSession.created_at.desc(), PortalSession.id.desc())
    )
    return [
        s
        for s in rows
        if now - s.last_seen_at <= limits.idle and now - s.created_at <= limits.absolute
    ]
