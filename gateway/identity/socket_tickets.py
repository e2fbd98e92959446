"""One-time socket tickets (browser terminal, desktop) in the database.

The portal's script asks for a ticket (a POST with the session's CSRF token) and then opens a
websocket presenting it. With several worker processes behind one port, or several nodes
behind a load balancer, the POST and the websocket can land on different processes, so the
ticket lives in the shared database: the table holds the SHA-256 of the token (never the
token), the portal session it was issued to, the asset, account, purpose and expiry. Redeeming
is one ``DELETE ... RETURNING``: exactly one presenter wins, and a ticket is gone once
presented, valid or not. Issuing collects expired tickets and keeps the caps (all pending
tickets, and per portal session). Does not decide access (the broker does) nor check the
portal session (the caller does).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import Integer, String, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.models import Base
from gateway.db.types import UTCDateTime
from gateway.errors import ConduitError

TOKEN_BYTES = 32  # 256 bits, URL-safe: 43 characters
MAX_TOKEN_LENGTH = 100


class SocketTicketRow(Base):
    __tablename__ = "socket_tickets"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    portal_session: Mapped[int] = mapped_column(Integer, index=True)
    username: Mapped[str] = mapped_column(String(64))
    asset: Mapped[str] = mapped_column(String(64))
    account: Mapped[str] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(String(16))
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)


@dataclass(frozen=True)
class SocketGrant:
    """What a ticket opens: for whom (the portal session), which asset and account."""

    portal_session: int
    username: str
    asset: str
    account: str
    expires_at: dt.datetime
    purpose: str = "terminal"  # or "desktop": a ticket opens only the socket it was asked for


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def issue(
    db: AsyncSession, grant: SocketGrant, now: dt.datetime, *, max_pending: int, per_session: int
) -> str:
    """A fresh token for ``grant`` (caller commits); ``ConduitError`` when a cap is reached."""
    await db.execute(delete(SocketTicketRow).where(SocketTicketRow.expires_at <= now))
    pending = await db.scalar(select(func.count()).select_from(SocketTicketRow))
    if (pending or 0) >= max_pending:
        raise ConduitError("too many terminals are being opened; try again", "ticket limit")
    mine = await db.scalar(
        select(func.count())
        .select_from(SocketTicketRow)
        .where(SocketTicketRow.portal_session == grant.portal_session)
    )
    if (mine or 0) >= per_session:
        raise ConduitError(
            "too many terminals are being opened; try again", "ticket limit of this session"
        )
    token = secrets.token_urlsafe(TOKEN_BYTES)
    db.add(
        SocketTicketRow(
            token_sha256=_digest(token),
            portal_session=grant.portal_session,
            username=grant.username,
            asset=grant.asset,
            account=grant.account,
            purpose=grant.purpose,
            expires_at=grant.expires_at,
        )
    )
    await db.flush()
    return token


async def redeem(
    db: AsyncSession, token: str, portal_session: int, now: dt.datetime
) -> tuple[SocketGrant | None, str]:
    """The ticket's grant, or None and why not (caller commits). Spent once presented.

    The row is found by the token's SHA-256, so the lookup reveals nothing about the token
    by its timing; the binding to the portal session is compared in constant time."""
    if not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        return None, "unknown or already used terminal ticket"
    row = (
        await db.execute(
            delete(SocketTicketRow)
            .where(SocketTicketRow.token_sha256 == _digest(token))
            .returning(
                SocketTicketRow.portal_session,
                SocketTicketRow.username,
                SocketTicketRow.asset,
                SocketTicketRow.account,
                SocketTicketRow.expires_at,
                SocketTicketRow.purpose,
            )
        )
    ).first()
    if row is None:
        return None, "unknown or already used terminal ticket"
    grant = SocketGrant(*row)
    if now >= grant.expires_at:
        return None, "expired terminal ticket"
    if not secrets.compare_digest(str(grant.portal_session), str(portal_session)):
        return None, "terminal ticket issued to another portal session"
    return grant, ""
