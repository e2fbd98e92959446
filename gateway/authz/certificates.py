"""Pinned TLS certificates of desktop targets: the only ones a VNC (VeNCrypt X.509) or RDP
session accepts for an asset.

A pin is the SHA-256 of the certificate's DER bytes, 64 lowercase hex digits. An admin pins
by reading the target once (``conduit assets pin-cert NAME --scan``: trust on first use, by a
person, audited) or by giving the fingerprint from the target's own console. An RDP asset
without a pin does not connect; a VNC asset with a pin accepts only TLS with that certificate.
Does not connect anywhere itself (the scans live with the desktop front end).
"""

from __future__ import annotations

import datetime as dt
import re

from sqlalchemy import String, UniqueConstraint, delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.models import Base
from gateway.db.types import UTCDateTime
from gateway.errors import ConduitError

_HEX64 = re.compile(r"[0-9a-f]{64}")


class CertificatePinError(ConduitError):
    """Not a SHA-256 certificate fingerprint."""


class AssetCertificate(Base):
    __tablename__ = "asset_certificates"
    __table_args__ = (UniqueConstraint("asset", "sha256"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    asset: Mapped[str] = mapped_column(String(64), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    added_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


def normalize(text: str) -> str:
    """``AB:CD:...``, ``sha256:...``, ``SHA256 Fingerprint=...`` or plain hex, as 64 lowercase
    hex digits; ``CertificatePinError`` otherwise."""
    value = text.strip().lower()
    for prefix in ("sha256 fingerprint=", "sha256:", "sha256="):
        value = value.removeprefix(prefix)
    value = value.replace(":", "").replace(" ", "")
    if not _HEX64.fullmatch(value):
        raise CertificatePinError(
            "not a SHA-256 certificate fingerprint: 64 hex digits, colons allowed"
        )
    return value


async def pin(
    db: AsyncSession, asset: str, fingerprint: str, *, actor: str, now: dt.datetime
) -> str:
    value = normalize(fingerprint)
    exists = await db.execute(
        select(AssetCertificate.id).where(
            AssetCertificate.asset == asset, AssetCertificate.sha256 == value
        )
    )
    if exists.first() is None:
        db.add(AssetCertificate(asset=asset, sha256=value, added_by=actor, created_at=now))
    return value


async def unpin_all(db: AsyncSession, asset: str) -> None:
    await db.execute(delete(AssetCertificate).where(AssetCertificate.asset == asset))


async def pin_rows(db: AsyncSession, asset: str) -> list[AssetCertificate]:
    rows = await db.execute(
        select(AssetCertificate)
        .where(AssetCertificate.asset == asset)
        .order_by(AssetCertificate.id)
    )
    return list(rows.scalars())


async def pinned(db: AsyncSession, asset: str) -> tuple[str, ...]:
    rows = await db.execute(
        select(AssetCertificate.sha256)
        .where(AssetCertificate.asset == asset)
        .order_by(AssetCertificate.id)
    )
    return tuple(rows.scalars())
