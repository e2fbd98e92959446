"""The browser terminal's one-time tickets (``gateway.web.terminal.TerminalTickets``, kept in
the database by ``gateway.identity.socket_tickets``): single use, expiry, binding to the
portal session, the limits on tickets not yet used, and a ticket issued by one worker process
redeemed by another (two ``Services`` on one database: on PostgreSQL, two connection pools),
on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.errors import ConduitError
from gateway.identity.socket_tickets import SocketTicketRow, _digest
from gateway.services import Services
from gateway.web.terminal import (
    MAX_PENDING_PER_SESSION,
    TICKET_SECONDS,
    PendingTerminal,
    TerminalTickets,
)
from tests.sibling_workers import sibling_workers

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def _at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def _grant(portal_session: int, now: float = 0.0, purpose: str = "terminal") -> PendingTerminal:
    return PendingTerminal(
        portal_session, "alice", "plc-1", "default", _at(now + TICKET_SECONDS), purpose=purpose
    )


@pytest.fixture
async def workers(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[Services, Services]]:
    """Workers 0 and 1 of one node: one database, one data directory."""
    async with sibling_workers(database_url, tmp_path / "data") as both:
        yield both


async def test_a_ticket_opens_once_for_its_own_portal_session_before_it_expires(
    workers: tuple[Services, Services],
) -> None:
    tickets = TerminalTickets(workers[0])
    token = await tickets.issue(_grant(1), _at(0))
    assert len(token) >= 43  # 32 random bytes, URL-safe
    wrong = await tickets.redeem(token, 2, _at(1))
    assert wrong == (None, "terminal ticket issued to another portal session")
    # Presented once (even by the wrong session), it is gone.
    assert await tickets.redeem(token, 1, _at(1)) == (
        None,
        "unknown or already used terminal ticket",
    )
    fresh = await tickets.issue(_grant(1), _at(0))
    grant, why = await tickets.redeem(fresh, 1, _at(1))
    assert grant is not None and grant.asset == "plc-1" and why == ""
    assert grant.purpose == "terminal" and grant.expires_at == _at(TICKET_SECONDS)
    late = await tickets.issue(_grant(1), _at(0))
    assert await tickets.redeem(late, 1, _at(TICKET_SECONDS)) == (None, "expired terminal ticket")
    for junk in ("", "x" * 101, "é" * 10):
        assert await tickets.redeem(junk, 1, _at(1)) == (
            None,
            "unknown or already used terminal ticket",
        )


async def test_the_database_holds_only_the_tokens_digest(
    workers: tuple[Services, Services],
) -> None:
    token = await TerminalTickets(workers[0]).issue(_grant(1, purpose="desktop"), _at(0))
    async with workers[0].sessions() as db:
        rows = (await db.scalars(select(SocketTicketRow))).all()
    assert [(r.token_sha256, r.purpose) for r in rows] == [(_digest(token), "desktop")]
    assert token not in {r.token_sha256 for r in rows}


async def test_one_portal_session_cannot_hold_more_than_a_few_unused_tickets(
    workers: tuple[Services, Services],
) -> None:
    # The cap holds across workers: the table is shared.
    first, second = TerminalTickets(workers[0]), TerminalTickets(workers[1])
    for i in range(MAX_PENDING_PER_SESSION):
        await (first if i % 2 else second).issue(_grant(1), _at(0))
    with pytest.raises(ConduitError) as refused:
        await first.issue(_grant(1), _at(0))
    assert refused.value.detail == "ticket limit of this session"
    # Another person's terminal still opens; and once the first ones expire, so does theirs.
    assert await second.issue(_grant(2), _at(0))
    assert await first.issue(_grant(1, TICKET_SECONDS), _at(TICKET_SECONDS + 0.1))


async def test_a_ticket_issued_by_one_worker_is_redeemed_by_another_exactly_once(
    workers: tuple[Services, Services],
) -> None:
    first, second = TerminalTickets(workers[0]), TerminalTickets(workers[1])
    token = await first.issue(_grant(7), _at(0))
    # Both workers present it at once: exactly one opens the terminal.
    results = await asyncio.gather(second.redeem(token, 7, _at(1)), first.redeem(token, 7, _at(1)))
    opened = [grant for grant, _ in results if grant is not None]
    assert len(opened) == 1 and opened[0].username == "alice"
    assert sorted(why for _, why in results) == ["", "unknown or already used terminal ticket"]
