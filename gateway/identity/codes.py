"""Second-factor codes: TOTP checking with single use, and recovery codes.

A TOTP code is accepted only as ASCII ``^[0-9]{6}$`` (``str.isdigit`` would let full-width
and other Unicode digits through), within one 30-second step either side, compared in
constant time, and only once per account: accepting moves ``users.totp_last_step`` forward
with one conditional UPDATE, so of any number of parallel requests or gateway processes
presenting the same code exactly one sees rowcount 1. Recovery codes are 50-bit random
strings stored as SHA-256 and consumed the same way. Does not count failures (see lockout).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import secrets

import pyotp
from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.models import User
from gateway.identity.accounts import totp_context
from gateway.identity.models import RecoveryCode
from gateway.sealed import unseal

TOTP_PERIOD = 30
TOTP_CODE_RE = re.compile(r"[0-9]{6}")
RECOVERY_CODE_RE = re.compile(r"[a-z2-7]{5}-[a-z2-7]{5}")
RECOVERY_CODE_COUNT = 10
MAX_CODE_LENGTH = 32  # anything longer is refused before any work


def is_totp_format(code: str) -> bool:
    return TOTP_CODE_RE.fullmatch(code) is not None


def normalise_recovery(code: str) -> str | None:
    """The canonical form of a recovery code, or None when it cannot be one."""
    if len(code) != 11 or not code.isascii():
        return None
    lowered = code.lower()
    return lowered if RECOVERY_CODE_RE.fullmatch(lowered) else None


def matching_step(secret: str, code: str, now: dt.datetime) -> int | None:
    """The time step in [now-1, now+1] whose code equals ``code``, compared in constant time.

    All three candidates are computed and compared, so timing does not say which matched.
    """
    if not is_totp_format(code):
        return None
    totp = pyotp.TOTP(secret, interval=TOTP_PERIOD)
    current = int(now.timestamp()) // TOTP_PERIOD
    found: int | None = None
    for step in (current - 1, current, current + 1):
        if hmac.compare_digest(totp.generate_otp(step).encode(), code.encode()):
            found = step
    return found


def user_totp_secret(user: User, master_key: bytes) -> str | None:
    if user.totp_secret_enc is None:
        return None
    return unseal(master_key, user.totp_secret_enc, totp_context(user.id)).decode("ascii")


async def claim_totp_step(db: AsyncSession, user_id: int, step: int) -> bool:
    """Move the user's last accepted step to ``step``; True for exactly one caller."""
    result = await db.execute(
        update(User)
        .where(
            User.id == user_id,
            (User.totp_last_step.is_(None)) | (User.totp_last_step < step),
        )
        .values(totp_last_step=step)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def use_totp(
    db: AsyncSession, user: User, code: str, now: dt.datetime, master_key: bytes
) -> bool:
    """Check ``code`` for ``user`` and spend it; False if wrong, stale or already used."""
    secret = user_totp_secret(user, master_key)
    if secret is None:
        return False
    step = matching_step(secret, code, now)
    if step is None:
        return False
    return await claim_totp_step(db, user.id, step)


def _digest(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def new_recovery_code() -> str:
    raw = base64.b32encode(secrets.token_bytes(7)).decode("ascii").lower()[:10]
    return f"{raw[:5]}-{raw[5:]}"


async def replace_recovery_codes(db: AsyncSession, user_id: int, now: dt.datetime) -> list[str]:
    """Drop the user's recovery codes and make ``RECOVERY_CODE_COUNT`` new ones (shown once)."""
    await db.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
    codes = [new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
    for code in codes:
        db.add(RecoveryCode(user_id=user_id, code_sha256=_digest(code), created_at=now))
    await db.flush()
    return codes


async def use_recovery_code(db: AsyncSession, user_id: int, code: str, now: dt.datetime) -> bool:
    canonical = normalise_recovery(code)
    if canonical is None:
        return False
    result = await db.execute(
        update(RecoveryCode)
        .where(
            RecoveryCode.user_id == user_id,
            RecoveryCode.code_sha256 == _digest(canonical),
            RecoveryCode.used_at.is_(None),
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def use_second_factor(
    db: AsyncSession, user: User, code: str, now: dt.datetime, master_key: bytes
) -> str | None:
    """Spend a TOTP or recovery code: "totp", "recovery", or None when refused."""
    if len(code) > MAX_CODE_LENGTH:
        return None
    if is_totp_format(code):
        return "totp" if await use_totp(db, user, code, now, master_key) else None
    if await use_recovery_code(db, user.id, code, now):
        return "recovery"
    return None
