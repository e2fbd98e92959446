"""One-time grants that let a node's portal relay a live watch from the node that owns the
session, and where each node's portal is reached.

A watcher's portal request may land on node A while node B relays the session (decision
0024). A, having decided the watch is allowed, stores a grant here: the hash of a fresh
token, the session, its owner (node and worker), the watcher's portal session and source,
valid for ``GRANT_SECONDS``. A then opens B's internal watch socket presenting the token; B
redeems it (one conditional DELETE: a grant is spent on first use, and only by the owner)
and checks the watch again itself. The token never sits in the database, a log or a URL.

Each member publishes its portal address and its TLS leaf certificate (only the leaf, never a
chain or a key) in its ``nodes`` row; the relaying node pins exactly that certificate (the
SHA-256 of the peer's leaf, no CA, no host name), so the shared database is the one root of
trust, as it already is for kill requests. Does not decide who may watch (the web front end
asks the authorizer) and does not move any output.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import Integer, String, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from gateway.config import Settings, parse_listen
from gateway.db.models import Base
from gateway.db.types import UTCDateTime
from gateway.errors import ConfigError
from gateway.sessions.cluster import NodeRow
from gateway.sessions.store import LiveSessionRow

GRANT_SECONDS = 15  # from A's decision to B's redeeming it: one connection attempt or a few
MAX_TOKEN = 64
WILDCARDS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - names, not a bind


class WatchGrantRow(Base):
    __tablename__ = "watch_grants"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(40))
    node: Mapped[str] = mapped_column(String(255))
    worker: Mapped[int] = mapped_column(Integer)
    portal_session_id: Mapped[int] = mapped_column(Integer)
    watcher: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(64))
    via_node: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)


@dataclass(frozen=True)
class Grant:
    """A redeemed grant: whose watch, of what, asked where."""

    session_id: str
    portal_session_id: int
    watcher: str
    source: str
    via_node: str


@dataclass(frozen=True)
class Contact:
    """How to reach a member's portal: ``host:port``, its leaf certificate (PEM; empty when
    the portal has no TLS) and how many workers share that address (read from ``nodes``)."""

    address: str
    certificate: str
    workers: int = 1


def leaf_certificate(pem: str) -> str:
    """The first certificate of a PEM file, re-serialised alone: what a node publishes.

    A chain would make its intermediates trust anchors for other nodes, and a combined
    certificate-and-key file (HAProxy style) would publish the key: such a file is refused."""
    if "PRIVATE KEY-----" in pem:
        raise ConfigError(
            "portal.tls_cert_file holds a private key: it would be published to the other "
            "nodes; keep the key in portal.tls_key_file only"
        )
    try:
        leaf = x509.load_pem_x509_certificate(pem.encode())
    except ValueError as exc:
        raise ConfigError(f"portal.tls_cert_file holds no usable certificate: {exc}") from None
    return leaf.public_bytes(Encoding.PEM).decode()


def pin_of(certificate_pem: str) -> bytes:
    """The SHA-256 of a published leaf certificate's DER: compared with the peer's leaf."""
    leaf = x509.load_pem_x509_certificate(certificate_pem.encode())
    return hashlib.sha256(leaf.public_bytes(Encoding.DER)).digest()


def own_contact(settings: Settings, certificate_pem: str) -> Contact:
    """This node's contact for its ``nodes`` row: ``cluster.portal_address``, else
    ``portal.listen`` unless that is a wildcard (then empty: not reachable for watches), and
    the leaf of ``certificate_pem`` when the portal has TLS (``ConfigError`` if that file
    holds a private key or no certificate)."""
    address = settings.cluster.portal_address
    if not address:
        listen = settings.portal_listen
        address = "" if listen.host in WILDCARDS or not listen.port else str(listen)
    if address:
        parse_listen(address)
    return Contact(address, leaf_certificate(certificate_pem) if settings.portal.tls else "")


async def publish_contact(db: AsyncSession, node: str, worker: int, contact: Contact) -> None:
    """Store this member's contact in its ``nodes`` row (caller commits)."""
    await db.execute(
        update(NodeRow)
        .where(NodeRow.name == node, NodeRow.worker == worker)
        .values(portal_address=contact.address, portal_certificate=contact.certificate)
    )


async def contact_of(db: AsyncSession, node: str, worker: int) -> Contact | None:
    """The owner's published contact, or None when it has none (or no row: it is gone).
    ``workers``: how many rows the owner node has, i.e. how many workers share its port."""
    row = (
        await db.execute(
            select(NodeRow.portal_address, NodeRow.portal_certificate).where(
                NodeRow.name == node, NodeRow.worker == worker
            )
        )
    ).first()
    if row is None or not row[0]:
        return None
    workers = await db.scalar(select(func.count()).select_from(NodeRow).where(NodeRow.name == node))
    return Contact(row[0], row[1], max(1, workers or 1))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def issue(
    db: AsyncSession,
    session: LiveSessionRow,
    *,
    portal_session_id: int,
    watcher: str,
    source: str,
    via_node: str,
    now: dt.datetime,
) -> str:
    """A new one-time token for watching ``session`` on its owner (caller commits). Expired
    grants are swept here, so the table holds only the last few seconds' worth."""
    await db.execute(delete(WatchGrantRow).where(WatchGrantRow.expires_at < now))
    token = secrets.token_urlsafe(32)
    db.add(
        WatchGrantRow(
            token_sha256=_digest(token), session_id=session.session_id, node=session.node,
            worker=session.worker, portal_session_id=portal_session_id, watcher=watcher[:64],
            source=source[:64], via_node=via_node[:255],
            expires_at=now + dt.timedelta(seconds=GRANT_SECONDS),
        )
    )  # fmt: skip
    return token


async def redeem(
    db: AsyncSession, token: str, session_id: str, node: str, worker: int, now: dt.datetime
) -> Grant | None:
    """Spend the grant for ``token`` if it is for ``session_id`` owned by (``node``,
    ``worker``) and unexpired; None otherwise (nothing is spent then). Caller commits."""
    if not token or len(token) > MAX_TOKEN or not token.isascii():
        return None
    row = (
        await db.execute(
            delete(WatchGrantRow)
            .where(
                WatchGrantRow.token_sha256 == _digest(token),
                WatchGrantRow.session_id == session_id,
                WatchGrantRow.node == node,
                WatchGrantRow.worker == worker,
                WatchGrantRow.expires_at >= now,
            )
            .returning(
                WatchGrantRow.session_id,
                WatchGrantRow.portal_session_id,
                WatchGrantRow.watcher,
                WatchGrantRow.source,
                WatchGrantRow.via_node,
            )  # fmt: skip
        )
    ).first()
    return Grant(*row) if row is not None else None


async def for_another_worker(db: AsyncSession, token: str, node: str, worker: int) -> bool:
    """Whether ``token`` is a live grant for another worker of this node (the workers share
    the port, so the relaying node reached the wrong one and should try again)."""
    if not token or len(token) > MAX_TOKEN or not token.isascii():
        return False
    found = await db.scalar(
        select(WatchGrantRow.worker).where(
            WatchGrantRow.token_sha256 == _digest(token), WatchGrantRow.node == node
        )
    )
    return found is not None and found != worker
