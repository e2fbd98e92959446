"""Vaulted target credentials: write-only, envelope-encrypted, released only against proof.

Each secret (password or private key) is sealed under the master key and bound to its asset
and account, so a ciphertext moved to another row does not open. Admin interfaces can set
and replace a credential but never read it back; ``credential_for`` hands it to the
upstream connector and only for an ``rbac`` ``Authorization`` on that very asset. Secrets
never appear in logs, audit details, reprs or API responses.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import asyncssh
from sqlalchemy import String, UniqueConstraint, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.models import Base
from gateway.db.types import UTCDateTime
from gateway.errors import ConduitError, NotFoundOrForbidden
from gateway.sealed import seal, unseal
from rbac import names
from rbac.names import check_name
from rbac.policy import Authorization

DEFAULT_ACCOUNT = names.DEFAULT_ACCOUNT  # the account a route without "+account" uses


class VaultError(ConduitError):
    """A credential is malformed or missing."""


class AssetCredential(Base):
    __tablename__ = "asset_credentials"
    __table_args__ = (UniqueConstraint("asset", "account"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    asset: Mapped[str] = mapped_column(String(64))
    account: Mapped[str] = mapped_column(String(64))
    username: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(12))  # password | private-key
    secret_enc: Mapped[bytes] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    set_by: Mapped[str] = mapped_column(String(64), default="")  # who stored it last


@dataclass(frozen=True)
class Credential:
    username: str
    password: str | None = field(default=None, repr=False)
    private_key: asyncssh.SSHKey | None = field(default=None, repr=False)


def _context(asset: str, account: str) -> bytes:
    return f"vault:{asset}:{account}".encode()


async def set_credential(
    db: AsyncSession,
    master_key: bytes,
    *,
    asset: str,
    username: str,
    now: dt.datetime,
    account: str = DEFAULT_ACCOUNT,
    password: str | None = None,
    private_key: bytes | None = None,
    actor: str = "",
) -> None:
    """Store or replace (write-only) the credential for ``asset``/``account``."""
    check_name(asset, "asset")
    check_name(account, "account")
    if not username or len(username) > 128 or any(c.isspace() or ord(c) < 32 for c in username):
        raise VaultError("target username must be 1-128 printable characters without spaces")
    if (password is None) == (private_key is None):
        raise VaultError("give exactly one of a password or a private key")
    if password is not None:
        kind, secret = "password", password.encode()
        if not password or len(secret) > 4096:
            raise VaultError("password must be 1-4096 bytes")
    else:
        assert private_key is not None  # noqa: S101 - checked just above
        try:
            asyncssh.import_private_key(private_key)
        except (asyncssh.KeyImportError, ValueError):
            raise VaultError("the key file is not an unencrypted private key") from None
        kind, secret = "private-key", private_key
    sealed = seal(master_key, secret, _context(asset, account))
    row = (
        await db.execute(
            select(AssetCredential).where(
                AssetCredential.asset == asset, AssetCredential.account == account
            )
        )
    ).scalar_one_or_none()
    if row is None:
        db.add(
            AssetCredential(
                asset=asset,
                account=account,
                username=username,
                kind=kind,
                secret_enc=sealed,
                created_at=now,
                updated_at=now,
                set_by=actor[:64],
            )
        )
    else:
        row.username, row.kind, row.secret_enc, row.updated_at = username, kind, sealed, now
        row.set_by = actor[:64]


@dataclass(frozen=True)
class StoredCredential:
    """What an admin page may show of a vaulted credential: never the secret."""

    account: str
    username: str
    kind: str
    updated_at: dt.datetime
    set_by: str


async def stored(db: AsyncSession, asset: str) -> list[StoredCredential]:
    """The asset's credentials as an admin sees them: account, user, kind, when, by whom."""
    rows = await db.execute(
        select(
            AssetCredential.account, AssetCredential.username, AssetCredential.kind,
            AssetCredential.updated_at, AssetCredential.set_by,
        )
        .where(AssetCredential.asset == asset)
        .order_by(AssetCredential.account)
    )  # fmt: skip
    return [StoredCredential(*row) for row in rows.all()]


async def accounts(db: AsyncSession, asset: str) -> list[tuple[str, str, str]]:
    """(account, target username, kind) for an asset: never the secret."""
    rows = await db.execute(
        select(AssetCredential.account, AssetCredential.username, AssetCredential.kind)
        .where(AssetCredential.asset == asset)
        .order_by(AssetCredential.account)
    )
    return [(a, u, k) for a, u, k in rows.all()]


async def credential_for(db: AsyncSession, master_key: bytes, proof: Authorization) -> Credential:
    """The secret for the asset and account ``proof`` authorizes (an ``ssh``/``sftp-*``
    action, ``account=`` qualified for any account but the default, or a desktop's ``vnc`` /
    ``rdp`` on the default account); refuses anything else."""
    if not names.unlocks_credential(proof.action):
        raise NotFoundOrForbidden(f"{proof.action} does not log in to an account")
    account = names.account_of(proof.action)
    kind, asset = proof.obj.split(":", 1)
    if kind != "asset":
        raise NotFoundOrForbidden(f"authorization for {proof.obj} is not for an asset")
    row = (
        await db.execute(
            select(AssetCredential).where(
                AssetCredential.asset == asset, AssetCredential.account == account
            )
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFoundOrForbidden(f"no vaulted credential for {asset} account {account}")
    secret = unseal(master_key, row.secret_enc, _context(asset, account))
    if row.kind == "password":
        return Credential(row.username, password=secret.decode())
    return Credential(row.username, private_key=asyncssh.import_private_key(secret))
