"""What the SSH jump host needs from identity: per-user public keys and connect codes.

Public keys are parsed with asyncssh (one OpenSSH ``authorized_keys`` style line each),
identified by their SHA-256 fingerprint; DSA and RSA below 2048 bits are refused. A
connect code is made in the portal after MFA, valid five minutes, bound to one user and
one asset, stored as SHA-256 and spent by one conditional UPDATE. Password + TOTP over SSH
goes through ``Authenticator.verify_password_and_code`` so the lockout is shared. Does not
run an SSH server or decide access to the asset.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from dataclasses import dataclass

import asyncssh
from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.errors import ConduitError
from gateway.identity.models import ConnectCode, SSHPublicKey
from gateway.identity.pending import digest

CONNECT_CODE_LIFETIME = dt.timedelta(minutes=5)
ASSET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_KEY_LINE = 16384  # an 16k-bit RSA key is ~2.8k characters; anything longer is not a key
MIN_RSA_BITS = 2048


class SSHKeyError(ConduitError):
    """A public key is unparseable, too weak, or already registered."""


@dataclass(frozen=True)
class ParsedKey:
    algorithm: str
    fingerprint: str
    openssh: str
    comment: str


def parse_public_key(line: str) -> ParsedKey:
    text = line.strip()
    if not text or len(text) > MAX_KEY_LINE or not text.isascii() or "\n" in text:
        raise SSHKeyError("paste one OpenSSH public key line (ssh-ed25519 AAAA... comment)")
    try:
        key = asyncssh.import_public_key(text)
    except (asyncssh.KeyImportError, ValueError):
        raise SSHKeyError("not an OpenSSH public key") from None
    algorithm = key.get_algorithm()
    if algorithm == "ssh-dss":
        raise SSHKeyError("DSA keys are not accepted")
    pyca = getattr(key, "pyca_key", None)
    if algorithm == "ssh-rsa" and getattr(pyca, "key_size", 0) < MIN_RSA_BITS:
        raise SSHKeyError(f"RSA keys must have at least {MIN_RSA_BITS} bits")
    body = key.export_public_key("openssh").decode("ascii").split()
    comment = (key.get_comment() or "")[:200]
    return ParsedKey(algorithm, key.get_fingerprint("sha256"), " ".join(body[:2]), comment)


async def add_public_key(
    db: AsyncSession, user_id: int, line: str, now: dt.datetime
) -> SSHPublicKey:
    parsed = parse_public_key(line)
    exists = await db.scalar(
        select(SSHPublicKey.id).where(
            SSHPublicKey.user_id == user_id, SSHPublicKey.fingerprint == parsed.fingerprint
        )
    )
    if exists is not None:
        raise SSHKeyError("this key is already registered")
    row = SSHPublicKey(
        user_id=user_id,
        fingerprint=parsed.fingerprint,
        algorithm=parsed.algorithm,
        openssh=parsed.openssh,
        comment=parsed.comment,
        created_at=now,
    )
    db.add(row)
    await db.flush()
    return row


async def remove_public_key(db: AsyncSession, user_id: int, key_id: int) -> str | None:
    """Remove one of the user's keys; its fingerprint, or None if it was not theirs.

    Certificates issued for the key stop logging in at once (gateway/ssh/certificates.py
    checks the key is still registered)."""
    fingerprint: str | None = await db.scalar(
        delete(SSHPublicKey)
        .where(SSHPublicKey.id == key_id, SSHPublicKey.user_id == user_id)
        .returning(SSHPublicKey.fingerprint)
    )
    return fingerprint


async def list_public_keys(db: AsyncSession, user_id: int) -> list[SSHPublicKey]:
    rows = await db.scalars(
        select(SSHPublicKey).where(SSHPublicKey.user_id == user_id).order_by(SSHPublicKey.id)
    )
    return list(rows)


async def authorized_keys(db: AsyncSession, user_id: int) -> list[asyncssh.SSHKey]:
    """The user's keys as asyncssh objects, for the SSH server's public-key check."""
    return [asyncssh.import_public_key(k.openssh) for k in await list_public_keys(db, user_id)]


async def issue_connect_code(
    db: AsyncSession, user_id: int, asset: str, now: dt.datetime
) -> tuple[str, dt.datetime]:
    """A fresh code for ``asset`` (shown once) and when it expires (caller commits)."""
    if ASSET_RE.fullmatch(asset) is None:
        raise ConduitError("not found or not permitted", f"malformed asset name {asset!r}")
    code = secrets.token_urlsafe(18)
    expires = now + CONNECT_CODE_LIFETIME
    db.add(
        ConnectCode(
            user_id=user_id,
            asset=asset,
            code_sha256=digest(code),
            created_at=now,
            expires_at=expires,
        )
    )
    await db.flush()
    return code, expires


# What issue_connect_code makes (secrets.token_urlsafe(18)). Every SSH password is tried as a
# code first: only an answer of exactly this shape is looked up, so a password (or its hash)
# reaches the database only when it could be a code at all.
CONNECT_CODE_RE = re.compile(r"[A-Za-z0-9_-]{24}")


def _could_be_code(code: str) -> bool:
    return CONNECT_CODE_RE.fullmatch(code) is not None


def _open_code(user_id: int, asset: str, code: str, now: dt.datetime) -> list[ColumnElement[bool]]:
    """The WHERE clause of an unspent, unexpired ``code`` of this user for this asset. The
    code is found by its SHA-256, so the lookup's timing says nothing about the code."""
    return [
        ConnectCode.code_sha256 == digest(code),
        ConnectCode.user_id == user_id,
        ConnectCode.asset == asset,
        ConnectCode.used_at.is_(None),
        ConnectCode.expires_at > now,
    ]


async def connect_code_is_open(
    db: AsyncSession, user_id: int, asset: str, code: str, now: dt.datetime
) -> bool:
    """Would ``code`` log this user in to this asset now? Spends nothing."""
    if not _could_be_code(code):
        return False
    found = await db.scalar(select(ConnectCode.id).where(*_open_code(user_id, asset, code, now)))
    return found is not None


async def use_connect_code(
    db: AsyncSession, user_id: int, asset: str, code: str, now: dt.datetime
) -> bool:
    """Spend ``code`` for this user and asset; True for exactly one caller, once."""
    if not _could_be_code(code):
        return False
    result = await db.execute(
        update(ConnectCode)
        .where(*_open_code(user_id, asset, code, now))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]
