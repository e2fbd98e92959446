"""Pending logins: the server-side state between login step 1 and step 2.

The browser holds a 256-bit random id; the table holds its SHA-256. Step 1 binds the state
to one username with a conditional UPDATE that only succeeds while the state is unbound or
bound to that same name, so a second step 1 naming another user cannot take it over (the
caller then destroys it). Step 2 takes the state with a DELETE that one caller wins. Also
derives the CSRF tokens bound to a cookie id. Does not check passwords or codes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.identity.models import PendingLogin

PENDING_LIFETIME = dt.timedelta(minutes=5)
ID_BYTES = 32  # 256 bits
MAX_ID_LENGTH = 64


def digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def csrf_token(master_key: bytes, purpose: str, raw_id: str) -> str:
    """A CSRF token tied to one cookie id: only the server, holding the key, can make it."""
    mac = hmac.new(master_key, f"csrf:{purpose}:{raw_id}".encode(), hashlib.sha256)
    return mac.hexdigest()


def csrf_ok(master_key: bytes, purpose: str, raw_id: str, presented: str | None) -> bool:
    if not presented or len(presented) != 64 or not presented.isascii():
        return False
    return hmac.compare_digest(csrf_token(master_key, purpose, raw_id), presented)


def _usable_id(raw: str | None) -> bool:
    return raw is not None and 0 < len(raw) <= MAX_ID_LENGTH and raw.isascii()


async def start(db: AsyncSession, now: dt.datetime, next_path: str = "/") -> str:
    """Create a fresh pending login and return the id for the cookie (caller commits)."""
    # Expired states are garbage; collecting them here keeps the table small without a timer.
    await db.execute(delete(PendingLogin).where(PendingLogin.expires_at <= now))
    raw = secrets.token_urlsafe(ID_BYTES)
    db.add(
        PendingLogin(
            id_sha256=digest(raw),
            next_path=next_path,
            created_at=now,
            expires_at=now + PENDING_LIFETIME,
        )
    )
    await db.flush()
    return raw


async def find(db: AsyncSession, raw: str | None, now: dt.datetime) -> PendingLogin | None:
    if raw is None or not _usable_id(raw):
        return None
    row = await db.scalar(select(PendingLogin).where(PendingLogin.id_sha256 == digest(raw)))
    if row is None or row.expires_at <= now:
        return None
    return row


async def bind(
    db: AsyncSession, pending_id: int, username: str, user_id: int | None, password_ok: bool
) -> bool:
    """Record step 1's result; False when the state already names another user."""
    result = await db.execute(
        update(PendingLogin)
        .where(PendingLogin.id == pending_id, PendingLogin.username.in_(("", username)))
        .values(username=username, user_id=user_id, password_ok=password_ok)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def destroy(db: AsyncSession, pending_id: int) -> None:
    await db.execute(delete(PendingLogin).where(PendingLogin.id == pending_id))


async def take(db: AsyncSession, raw: str | None, now: dt.datetime) -> PendingLogin | None:
    """Remove the state and return it; of concurrent callers only one gets it."""
    row = await find(db, raw, now)
    if row is None:
        return None
    result = await db.execute(
        delete(PendingLogin)
        .where(PendingLogin.id == row.id)
        .execution_options(synchronize_session=False)
    )
    return row if result.rowcount == 1 else None  # type: ignore[attr-defined]
