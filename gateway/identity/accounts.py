"""Accounts: creating and listing users with validated names and roles.

Passwords are stored as argon2id hashes, TOTP secrets sealed under the master key and
bound to the user's id. Does not authenticate (see the login flow) or authorise.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.authz.policy_store import bump_version
from gateway.db.models import ROLES, USER_STATUSES, User, UserRole
from gateway.errors import ConduitError
from gateway.identity.passwords import hash_password
from gateway.sealed import seal

USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class AccountError(ConduitError):
    """An account request is malformed or conflicts with an existing account."""


def totp_context(user_id: int) -> bytes:
    return f"totp:user:{user_id}".encode()


def check_username(username: str) -> str:
    if not USERNAME_RE.fullmatch(username):
        raise AccountError(
            "username must be 1-64 characters: a-z, 0-9, '.', '_', '-', starting with a "
            "letter or digit"
        )
    return username


def check_organisation(organisation: str) -> str:
    """Empty (none) or a name the policy can hold as ``org:<name>``: one stored name it
    cannot hold would stop the whole policy from loading, and with it every session."""
    if organisation and not USERNAME_RE.fullmatch(organisation):
        raise AccountError(
            "organisation must be 1-64 characters: a-z, 0-9, '.', '_', '-', starting with a "
            "letter or digit (grants name it as org:<name>)"
        )
    return organisation


async def create_user(
    db: AsyncSession,
    *,
    username: str,
    roles: Sequence[str],
    now: dt.datetime,
    master_key: bytes,
    password: str | None = None,
    totp_secret: str | None = None,
    status: str = "invited",
    display_name: str = "",
    email: str = "",
    organisation: str = "",
) -> User:
    check_username(username)
    check_organisation(organisation)
    unknown = sorted(set(roles) - set(ROLES))
    if unknown or not roles:
        raise AccountError(f"roles must be among {', '.join(ROLES)}; got {', '.join(unknown)}")
    if status not in USER_STATUSES:
        raise AccountError(f"unknown status {status!r}")
    existing = await db.execute(select(User.id).where(User.username == username))
    if existing.scalar_one_or_none() is not None:
        raise AccountError(f"user {username} already exists")
    user = User(
        username=username,
        display_name=display_name,
        email=email,
        organisation=organisation,
        status=status,
        password_hash=hash_password(password) if password is not None else None,
        created_at=now,
        updated_at=now,
        roles=[UserRole(role=r) for r in sorted(set(roles))],
    )
    db.add(user)
    await db.flush()  # assigns the id the TOTP seal is bound to
    if totp_secret is not None:
        user.totp_secret_enc = seal(master_key, totp_secret.encode(), totp_context(user.id))
    if status == "active":
        await membership_changed(db)
    return user


async def membership_changed(db: AsyncSession) -> None:
    """An account became active or stopped being active.

    Only active accounts, with their roles and organisation, are in the policy
    (``policy_store.load_index``). A new policy version in the same transaction makes every
    running gateway reload it within half a second: standing grants reach a new vendor at
    once, and the session watchdogs end the live sessions of one that is no longer active.
    """
    await bump_version(db)


async def list_users(db: AsyncSession) -> list[User]:
    return list((await db.execute(select(User).order_by(User.username))).scalars())
