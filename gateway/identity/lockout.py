"""Account lockout shared by every channel (portal, API, SSH): one counter in the database.

Each failed password or code adds a row; when a user has ``max_failures`` rows inside
``window_seconds`` the account is locked until ``now + lock_seconds`` and the rows are
cleared, so the count starts afresh after the lock. An admin unlock clears both. Because
the state is in the database, every process and node sees the same count. Does not check
credentials.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.config import LockoutSettings
from gateway.db.models import User
from gateway.identity.models import AuthFailure

CHANNELS = ("portal", "api", "ssh")


def is_locked(user: User, now: dt.datetime) -> bool:
    return user.locked_until is not None and user.locked_until > now


async def record_failure(
    db: AsyncSession, user_id: int, channel: str, now: dt.datetime, policy: LockoutSettings
) -> bool:
    """Count one failure; True when this failure locked the account."""
    db.add(AuthFailure(user_id=user_id, at=now, channel=channel))
    await db.flush()
    since = now - dt.timedelta(seconds=policy.window_seconds)
    count = await db.scalar(
        select(func.count())
        .select_from(AuthFailure)
        .where(AuthFailure.user_id == user_id, AuthFailure.at > since)
    )
    if (count or 0) < policy.max_failures:
        return False
    await db.execute(
        update(User)
        .where(User.id == user_id)
        .values(locked_until=now + dt.timedelta(seconds=policy.lock_seconds))
        .execution_options(synchronize_session=False)
    )
    await db.execute(delete(AuthFailure).where(AuthFailure.user_id == user_id))
    return True


async def clear_failures(db: AsyncSession, user_id: int) -> None:
    """After a success the earlier failures no longer count."""
    await db.execute(delete(AuthFailure).where(AuthFailure.user_id == user_id))


async def unlock(db: AsyncSession, user_id: int) -> None:
    await db.execute(
        update(User)
        .where(User.id == user_id)
        .values(locked_until=None)
        .execution_options(synchronize_session=False)
    )
    await clear_failures(db, user_id)
