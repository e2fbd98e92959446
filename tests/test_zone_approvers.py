"""A zone's approver group (the role or organisation whose members may decide requests for
its assets): the request service refuses an approver outside it with a sentence naming the
group (audited), accepts one inside, and the group of a zone above counts too. SQLite and
PostgreSQL (``world`` fixture of ``test_authz``); the pages are ``test_zone_approvers_pages``.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from gateway.authz.service import PolicyError
from gateway.identity.accounts import create_user
from rbac.errors import ApprovalError
from tests.test_authz import KEY, T0, World, world

__all__ = ["world"]


async def _erin(world: World) -> None:
    """erin: an approver of the plantops organisation, holding approve on the whole plant."""
    async with world.sessions() as db, db.begin():
        await create_user(
            db, username="erin", roles=["approver"], now=T0, master_key=KEY,
            status="active", organisation="plantops",
        )  # fmt: skip
    await world.authz.add_grant(
        subject_kind="user", subject="erin", object_kind="zone", obj="plant-a",
        action="approve", actor="root",
    )  # fmt: skip


async def _set_group(world: World, zone: str, group: str | None) -> None:
    await world.authz.update_zone(
        zone, actor="root", required_approvals=1, max_request_hours=None, approvers=group
    )


async def test_approver_outside_the_zone_group_is_refused_inside_accepted(world: World) -> None:
    await _erin(world)
    await _set_group(world, "line-1", "org:plantops")
    request = await world.requests.create(
        "alice", ["plc-1"], ["ssh"], "firmware", T0, dt.timedelta(hours=1)
    )
    assert await world.requests.approver_groups(["plc-1"]) == {"line-1": "org:plantops"}
    assert await world.requests.deciders(["plc-1"]) == ["erin"]  # bob, dave, carol: no
    for verb in (world.requests.approve, world.requests.deny):
        with pytest.raises(ApprovalError) as refused:
            await verb(request.request_id, "bob")
        assert refused.value.message == (
            "only members of the organisation plantops may decide requests in zone line-1"
        )
    assert (await world.requests.get(request.request_id)).state.value == "pending"
    reasons = [
        json.loads(e.detail)["reason"]
        async for e in world.audit.events()
        if e.action == "request.refused"
    ]
    assert len(reasons) == 2 and all("plantops" in r and "'bob'" in r for r in reasons)
    approved = await world.requests.approve(request.request_id, "erin")
    assert approved.state.value == "approved"


async def test_the_group_of_a_zone_above_counts_and_empty_means_anyone(world: World) -> None:
    await _erin(world)
    await _set_group(world, "plant-a", "role:admin")  # sis-1 is in safety, inside plant-a
    request = await world.requests.create(
        "alice", ["sis-1"], ["ssh"], "proof test", T0, dt.timedelta(hours=1)
    )
    with pytest.raises(ApprovalError, match="role admin may decide requests in zone plant-a"):
        await world.requests.approve(request.request_id, "bob")
    await _set_group(world, "plant-a", None)
    assert await world.requests.approver_groups(["sis-1"]) == {}
    assert "bob" in await world.requests.deciders(["sis-1"])
    assert (await world.requests.approve(request.request_id, "bob")).state.value == "pending"


@pytest.mark.parametrize("bad", ["user:bob", "zone:line-1", "role:", "plantops", "org:Bad Name"])
async def test_an_approver_group_must_be_a_role_or_organisation(world: World, bad: str) -> None:
    with pytest.raises(PolicyError, match="not role:NAME or org:NAME"):
        await _set_group(world, "line-1", bad)
    [zone] = [z for z in await world.authz.list_zones() if z.name == "line-1"]
    assert zone.approver_group is None
