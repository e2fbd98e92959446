"""The broker's side of Modbus sessions: a tunnel to a Modbus port is a ``modbus`` session
only for Modbus grants, its grants follow policy changes, its ticket is checked like any."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import pytest

from gateway.errors import NotFoundOrForbidden, TicketRefused
from tests.test_sessions_ticket import START, Site, _events, no_kill, site

__all__ = ["site"]


async def _modbus_asset(s: Site) -> None:
    await s.services.authz.add_asset("rtu", "127.0.0.1", 5020, "modbus", actor="test")
    for user, action in (("alice", "modbus-write:unit=1:hr=100-119"), ("erin", "tunnel:5020")):
        await s.services.authz.add_grant(
            subject_kind="user", subject=user, object_kind="asset", obj="rtu", action=action,
            actor="test", valid_until=START + dt.timedelta(hours=1),
        )  # fmt: skip


async def test_a_modbus_port_opens_for_modbus_grants_only(site: Site) -> None:
    await _modbus_asset(site)
    with pytest.raises(NotFoundOrForbidden):  # a blind tunnel grant does not open it
        await site.broker.open_tunnel("erin", "rtu", "rtu", 5020, source="::1", kill=no_kill)
    (denied,) = await _events(site, "session.denied")
    assert denied["detail"]["action_requested"] == "modbus-read"
    assert "holds no Modbus action" in denied["detail"]["reason"]
    ticket = await site.broker.open_tunnel(
        "alice", "rtu", "localhost", 5020, source="::1", kill=no_kill
    )
    try:
        assert (ticket.protocol, ticket.target.modbus, ticket.target.port) == ("modbus", True, 5020)
        assert ticket.modbus_grants == (
            ("modbus-write:unit=1:hr=100-119", START + dt.timedelta(hours=1)),
        )
        assert (await site.services.authz.reachable_over_ssh("alice", "rtu")).allowed
        # a grant added while the session is open reaches its guard without a new session
        await site.services.authz.add_grant(
            subject_kind="user", subject="alice", object_kind="asset", obj="rtu",
            action="modbus-read", actor="test",
        )  # fmt: skip
        async with asyncio.timeout(10):
            while len(ticket.modbus_grants) < 2:  # noqa: ASYNC110 - the watchdog re-reads them
                await asyncio.sleep(0.05)
        assert ("modbus-read", None) in ticket.modbus_grants
        forged = dataclasses.replace(
            ticket, target=dataclasses.replace(ticket.target, modbus=False)
        )
        with pytest.raises(TicketRefused) as refused:
            await site.broker.connect_tunnel(forged, asyncio.Protocol)
        assert "not the asset's Modbus/TCP port" in refused.value.detail
    finally:
        await site.broker.close(ticket, "closed")
