"""The browser terminal's one-time tickets (``gateway.web.terminal.TerminalTickets``):
single use, expiry, binding to the portal session, and the limits on tickets not yet used."""

from __future__ import annotations

import pytest

from gateway.errors import ConduitError
from gateway.web.terminal import (
    MAX_PENDING_PER_SESSION,
    TICKET_SECONDS,
    PendingTerminal,
    TerminalTickets,
)


def _grant(portal_session: int, now: float = 0.0) -> PendingTerminal:
    return PendingTerminal(portal_session, "alice", "plc-1", "default", now + TICKET_SECONDS)


def test_a_ticket_opens_once_for_its_own_portal_session_before_it_expires() -> None:
    tickets = TerminalTickets()
    token = tickets.issue(_grant(1), 0.0)
    assert len(token) >= 43  # 32 random bytes, URL-safe
    wrong = tickets.redeem(token, 2, 1.0)
    assert wrong == (None, "terminal ticket issued to another portal session")
    # Presented once (even by the wrong session), it is gone.
    assert tickets.redeem(token, 1, 1.0) == (None, "unknown or already used terminal ticket")
    fresh = tickets.issue(_grant(1), 0.0)
    grant, why = tickets.redeem(fresh, 1, 1.0)
    assert grant is not None and grant.asset == "plc-1" and why == ""
    late = tickets.issue(_grant(1), 0.0)
    assert tickets.redeem(late, 1, TICKET_SECONDS) == (None, "expired terminal ticket")


def test_one_portal_session_cannot_hold_more_than_a_few_unused_tickets() -> None:
    tickets = TerminalTickets()
    for _ in range(MAX_PENDING_PER_SESSION):
        tickets.issue(_grant(1), 0.0)
    with pytest.raises(ConduitError) as refused:
        tickets.issue(_grant(1), 0.0)
    assert refused.value.detail == "ticket limit of this session"
    # Another person's terminal still opens; and once the first ones expire, so does theirs.
    assert tickets.issue(_grant(2), 0.0)
    assert tickets.issue(_grant(1, TICKET_SECONDS), TICKET_SECONDS + 0.1)
