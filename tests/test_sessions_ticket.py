"""The ticket an upstream connect takes: refused (and audited) unless its target is the asset
and account its authorization covers and the authorization is in force; the target account
is part of the decision."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Overrides, load_settings
from gateway.errors import NotFoundOrForbidden, TicketRefused
from gateway.identity.accounts import create_user
from gateway.keys import load_keyring
from gateway.services import Services
from gateway.sessions.broker import Broker
from gateway.sessions.ticket import Ticket
from gateway.ssh import upstream
from gateway.vault import Credential, credential_for, set_credential
from rbac.errors import PolicyNameError
from rbac.names import account_of, check_action, with_account
from recordings import Kind
from tests.support import init_data_dir

START = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "action,valid",
    [
        ("ssh:account=maint", True),
        ("sftp-read:account=maint", True),
        ("sftp-write:account=m.a_int-2", True),
        ("ssh:account=default", False),  # the default account needs no mention
        ("ssh:account=", False),
        ("ssh:account=Root", False),
        ("tunnel:22:account=maint", False),
        ("vnc:account=maint", False),
        ("ssh:account=maint:account=root", False),
    ],
)
def test_account_qualified_actions(action: str, valid: bool) -> None:
    if valid:
        assert check_action(action) == action
    else:
        with pytest.raises(PolicyNameError):
            check_action(action)


def test_account_of_and_with_account() -> None:
    assert with_account("ssh", "default") == "ssh"
    assert with_account("ssh", "maint") == "ssh:account=maint"
    assert with_account("tunnel:502", "maint") == "tunnel:502"
    assert account_of("ssh:account=maint") == "maint"
    assert account_of("ssh") == account_of("sftp-read") == "default"


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> dt.datetime:
        return self.now


async def no_kill(reason: str) -> None:  # the tests end their sessions themselves
    raise AssertionError(f"killed: {reason}")


@dataclasses.dataclass
class Site:
    services: Services
    broker: Broker
    clock: Clock
    connected: list[tuple[Ticket, Credential]]


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    data = tmp_path / "data"
    init_data_dir(data)
    settings = load_settings(None, Overrides(data_dir=data), environ={})
    keys = load_keyring(settings)
    clock = Clock()
    services = Services.build(settings, keys, clock)
    connected: list[tuple[Ticket, Credential]] = []

    async def connector(ticket: Ticket, credential: Credential, now: dt.datetime) -> Any:
        connected.append((ticket, credential))
        return "connection"

    async with services.sessions() as db, db.begin():
        await create_user(db, username="alice", roles=["vendor"], now=START,
                          master_key=keys.master_key, password="pw-" * 6,
                          totp_secret="JBSWY3DPEHPK3PXP", status="active",
                          organisation="acme")  # fmt: skip
        await create_user(db, username="erin", roles=["vendor"], now=START,
                          master_key=keys.master_key, status="active")  # fmt: skip
    for asset in ("plc", "hmi"):
        await services.authz.add_asset(asset, "127.0.0.1", 22, "ssh", actor="test")
    async with services.sessions() as db, db.begin():
        for account, login in (("default", "operator"), ("maint", "maint"), ("root", "root")):
            await set_credential(db, keys.master_key, asset="plc", username=login, now=START,
                                 account=account, password=f"secret-{account}")  # fmt: skip
    for action in ("ssh", "ssh:account=maint", "tunnel:502"):
        await services.authz.add_grant(
            subject_kind="user", subject="alice", object_kind="asset", obj="plc",
            action=action, actor="test", valid_until=START + dt.timedelta(hours=1),
        )  # fmt: skip
    await services.authz.add_grant(subject_kind="user", subject="erin", object_kind="asset",
                                   obj="plc", action="ssh:account=maint", actor="test")  # fmt: skip
    broker = Broker(services, ssh_connector=connector)
    try:
        yield Site(services, broker, clock, connected)
    finally:
        await services.close()


async def _open(site: Site, account: str = "default") -> Ticket:
    return await site.broker.open(
        "alice", "plc", "ssh", protocol="ssh", source="127.0.0.1", kill=no_kill, account=account
    )


async def _events(site: Site, action: str) -> list[dict[str, Any]]:
    events = [e.as_json() async for e in site.services.audit.events()]
    return [e for e in events if e["action"] == action]


async def test_a_matching_ticket_connects_with_its_accounts_credential(site: Site) -> None:
    ticket = await _open(site, "maint")
    assert await site.broker.connect_ssh(ticket) == "connection"
    ((seen, credential),) = site.connected
    assert seen is ticket and credential.username == "maint"
    assert credential.password == "secret-maint"
    (start,) = await _events(site, "session.start")
    assert start["detail"]["account"] == "maint"
    assert start["detail"]["action"] == "ssh:account=maint"
    await site.broker.close(ticket, "closed")


async def test_an_account_no_grant_names_is_refused_and_audited(site: Site) -> None:
    with pytest.raises(Exception, match="not found or not permitted"):
        await _open(site, "root")  # vaulted, but only default and maint are granted
    (denied,) = await _events(site, "session.denied")
    assert denied["detail"]["account"] == "root"
    assert "ssh:account=root" in denied["detail"]["reason"]
    assert site.connected == []


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"asset": "hmi"}, id="another-asset"),
        pytest.param({"account": "root"}, id="another-account"),
    ],
)
async def test_a_ticket_for_another_target_is_refused_and_audited(
    site: Site, change: dict[str, str]
) -> None:
    ticket = await _open(site)
    forged = dataclasses.replace(ticket, target=dataclasses.replace(ticket.target, **change))
    with pytest.raises(TicketRefused):
        await site.broker.connect_ssh(forged)
    assert site.connected == []
    (refused,) = await _events(site, "upstream.refused")
    assert refused["result"] == "denied"
    assert refused["detail"]["session_id"] == ticket.session_id
    # And the upstream itself refuses such a ticket if it is ever called around the broker.
    with pytest.raises(TicketRefused):
        await upstream.connect(forged, Credential("root", password="x"), site.clock())
    await site.broker.close(ticket, "closed")


async def test_a_ticket_past_its_valid_until_is_refused_and_audited(site: Site) -> None:
    ticket = await _open(site)
    assert ticket.proof.valid_until == START + dt.timedelta(hours=1)
    site.clock.now = START + dt.timedelta(hours=1)
    with pytest.raises(TicketRefused, match="not found or not permitted") as refused:
        await site.broker.connect_ssh(ticket)
    assert "authorization ended" in refused.value.detail
    assert site.connected == []
    assert len(await _events(site, "upstream.refused")) == 1
    await site.broker.close(ticket, "closed")


async def test_reachable_lists_each_granted_account(site: Site) -> None:
    reachable = await site.broker.reachable("alice", "ssh")
    assert [(r.asset, r.account) for r in reachable] == [("plc", "default"), ("plc", "maint")]
    assert all(r.valid_until == START + dt.timedelta(hours=1) for r in reachable)
    assert await site.broker.reachable("alice", "sftp-read") == []
    assert await site.broker.reachable("bob", "ssh") == []


async def test_a_tunnel_ticket_does_not_log_in_to_an_account(site: Site) -> None:
    ticket = await site.broker.open(
        "alice", "plc", "tunnel:502", protocol="tunnel", source="127.0.0.1", kill=no_kill,
        kind=Kind.TUNNEL,
    )  # fmt: skip
    with pytest.raises(TicketRefused) as refused:
        await site.broker.connect_ssh(ticket)
    assert "does not log in to an account" in refused.value.detail
    assert site.connected == []
    assert len(await _events(site, "upstream.refused")) == 1
    async with site.services.sessions() as db:
        with pytest.raises(NotFoundOrForbidden):
            await credential_for(db, site.services.keys.master_key, ticket.proof)
    await site.broker.close(ticket, "closed")


async def test_a_tunnel_ticket_for_another_port_is_refused_and_audited(site: Site) -> None:
    ticket = await site.broker.open(
        "alice", "plc", "tunnel:502", protocol="tunnel", source="127.0.0.1", kill=no_kill,
        kind=Kind.TUNNEL,
    )  # fmt: skip
    forged = dataclasses.replace(ticket, target=dataclasses.replace(ticket.target, port=22))
    with pytest.raises(TicketRefused, match="not found or not permitted") as refused:
        await site.broker.connect_tunnel(forged, asyncio.Protocol)
    assert "target port 22 is not the authorized tunnel:502" in refused.value.detail
    assert len(await _events(site, "upstream.refused")) == 1
    await site.broker.close(ticket, "closed")


async def test_a_grant_naming_only_an_account_still_gets_connect_codes(site: Site) -> None:
    assert (await site.services.authz.reachable_over_ssh("erin", "plc")).allowed
    assert not (await site.services.authz.reachable_over_ssh("erin", "hmi")).allowed
