"""Authorization service on SQLite and PostgreSQL: grants, requests, approvals, revocation."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.audit import AuditLog
from gateway.authz.access_requests import RequestConflict, RequestService
from gateway.authz.service import AuthzService, PolicyError
from gateway.authz.tables import Grant
from gateway.config import Overrides, load_settings
from gateway.db import migrate
from gateway.db.engine import make_engine, make_sessionmaker
from gateway.db.models import User
from gateway.identity.accounts import create_user
from gateway.identity.onboarding import set_status
from gateway.sessions.events import Change, ChangeBus
from rbac.errors import ApprovalError, TransitionError

T0 = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC)  # a Monday
KEY = bytes(32)


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@dataclass
class World:
    authz: AuthzService
    requests: RequestService
    sessions: async_sessionmaker[AsyncSession]
    clock: Clock
    changes: list[Change]
    audit: AuditLog

    def second_node(self) -> AuthzService:
        """Another gateway process on the same database."""
        return AuthzService(self.sessions, self.clock, ChangeBus(), self.audit)


@pytest.fixture
async def world(database_url: str, tmp_path: Path) -> AsyncIterator[World]:
    (tmp_path / "data").mkdir()
    settings = load_settings(
        None, Overrides(data_dir=tmp_path / "data"), environ={"CONDUIT_DATABASE__URL": database_url}
    )
    engine = make_engine(settings)
    await migrate.upgrade(engine)
    sessions = make_sessionmaker(engine)
    clock = Clock(T0)
    async with sessions() as db, db.begin():
        for name, roles, org in (
            ("alice", ["vendor"], "acme"),
            ("mallory", ["vendor"], "evil"),
            ("bob", ["approver"], ""),
            ("dave", ["approver"], ""),
            ("carol", ["approver"], ""),
            ("root", ["admin"], ""),
        ):
            await create_user(
                db,
                username=name,
                roles=roles,
                now=T0,
                master_key=KEY,
                status="active",
                organisation=org,
            )
    bus = ChangeBus()
    changes: list[Change] = []
    bus.subscribe(changes.append)
    audit = AuditLog(sessions, Ed25519PrivateKey.generate(), clock)
    authz = AuthzService(sessions, clock, bus, audit)
    world = World(
        authz, RequestService(authz, sessions, clock, bus, audit), sessions, clock, changes, audit
    )
    await authz.add_zone("plant-a", actor="root")
    await authz.add_zone("line-1", actor="root", parent="plant-a")
    await authz.add_zone(
        "safety", actor="root", parent="plant-a", required_approvals=2, max_request_hours=2
    )
    await authz.add_asset("plc-1", "127.0.0.1", 22, "ssh", actor="root", zones=("line-1",))
    await authz.add_asset("plc-10", "127.0.0.1", 22, "ssh", actor="root", zones=("line-1",))
    await authz.add_asset("sis-1", "127.0.0.1", 22, "ssh", actor="root", zones=("safety",))
    # Both vendors' organisations may ask for anything in the plant (rbac.availability).
    for org in ("acme", "evil"):
        await authz.add_grant(
            subject_kind="org", subject=org, object_kind="zone", obj="plant-a",
            action="request", actor="root",
        )  # fmt: skip
    # bob and dave approve on the whole plant; carol only on line-1.
    for who in ("bob", "dave"):
        await authz.add_grant(
            subject_kind="user",
            subject=who,
            object_kind="zone",
            obj="plant-a",
            action="approve",
            actor="root",
        )
    await authz.add_grant(
        subject_kind="user",
        subject="carol",
        object_kind="zone",
        obj="line-1",
        action="approve",
        actor="root",
    )
    try:
        yield world
    finally:
        await engine.dispose()


async def grants_of(world: World, request_id: str) -> int:
    async with world.sessions() as db:
        return int(
            (
                await db.execute(
                    select(func.count()).select_from(Grant).where(Grant.request_id == request_id)
                )
            ).scalar_one()
        )


async def test_standing_schedule_grant_and_revocation_across_processes(world: World) -> None:
    grant = await world.authz.add_grant(
        subject_kind="org",
        subject="acme",
        object_kind="zone",
        obj="line-1",
        action="ssh",
        actor="root",
        schedule="Mon-Fri 07:00-17:00 Europe/Berlin",
    )
    other = world.second_node()
    inside = await other.authorize("alice", "plc-1", "ssh", T0)
    assert inside.allowed and inside.grant_id == grant.id
    assert inside.valid_until == dt.datetime(2026, 3, 2, 16, 0, tzinfo=dt.UTC)
    assert not (await other.authorize("alice", "plc-1", "ssh", T0.replace(hour=18))).allowed
    assert not (await other.authorize("mallory", "plc-1", "ssh", T0)).allowed
    assert not (await other.authorize("alice", "plc-1", "sftp-write", T0)).allowed
    missing = await other.authorize("alice", "plc-99", "ssh", T0)
    assert not missing.allowed and "does not exist" in missing.reason
    # Revoked in one process; the other process sees it at its next decision.
    await world.authz.revoke_grant(grant.id, actor="root")
    assert Change("grant.revoked", (grant.id,)) in world.changes
    assert not (await other.authorize("alice", "plc-1", "ssh", T0)).allowed


async def test_disabled_user_loses_direct_grants(world: World) -> None:
    from gateway.db.models import User

    await world.authz.add_grant(
        subject_kind="user",
        subject="alice",
        object_kind="asset",
        obj="plc-1",
        action="ssh",
        actor="root",
    )
    assert (await world.authz.authorize("alice", "plc-1", "ssh")).allowed
    async with world.sessions() as db, db.begin():
        user = (await db.execute(select(User).where(User.username == "alice"))).scalar_one()
        user.status = "disabled"
    await world.authz.refresh(force=True)
    assert not (await world.authz.authorize("alice", "plc-1", "ssh")).allowed


async def test_account_changes_reach_every_process_without_a_policy_edit(world: World) -> None:
    """Accounts are the policy's members: a new vendor gets the organisation's standing grant
    and a disabled one loses it in a running process at its next decision (no forced reload,
    no policy edit in between)."""
    await world.authz.add_grant(
        subject_kind="org", subject="acme", object_kind="asset", obj="plc-1", action="ssh",
        actor="root",
    )  # fmt: skip
    other = world.second_node()
    assert not (await other.authorize("zoe", "plc-1", "ssh")).allowed  # loads the policy
    async with world.sessions() as db, db.begin():
        await create_user(
            db, username="zoe", roles=["vendor"], now=T0, master_key=KEY, status="active",
            organisation="acme",
        )  # fmt: skip
    assert (await other.authorize("zoe", "plc-1", "ssh")).allowed
    async with world.sessions() as db, db.begin():
        await set_status(db, "zoe", "disabled", T0)
    refused = await other.authorize("zoe", "plc-1", "ssh")
    assert not refused.allowed and "not an active account" in refused.reason
    async with world.sessions() as db, db.begin():
        await set_status(db, "zoe", "active", T0)
    assert (await other.authorize("zoe", "plc-1", "ssh")).allowed


async def test_request_approval_makes_time_bounded_grants(world: World) -> None:
    start = T0 + dt.timedelta(hours=1)
    request = await world.requests.create(
        "alice", ["plc-1"], ["ssh", "sftp-read"], "replace firmware", start, dt.timedelta(hours=2)
    )
    assert request.state.value == "pending" and request.required_approvals == 1
    # the requester never approves their own request, even holding approve
    await world.authz.add_grant(
        subject_kind="user",
        subject="alice",
        object_kind="asset",
        obj="plc-1",
        action="approve",
        actor="root",
    )
    with pytest.raises(ApprovalError):
        await world.requests.approve(request.request_id, "alice")
    # mallory holds no approve at all
    with pytest.raises(ApprovalError):
        await world.requests.approve(request.request_id, "mallory")
    approved = await world.requests.approve(request.request_id, "carol", "ok for today")
    assert approved.state.value == "approved"
    assert await grants_of(world, request.request_id) == 2
    authz = world.authz
    assert not (
        await authz.authorize("alice", "plc-1", "ssh", start - dt.timedelta(seconds=1))
    ).allowed
    during = await authz.authorize("alice", "plc-1", "ssh", start)
    assert during.allowed and during.valid_until == start + dt.timedelta(hours=2)
    assert not (
        await authz.authorize("alice", "plc-1", "ssh", start + dt.timedelta(hours=2))
    ).allowed
    assert not (await authz.authorize("alice", "plc-10", "ssh", start)).allowed
    # revoking the request ends its grants and emits the event
    revoked = await world.requests.revoke(request.request_id, "bob", "work done")
    assert revoked.state.value == "revoked"
    assert Change("request.revoked", (request.request_id,)) in world.changes
    assert not (await authz.authorize("alice", "plc-1", "ssh", start)).allowed
    with pytest.raises(TransitionError):
        await world.requests.approve(request.request_id, "dave")


async def test_approver_lacking_approve_on_one_asset_is_refused(world: World) -> None:
    request = await world.requests.create(
        "alice", ["plc-1", "sis-1"], ["ssh"], "loop check", T0, dt.timedelta(hours=1)
    )
    with pytest.raises(ApprovalError):
        await world.requests.approve(request.request_id, "carol")  # line-1 only, not safety
    assert (await world.requests.get(request.request_id)).state.value == "pending"


async def test_two_of_n_needs_two_distinct_approvers(world: World) -> None:
    request = await world.requests.create(
        "alice", ["sis-1"], ["ssh"], "proof test", T0, dt.timedelta(hours=1)
    )
    assert request.required_approvals == 2
    once = await world.requests.approve(request.request_id, "bob")
    assert once.state.value == "pending"
    with pytest.raises(ApprovalError):
        await world.requests.approve(request.request_id, "bob")
    assert await grants_of(world, request.request_id) == 0
    twice = await world.requests.approve(request.request_id, "dave")
    assert twice.state.value == "approved"
    assert await grants_of(world, request.request_id) == 1


async def test_duration_cap_from_zone(world: World) -> None:
    with pytest.raises(PolicyError, match="exceeds the cap"):
        await world.requests.create(
            "alice", ["sis-1"], ["ssh"], "too long", T0, dt.timedelta(hours=3)
        )
    with pytest.raises(PolicyError, match="not found or not permitted"):
        await world.requests.create("alice", ["nope"], ["ssh"], "x", T0, dt.timedelta(hours=1))


async def test_concurrent_approvals_make_one_grant(world: World) -> None:
    request = await world.requests.create(
        "alice", ["plc-1"], ["ssh"], "race", T0, dt.timedelta(hours=1)
    )
    results = await asyncio.gather(
        *(world.requests.approve(request.request_id, who) for who in ("bob", "dave", "carol")),
        return_exceptions=True,
    )
    wins = [r for r in results if not isinstance(r, BaseException)]
    assert len(wins) == 1, results
    assert all(
        isinstance(r, RequestConflict | TransitionError)
        for r in results
        if isinstance(r, BaseException)
    ), results
    assert await grants_of(world, request.request_id) == 1
    final = await world.requests.get(request.request_id)
    assert final.state.value == "approved" and len(final.approvals) == 1


async def test_unanswered_requests_expire(world: World) -> None:
    request = await world.requests.create(
        "alice", ["plc-1"], ["ssh"], "later", T0 + dt.timedelta(days=3), dt.timedelta(hours=1)
    )
    assert await world.requests.expire_due() == []
    world.clock.now = T0 + dt.timedelta(hours=24)
    assert await world.requests.expire_due() == [request.request_id]
    assert (await world.requests.get(request.request_id)).state.value == "expired"


async def test_refusals_and_changes_are_audited(world: World) -> None:
    request = await world.requests.create(
        "alice", ["plc-1"], ["ssh"], "audit me", T0, dt.timedelta(hours=1)
    )
    with pytest.raises(ApprovalError):
        await world.requests.approve(request.request_id, "alice")
    actions = [e.action async for e in world.audit.events()]
    assert "request.created" in actions and "request.refused" in actions
    assert "grant.added" in actions and "zone.added" in actions
    assert (await world.audit.verify()).ok


async def test_a_stored_membership_the_policy_cannot_hold_breaks_nobody_else(
    world: World,
) -> None:
    """A user row whose organisation is no valid policy name, stored before names were checked
    at the edge or written by hand: that one membership is left out (it grants nothing); the
    policy still loads and everyone else keeps their access. (Roles have a CHECK constraint.)"""
    await world.authz.add_grant(
        subject_kind="org", subject="acme", object_kind="asset", obj="plc-1", action="ssh",
        actor="root",
    )  # fmt: skip
    async with world.sessions() as db, db.begin():
        await create_user(
            db, username="odd", roles=["vendor"], now=T0, master_key=KEY, status="active",
            organisation="acme",
        )  # fmt: skip
        # As such a row may be stored: written before the edge checked it, or by hand.
        await db.execute(
            update(User).where(User.username == "odd").values(organisation="Acme <GmbH>")
        )
    await world.authz.refresh(force=True)
    assert (await world.authz.authorize("alice", "plc-1", "ssh")).allowed
    assert not (await world.authz.authorize("odd", "plc-1", "ssh")).allowed
    assert await world.authz.organisations_of("odd") == []
