"""Pinned target host keys: the only keys the upstream client accepts for an asset.

An admin pins keys by scanning the target once (trust on first use, by a person, audited)
or by pasting a known_hosts line. The upstream connection builds its known-hosts from the
pins alone; no pin means no connection. Does not connect anywhere except for ``scan``.
"""

from __future__ import annotations

import datetime as dt

import asyncssh
from sqlalchemy import String, UniqueConstraint, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.models import Base
from gateway.db.types import UTCDateTime
from gateway.errors import ConduitError


class HostKeyError(ConduitError):
    """A host key line is malformed, or a scan failed."""


class AssetHostKey(Base):
    __tablename__ = "asset_host_keys"
    __table_args__ = (UniqueConstraint("asset", "fingerprint"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    asset: Mapped[str] = mapped_column(String(64), index=True)
    key: Mapped[str] = mapped_column(String(16384))  # OpenSSH public key line
    fingerprint: Mapped[str] = mapped_column(String(100))
    added_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


def parse_key_line(line: str) -> asyncssh.SSHKey:
    """A public key from ``ssh-ed25519 AAAA...`` or a known_hosts line ``host ssh-ed25519 AAAA``."""
    parts = line.strip().split()
    for start in range(min(2, len(parts))):
        try:
            return asyncssh.import_public_key(" ".join(parts[start : start + 2]))
        except (asyncssh.KeyImportError, ValueError):
            continue
    raise HostKeyError("not an OpenSSH public key or known_hosts line")


async def scan(host: str, port: int) -> asyncssh.SSHKey:
    """The target's host key, read once (callers bound the wait with ``asyncio.timeout``)."""
    try:
        key = await asyncssh.get_server_host_key(host, port)
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise HostKeyError(f"could not read the host key of {host}:{port}: {exc}") from None
    if key is None:
        raise HostKeyError(f"{host}:{port} offered no host key")
    return key


# One connection per key family: a server offers one host key per negotiation, so asking
# for each family in turn reads every key it has (that the gateway can verify).
SCAN_FAMILIES = (
    ("ssh-ed25519",),
    ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"),
    ("rsa-sha2-512", "rsa-sha2-256"),
)


async def scan_all(host: str, port: int) -> list[asyncssh.SSHKey]:
    """Every host key the target offers, one per family, without logging in (callers
    bound the wait). ``HostKeyError`` when none could be read, with the first failure."""
    keys: dict[str, asyncssh.SSHKey] = {}
    failure = ""
    for algorithms in SCAN_FAMILIES:
        try:
            key = await asyncssh.get_server_host_key(
                host, port, server_host_key_algs=list(algorithms)
            )
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            failure = failure or str(exc) or type(exc).__name__
            if isinstance(exc, OSError):
                break  # nothing listens there: the other families will not do better
            continue
        if key is not None:
            keys.setdefault(key.get_fingerprint("sha256"), key)
    if not keys:
        raise HostKeyError(f"could not read the host keys of {host}:{port}: {failure}")
    return list(keys.values())


async def pins(db: AsyncSession, asset: str) -> list[AssetHostKey]:
    rows = await db.execute(
        select(AssetHostKey).where(AssetHostKey.asset == asset).order_by(AssetHostKey.id)
    )
    return list(rows.scalars())


async def pin(
    db: AsyncSession, asset: str, key: asyncssh.SSHKey, *, actor: str, now: dt.datetime
) -> str:
    fingerprint = key.get_fingerprint("sha256")
    exists = await db.execute(
        select(AssetHostKey.id).where(
            AssetHostKey.asset == asset, AssetHostKey.fingerprint == fingerprint
        )
    )
    if exists.first() is None:
        db.add(
            AssetHostKey(
                asset=asset,
                key=key.export_public_key("openssh").decode().strip(),
                fingerprint=fingerprint,
                added_by=actor,
                created_at=now,
            )
        )
    return fingerprint


async def unpin_all(db: AsyncSession, asset: str) -> None:
    for row in (
        await db.execute(select(AssetHostKey).where(AssetHostKey.asset == asset))
    ).scalars():
        await db.delete(row)


async def pinned_lines(db: AsyncSession, asset: str) -> tuple[str, ...]:
    """The asset's pinned keys as OpenSSH public key lines, in pinning order."""
    rows = await db.execute(
        select(AssetHostKey.key).where(AssetHostKey.asset == asset).order_by(AssetHostKey.id)
    )
    return tuple(rows.scalars())


async def pinned(db: AsyncSession, asset: str) -> list[asyncssh.SSHKey]:
    return [asyncssh.import_public_key(line) for line in await pinned_lines(db, asset)]
