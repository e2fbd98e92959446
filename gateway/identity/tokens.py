"""API tokens for automation: scoped, expiring, shown once, stored as SHA-256.

A token is ``cdt_`` + 256 random bits; a database reader sees only digests. A token works
while unexpired, unrevoked and while its user is active and not locked. Does not read HTTP
headers (see ``gateway.web.auth``) or decide what a scope allows beyond naming it.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.models import User
from gateway.errors import ConduitError
from gateway.identity.lockout import is_locked
from gateway.identity.models import ApiToken
from gateway.identity.pending import digest

PREFIX = "cdt_"
SCOPE_RE = re.compile(r"[a-z][a-z0-9_.:-]{0,47}")
MAX_LIFETIME_DAYS = 366
MAX_TOKEN_LENGTH = 100
# "Last used" is kept to the minute: a busy automation does not write on every request.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


class TokenError(ConduitError):
    """A token request is malformed (bad scope or lifetime)."""


@dataclass(frozen=True)
class NewToken:
    token_id: int
    token: str  # shown once, never stored
    expires_at: dt.datetime


@dataclass(frozen=True)
class TokenIdentity:
    token_id: int
    user_id: int
    username: str
    roles: tuple[str, ...]
    scopes: frozenset[str]


def check_scopes(scopes: Sequence[str]) -> list[str]:
    cleaned = sorted(set(scopes))
    if not cleaned or any(SCOPE_RE.fullmatch(s) is None for s in cleaned):
        raise TokenError("scopes must be 1-48 characters: a-z, 0-9, '_', '.', ':', '-'")
    return cleaned


async def create_token(
    db: AsyncSession, user_id: int, scopes: Sequence[str], days: int, now: dt.datetime
) -> NewToken:
    if not 1 <= days <= MAX_LIFETIME_DAYS:
        raise TokenError(f"token lifetime must be 1-{MAX_LIFETIME_DAYS} days")
    token = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        user_id=user_id,
        token_sha256=digest(token),
        scopes=" ".join(check_scopes(scopes)),
        created_at=now,
        expires_at=now + dt.timedelta(days=days),
    )
    db.add(row)
    await db.flush()
    return NewToken(row.id, token, row.expires_at)


async def authenticate_token(
    db: AsyncSession, token: str, now: dt.datetime
) -> TokenIdentity | None:
    """The identity behind ``token`` if it is usable now; None for any failure. A usable
    token's ``last_used_at`` is moved to ``now`` (at most once a minute): callers commit."""
    if not token.startswith(PREFIX) or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        return None
    row = (
        await db.execute(
            select(ApiToken, User)
            .join(User, User.id == ApiToken.user_id)
            .where(ApiToken.token_sha256 == digest(token))
        )
    ).first()
    if row is None:
        return None
    api_token, user = row
    if (
        api_token.revoked_at is not None
        or api_token.expires_at <= now
        or user.status != "active"
        or is_locked(user, now)
    ):
        return None
    last = api_token.last_used_at
    if last is None or now - last >= LAST_USED_RESOLUTION:
        api_token.last_used_at = now
    return TokenIdentity(
        api_token.id,
        user.id,
        user.username,
        tuple(user.role_names),
        frozenset(api_token.scopes.split()),
    )


async def revoke_token(
    db: AsyncSession, token_id: int, now: dt.datetime, user_id: int | None = None
) -> bool:
    query = update(ApiToken).where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
    if user_id is not None:
        query = query.where(ApiToken.user_id == user_id)
    result = await db.execute(
        query.values(revoked_at=now).execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def list_tokens(db: AsyncSession, user_id: int) -> list[ApiToken]:
    rows = await db.scalars(
        select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.id)
    )
    return list(rows)


@dataclass(frozen=True)
class OwnedToken:
    """A token with its owner's name, for the admins' list of every token."""

    token: ApiToken
    owner: str


async def list_all_tokens(db: AsyncSession) -> list[OwnedToken]:
    """Every token of every user that is not revoked, newest first."""
    rows = await db.execute(
        select(ApiToken, User.username)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.revoked_at.is_(None))
        .order_by(ApiToken.id.desc())
    )
    return [OwnedToken(token, owner) for token, owner in rows.all()]


async def find_token(db: AsyncSession, token_id: int) -> OwnedToken | None:
    """One unrevoked token with its owner, or None."""
    row = (
        await db.execute(
            select(ApiToken, User.username)
            .join(User, User.id == ApiToken.user_id)
            .where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
        )
    ).first()
    return OwnedToken(row[0], row[1]) if row is not None else None
