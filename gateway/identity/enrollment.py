"""One-time enrolment links: the admin bootstrap link and user invitations.

A token is 256 bits from ``secrets``; only its SHA-256 is stored, so a database reader
cannot use a pending link. Issuing a new bootstrap link voids the older ones. Consuming a
link is single-use and atomic (one conditional UPDATE), so two tabs or two gateway
processes cannot both use it. Does not create the account itself.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.models import EnrollmentToken, User, UserRole

ADMIN_BOOTSTRAP = "admin-bootstrap"
INVITE = "invite"
BOOTSTRAP_LIFETIME = dt.timedelta(minutes=30)
INVITE_LIFETIME = dt.timedelta(days=3)


@dataclass(frozen=True)
class EnrollmentLink:
    token: str
    expires_at: dt.datetime

    def url(self, portal_url: str) -> str:
        return f"{portal_url}/enroll/{self.token}"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def active_admin_exists(db: AsyncSession) -> bool:
    query = (
        select(func.count())
        .select_from(User)
        .join(UserRole, UserRole.user_id == User.id)
        .where(UserRole.role == "admin", User.status == "active")
    )
    return bool((await db.execute(query)).scalar_one())


async def issue_admin_bootstrap(db: AsyncSession, now: dt.datetime) -> EnrollmentLink:
    """Void older unused bootstrap links and issue a fresh one (caller commits)."""
    await db.execute(
        update(EnrollmentToken)
        .where(EnrollmentToken.purpose == ADMIN_BOOTSTRAP, EnrollmentToken.used_at.is_(None))
        .values(expires_at=now)
    )
    token = secrets.token_urlsafe(32)
    expires = now + BOOTSTRAP_LIFETIME
    db.add(
        EnrollmentToken(
            token_sha256=_digest(token),
            purpose=ADMIN_BOOTSTRAP,
            created_at=now,
            expires_at=expires,
        )
    )
    return EnrollmentLink(token, expires)


async def issue_invite(
    db: AsyncSession, user_id: int, now: dt.datetime, lifetime: dt.timedelta = INVITE_LIFETIME
) -> EnrollmentLink:
    """Void the user's older unused invitations and issue a fresh one (caller commits)."""
    await db.execute(
        update(EnrollmentToken)
        .where(
            EnrollmentToken.purpose == INVITE,
            EnrollmentToken.user_id == user_id,
            EnrollmentToken.used_at.is_(None),
        )
        .values(expires_at=now)
    )
    token = secrets.token_urlsafe(32)
    db.add(
        EnrollmentToken(
            token_sha256=_digest(token),
            purpose=INVITE,
            user_id=user_id,
            created_at=now,
            expires_at=now + lifetime,
        )
    )
    return EnrollmentLink(token, now + lifetime)


async def find_valid(db: AsyncSession, token: str, now: dt.datetime) -> EnrollmentToken | None:
    """The unexpired, unused token row for ``token``, or None (all failures look alike)."""
    if not 20 <= len(token) <= 128 or not token.isascii():
        return None
    row = (
        await db.execute(
            select(EnrollmentToken).where(EnrollmentToken.token_sha256 == _digest(token))
        )
    ).scalar_one_or_none()
    if row is None or row.used_at is not None or row.expires_at <= now:
        return None
    return row


async def consume(db: AsyncSession, token: str, now: dt.datetime) -> EnrollmentToken | None:
    """Mark the token used if it is still valid; exactly one caller can win."""
    row = await find_valid(db, token, now)
    if row is None:
        return None
    result = await db.execute(
        update(EnrollmentToken)
        .where(
            EnrollmentToken.id == row.id,
            EnrollmentToken.used_at.is_(None),
            EnrollmentToken.expires_at > now,
        )
        .values(used_at=now)
    )
    return row if result.rowcount == 1 else None  # type: ignore[attr-defined]
