"""Getting a person into an account: invitations, enrolment, and admin account changes.

An admin invites a user (status ``invited``, one-time link). Whoever opens the link sets a
password under the policy and enrols TOTP, proven by a first code; the account becomes
``active`` and gets 10 recovery codes. The admin bootstrap link does the same and creates
the first admin. The TOTP secret shown during enrolment is derived from the link's digest
with the master key, so the page and the form post agree without storing anything, and
nobody without the master key can compute it. Also: disable, enable, unlock, reset MFA.
Does not write audit events (callers do, after their transaction commits).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.models import ROLES, EnrollmentToken, User, UserRole
from gateway.errors import ConduitError
from gateway.identity import enrollment, lockout, portal_sessions
from gateway.identity.accounts import (
    AccountError,
    check_username,
    create_user,
    membership_changed,
    totp_context,
)
from gateway.identity.codes import matching_step, replace_recovery_codes
from gateway.identity.models import RecoveryCode
from gateway.identity.passwords import PasswordPolicy, hash_password
from gateway.identity.totp import TOTP_SECRET_BYTES
from gateway.sealed import seal


class EnrolmentError(ConduitError):
    """The enrolment form cannot be accepted; the message says what to fix."""


@dataclass(frozen=True)
class Enrolled:
    user_id: int
    username: str
    purpose: str
    recovery_codes: list[str]  # shown once


def enrolment_totp_secret(master_key: bytes, token_sha256: str) -> str:
    mac = hmac.new(master_key, f"enrol-totp:{token_sha256}".encode(), hashlib.sha256).digest()
    return base64.b32encode(mac[:TOTP_SECRET_BYTES]).decode("ascii")


async def find_user(db: AsyncSession, username: str) -> User:
    user: User | None = await db.scalar(select(User).where(User.username == username))
    if user is None:
        raise AccountError(f"no user {username}")
    return user


async def invite_user(
    db: AsyncSession,
    username: str,
    roles: Sequence[str],
    now: dt.datetime,
    master_key: bytes,
    organisation: str = "",
) -> tuple[User, enrollment.EnrollmentLink]:
    """Create an invited account (or re-invite a still-invited one) and its one-time link."""
    existing: User | None = await db.scalar(select(User).where(User.username == username))
    if existing is not None and existing.status != "invited":
        raise AccountError(f"user {username} already exists and is {existing.status}")
    user = existing or await create_user(
        db, username=username, roles=roles, now=now, master_key=master_key,
        organisation=organisation,
    )  # fmt: skip
    return user, await enrollment.issue_invite(db, user.id, now)


async def complete_enrolment(
    db: AsyncSession,
    token: str,
    *,
    password: str,
    code: str,
    now: dt.datetime,
    master_key: bytes,
    policy: PasswordPolicy,
    username: str = "",
) -> Enrolled:
    """Set password and TOTP through a one-time link; the link is spent only on success."""
    row = await enrollment.find_valid(db, token, now)
    if row is None:
        raise EnrolmentError("this link is not valid: it may have expired or been used")
    user: User | None = None
    if row.purpose == enrollment.INVITE:
        user = await db.get(User, row.user_id) if row.user_id is not None else None
        if user is None or user.status != "invited":
            raise EnrolmentError("this link is not valid: it may have expired or been used")
        username = user.username
    elif row.purpose == enrollment.ADMIN_BOOTSTRAP:
        try:
            check_username(username)
        except AccountError as exc:
            raise EnrolmentError(exc.message) from None
    else:
        raise EnrolmentError("this link is not valid: it may have expired or been used")
    try:
        policy.check(password, username)
    except ConduitError as exc:
        raise EnrolmentError(exc.message) from None
    secret = enrolment_totp_secret(master_key, row.token_sha256)
    step = matching_step(secret, code, now)
    if step is None:
        raise EnrolmentError("the code does not match: check the authenticator's clock")
    password_hash = await asyncio.to_thread(hash_password, password)
    if await enrollment.consume(db, token, now) is None:
        raise EnrolmentError("this link is not valid: it may have expired or been used")
    if user is None:
        try:
            user = await create_user(
                db, username=username, roles=["admin"], now=now, master_key=master_key
            )
        except AccountError as exc:
            raise EnrolmentError(exc.message) from None
    user.password_hash = password_hash
    user.totp_secret_enc = seal(master_key, secret.encode(), totp_context(user.id))
    user.totp_last_step = step  # the confirming code is spent
    user.status = "active"
    user.updated_at = now
    await membership_changed(db)  # now in the policy: standing grants reach the user at once
    await db.flush()
    codes = await replace_recovery_codes(db, user.id, now)
    return Enrolled(user.id, user.username, row.purpose, codes)


async def set_status(db: AsyncSession, username: str, status: str, now: dt.datetime) -> User:
    """Disable or enable an account; disabling ends its portal sessions at once, and its
    live sessions within half a second (``membership_changed``)."""
    if status not in ("active", "disabled"):
        raise AccountError(f"cannot set status {status!r} directly")
    user = await find_user(db, username)
    if status == "active" and user.status != "disabled":
        raise AccountError(f"user {username} is {user.status}, not disabled")
    user.status = status
    user.updated_at = now
    if status == "disabled":
        await portal_sessions.revoke_all(db, user.id, now)
    await membership_changed(db)
    await db.flush()
    return user


async def set_roles(
    db: AsyncSession, username: str, roles: Sequence[str], now: dt.datetime
) -> User:
    """Replace an account's roles (at least one, each known); policy reloads everywhere."""
    unknown = sorted(set(roles) - set(ROLES))
    if unknown or not roles:
        raise AccountError(f"roles must be among {', '.join(ROLES)}")
    user = await find_user(db, username)
    kept = [r for r in user.roles if r.role in roles]
    user.roles = kept + [UserRole(role=r) for r in sorted(set(roles) - {r.role for r in kept})]
    user.updated_at = now
    await membership_changed(db)
    await db.flush()
    return user


async def unlock_user(db: AsyncSession, username: str) -> User:
    user = await find_user(db, username)
    await lockout.unlock(db, user.id)
    return user


async def reset_mfa(
    db: AsyncSession, username: str, now: dt.datetime
) -> tuple[User, enrollment.EnrollmentLink]:
    """Drop TOTP and recovery codes, end sessions, and re-invite the user to enrol again."""
    user = await find_user(db, username)
    user.totp_secret_enc = None
    user.totp_last_step = None
    user.password_hash = None  # the invitation sets both factors again
    user.status = "invited"
    user.updated_at = now
    await db.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    await portal_sessions.revoke_all(db, user.id, now)
    await membership_changed(db)  # no longer active
    await db.flush()
    return user, await enrollment.issue_invite(db, user.id, now)


async def link_purpose(db: AsyncSession, token: str, now: dt.datetime) -> EnrollmentToken | None:
    return await enrollment.find_valid(db, token, now)
