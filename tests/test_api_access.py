"""The access JSON API: requests, approvals with step-up, grants and /access/now, in-process."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pyotp
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.tables import AuditEventRow
from gateway.authz.tables import AccessRequestRow
from gateway.db.models import User as UserRow
from gateway.identity.accounts import create_user
from gateway.identity.tokens import create_token
from gateway.web.app import create_app
from tests.test_identity_helpers import PASSWORDS, SECRETS, Env, env

__all__ = ["env"]
CSRF_RE = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')
ADMIN_PASSWORD = "Root-Careful-Passphrase-4"
SECRETS_ALL = {**SECRETS, "root": "ONSWG4TFORZWK3TUONSWG4TFORZWK3TU"}
PASSWORDS_ALL = {**PASSWORDS, "root": ADMIN_PASSWORD}


@dataclass
class User:
    client: httpx.AsyncClient
    csrf: str

    def headers(self) -> dict[str, str]:
        return {"X-CSRF-Token": self.csrf}


@dataclass
class Api:
    env: Env
    transport: httpx.ASGITransport
    clients: list[httpx.AsyncClient]

    def client(self) -> httpx.AsyncClient:
        made = httpx.AsyncClient(transport=self.transport, base_url="https://testserver")
        self.clients.append(made)
        return made

    def code(self, username: str) -> str:
        step = int(self.env.clock.now.timestamp()) // 30
        return str(pyotp.TOTP(SECRETS_ALL[username]).generate_otp(step))

    async def login(self, username: str) -> User:
        client = self.client()
        csrf = _csrf(await client.get("/login"))
        body = {"username": username, "password": PASSWORDS_ALL[username], "csrf_token": csrf}
        assert (await client.post("/login", data=body)).status_code == 303
        page = await client.get("/login/code")
        done = await client.post(
            "/login/code", data={"code": self.code(username), "csrf_token": _csrf(page)}
        )
        assert done.status_code == 303, done.text
        return User(client, _csrf(await client.get("/account")))

    async def token(self, username: str, scopes: list[str]) -> dict[str, str]:
        services = self.env.services
        async with services.sessions() as db, db.begin():
            user_id = await _user_id(db, username)
            made = await create_token(db, user_id, scopes, 7, self.env.clock.now)
        return {"Authorization": f"Bearer {made.token}"}

    async def refusals(self) -> list[AuditEventRow]:
        async with self.env.services.sessions() as db:
            rows = await db.scalars(
                select(AuditEventRow)
                .where(AuditEventRow.action == "api.refused")
                .order_by(AuditEventRow.id)
            )
            return list(rows)


def _csrf(page: httpx.Response) -> str:
    found = CSRF_RE.search(page.text)
    assert found, page.text
    return found.group(1)


async def _user_id(db: AsyncSession, username: str) -> int:
    found = await db.scalar(select(UserRow.id).where(UserRow.username == username))
    assert isinstance(found, int)
    return found


@pytest.fixture
async def api(env: Env) -> AsyncIterator[Api]:
    services, now = env.services, env.clock.now
    async with services.sessions() as db, db.begin():
        await create_user(
            db, username="bob", roles=["approver"], now=now, master_key=services.keys.master_key,
            password=PASSWORDS["bob"], totp_secret=SECRETS["bob"], status="active",
        )  # fmt: skip
        await create_user(
            db, username="root", roles=["admin"], now=now, master_key=services.keys.master_key,
            password=ADMIN_PASSWORD, totp_secret=SECRETS_ALL["root"], status="active",
        )  # fmt: skip
    await services.authz.add_asset("plc-1", "10.0.0.1", 22, "ssh", actor="test")
    await services.authz.add_asset("plc-10", "10.0.0.10", 22, "ssh", actor="test")
    for asset in ("plc-1", "plc-10"):  # vendors may ask for both (rbac.availability)
        await services.authz.add_grant(
            subject_kind="role", subject="vendor", object_kind="asset", obj=asset,
            action="request", actor="test",
        )  # fmt: skip
    await services.authz.add_grant(
        subject_kind="user", subject="bob", object_kind="asset", obj="plc-1",
        action="approve", actor="test",
    )  # fmt: skip
    built = Api(env, httpx.ASGITransport(app=create_app(services)), [])
    try:
        yield built
    finally:
        for client in built.clients:
            await client.aclose()


def request_body(api: Api, **changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "assets": ["plc-1"],
        "actions": ["ssh"],
        "reason": "replace the pump controller firmware",
        "start": api.env.clock.now.isoformat(),
        "duration_minutes": 60,
    }
    body.update(changes)
    return body


async def make_request(api: Api, vendor: User) -> dict[str, object]:
    made = await vendor.client.post(
        "/api/v1/requests", json=request_body(api), headers=vendor.headers()
    )
    assert made.status_code == 201, made.text
    created: dict[str, object] = made.json()
    assert created["state"] == "pending"
    return created


async def test_request_approved_with_fresh_mfa_makes_a_grant_shown_in_access_now(
    api: Api,
) -> None:
    alice = await api.login("alice")
    bob = await api.login("bob")
    root = await api.login("root")
    before = (await alice.client.get("/api/v1/access/now")).json()
    assert [(r["asset"], r["action"]) for r in before] == [
        ("plc-1", "request"),
        ("plc-10", "request"),
    ]
    created = await make_request(api, alice)
    rid = created["id"]
    start = api.env.clock.now

    api.env.clock.advance(60)
    approved = await bob.client.post(
        f"/api/v1/requests/{rid}/approve", json={"comment": "ok, ticket 42"}, headers=bob.headers()
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["state"] == "approved"
    assert approved.json()["approvals"][0]["approver"] == "bob"

    grants = await root.client.get("/api/v1/grants")
    assert grants.status_code == 200
    made = [g for g in grants.json() if g["request_id"] == rid]
    assert len(made) == 1
    assert (made[0]["subject"], made[0]["object"], made[0]["action"]) == (
        "user:alice",
        "asset:plc-1",
        "ssh",
    )

    now = await alice.client.get("/api/v1/access/now")
    assert now.status_code == 200
    [entry] = [e for e in now.json() if e["action"] != "request"]
    assert (entry["asset"], entry["action"], entry["grant_id"]) == ("plc-1", "ssh", made[0]["id"])
    assert dt.datetime.fromisoformat(entry["valid_until"]) == start + dt.timedelta(minutes=60)
    # The same answer for an API token with the read scope; plc-10 is not reachable.
    bearer = await api.token("alice", ["read"])
    async with api.client() as automation:
        by_token = await automation.get("/api/v1/access/now", headers=bearer)
    assert by_token.status_code == 200 and by_token.json() == now.json()
    # Bob holds only "approve" on plc-1: that is all he may do.
    bob_now = (await bob.client.get("/api/v1/access/now")).json()
    assert [(e["asset"], e["action"]) for e in bob_now] == [("plc-1", "approve")]


async def test_approve_or_deny_without_recent_mfa_is_403_until_step_up(api: Api) -> None:
    alice = await api.login("alice")
    bob = await api.login("bob")
    rid = (await make_request(api, alice))["id"]
    api.env.clock.advance(6 * 60)  # past the 5-minute step-up limit, inside the idle limit
    for verb in ("approve", "deny"):
        late = await bob.client.post(
            f"/api/v1/requests/{rid}/{verb}", json={"comment": ""}, headers=bob.headers()
        )
        assert late.status_code == 403, late.text
        assert "step-up" in late.json()["detail"]
    assert (await bob.client.get(f"/api/v1/requests/{rid}")).json()["state"] == "pending"
    refusals = await api.refusals()
    assert [r.actor for r in refusals[-2:]] == ["bob", "bob"]
    assert all(r.result == "denied" for r in refusals)
    assert "second factor" in json.loads(refusals[-1].detail)["reason"]

    stepped = await bob.client.post(
        "/account/step-up", data={"code": api.code("bob"), "csrf_token": bob.csrf}
    )
    assert stepped.status_code == 303, stepped.text
    ok = await bob.client.post(
        f"/api/v1/requests/{rid}/deny", json={"comment": "not this week"}, headers=bob.headers()
    )
    assert ok.status_code == 200 and ok.json()["state"] == "denied"
    again = await bob.client.post(f"/api/v1/requests/{rid}/approve", json={}, headers=bob.headers())
    assert again.status_code == 409


async def test_self_approval_csrf_and_tokens_are_refused(api: Api) -> None:
    alice = await api.login("alice")
    bob = await api.login("bob")
    rid = (await make_request(api, alice))["id"]
    mine = await alice.client.post(
        f"/api/v1/requests/{rid}/approve", json={}, headers=alice.headers()
    )
    assert mine.status_code == 403  # vendors see their own request but may not approve it
    no_csrf = await bob.client.post(f"/api/v1/requests/{rid}/approve", json={})
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.json()["detail"]
    async with api.client() as anonymous:
        assert (await anonymous.get("/api/v1/requests")).status_code == 401
        bad = {"Authorization": "Bearer cdt_not-a-token"}
        assert (await anonymous.get("/api/v1/requests", headers=bad)).status_code == 401
        reader = await api.token("alice", ["read"])
        lacks = await anonymous.post("/api/v1/requests", json=request_body(api), headers=reader)
        assert lacks.status_code == 403 and lacks.json()["detail"] == "token lacks scope"
        writer = await api.token("alice", ["requests"])
        made = await anonymous.post("/api/v1/requests", json=request_body(api), headers=writer)
        assert made.status_code == 201
        approver = await api.token("bob", ["approve"])
        by_token = await anonymous.post(
            f"/api/v1/requests/{rid}/approve", json={}, headers=approver
        )
        assert by_token.status_code == 403 and "API tokens" in by_token.json()["detail"]
    actors = {r.actor for r in await api.refusals()}
    assert {"anonymous", "alice", "bob"} <= actors


async def test_vendor_sees_only_own_requests(api: Api) -> None:
    alice = await api.login("alice")
    mallory = await api.login("mallory")
    bob = await api.login("bob")
    rid = (await make_request(api, alice))["id"]
    for path in (f"/api/v1/requests/{rid}", "/api/v1/requests/r-0000000000000000"):
        other = await mallory.client.get(path)
        assert other.status_code == 404 and other.json()["detail"] == "not found or not permitted"
    cancel = await mallory.client.post(
        f"/api/v1/requests/{rid}/cancel", json={}, headers=mallory.headers()
    )
    assert cancel.status_code == 404
    assert (await mallory.client.get("/api/v1/requests")).json() == []
    assert [r["id"] for r in (await bob.client.get("/api/v1/requests")).json()] == [rid]
    assert (await alice.client.get(f"/api/v1/requests/{rid}")).status_code == 200
    # An approver who can see it still may not cancel it: only the requester can.
    assert (
        await bob.client.post(f"/api/v1/requests/{rid}/cancel", json={}, headers=bob.headers())
    ).status_code == 403
    done = await alice.client.post(
        f"/api/v1/requests/{rid}/cancel", json={}, headers=alice.headers()
    )
    assert done.status_code == 200 and done.json()["state"] == "cancelled"
    pending = await bob.client.get("/api/v1/requests", params={"state": "pending"})
    assert pending.json() == []
    assert (await bob.client.get("/api/v1/requests", params={"state": "nope"})).status_code == 422


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"assets": "plc-1"}, 422),
        ({"assets": []}, 422),
        ({"duration_minutes": "60"}, 422),
        ({"duration_minutes": 0}, 422),
        ({"duration_minutes": 10**9}, 422),
        ({"duration_minutes": 24 * 60}, 422),  # over the asset's 8-hour cap
        ({"start": "2026-11-27T12:00:00"}, 422),  # no offset
        ({"start": "tomorrow"}, 422),
        ({"start": 1764244800}, 422),
        ({"start": "2026-11-27T12:00:00+00:00" + " " * 100}, 422),
        ({"reason": ""}, 422),
        ({"reason": "x" * 2001}, 422),
        ({"reason": "x" * 1_000_000}, 413),
        ({"actions": ["telnet"]}, 422),
        ({"assets": ["plc-99"]}, 404),
        ({"assets": ["PLC 1"]}, 404),
        ({"extra": True}, 422),
    ],
)
async def test_bad_request_bodies_are_4xx(
    api: Api, changes: dict[str, object], status: int
) -> None:
    alice = await api.login("alice")
    sent = await alice.client.post(
        "/api/v1/requests", json=request_body(api, **changes), headers=alice.headers()
    )
    assert sent.status_code == status, sent.text
    refusals = await api.refusals()
    # A body too large is refused before anyone is authenticated.
    assert refusals and refusals[-1].actor == ("anonymous" if status == 413 else "alice")
    assert "x" * 100 not in refusals[-1].detail  # the input itself is never logged


async def test_missing_and_malformed_bodies_are_4xx(api: Api) -> None:
    alice = await api.login("alice")
    bob = await api.login("bob")
    headers = alice.headers()
    for content in (b"", b"{", b"[]", b"null", b'{"assets": ["plc-1"]}'):
        sent = await alice.client.post(
            "/api/v1/requests",
            content=content,
            headers={**headers, "Content-Type": "application/json"},
        )
        assert sent.status_code == 422, (content, sent.text)
    rid = (await make_request(api, alice))["id"]
    for body in ({"comment": 5}, {"comment": "x" * 3000}, {"note": ""}):
        answer = await bob.client.post(
            f"/api/v1/requests/{rid}/approve", json=body, headers=bob.headers()
        )
        assert answer.status_code == 422, answer.text
    weird = await bob.client.get("/api/v1/requests/" + "x" * 200)
    assert weird.status_code in (404, 422)
    assert (await bob.client.get("/api/v1/requests/..%2f..")).status_code in (404, 422)


async def reachable(user: User) -> set[tuple[str, str]]:
    answer = await user.client.get("/api/v1/access/now")
    assert answer.status_code == 200
    return {(e["asset"], e["action"]) for e in answer.json()}


async def test_grants_need_admin_and_step_up(api: Api) -> None:
    alice = await api.login("alice")
    bob = await api.login("bob")
    root = await api.login("root")
    assert (await bob.client.get("/api/v1/grants")).status_code == 403
    body = {
        "subject_kind": "user",
        "subject": "alice",
        "object_kind": "asset",
        "object": "plc-10",
        "action": "ssh",
        "schedule": "Mon-Fri 07:00-17:00 Europe/Berlin",
    }
    refused = await bob.client.post("/api/v1/grants", json=body, headers=bob.headers())
    assert refused.status_code == 403
    made = await root.client.post("/api/v1/grants", json=body, headers=root.headers())
    assert made.status_code == 201, made.text
    gid = made.json()["id"]
    # START is a Friday 12:00 UTC (13:00 in Berlin): inside the schedule.
    reach = {
        (e["asset"], e["action"]) for e in (await alice.client.get("/api/v1/access/now")).json()
    }
    assert ("plc-10", "ssh") in reach
    for bad in (
        {**body, "schedule": "Someday 99:00"},
        {**body, "object": "plc-404"},
        {**body, "action": "telnet"},
        {**body, "subject_kind": "group"},
        {**body, "valid_from": "2026-11-28T00:00:00+00:00", "valid_until": "2026-11-27T00:00:00Z"},
    ):
        answer = await root.client.post("/api/v1/grants", json=bad, headers=root.headers())
        assert 400 <= answer.status_code < 500, (bad, answer.text)
    api.env.clock.advance(6 * 60)
    late = await root.client.post(f"/api/v1/grants/{gid}/revoke", json={}, headers=root.headers())
    assert late.status_code == 403
    await root.client.post(
        "/account/step-up", data={"code": api.code("root"), "csrf_token": root.csrf}
    )
    revoked = await root.client.post(f"/api/v1/grants/{gid}/revoke", headers=root.headers())
    assert revoked.status_code == 200 and revoked.json()["revoked_by"] == "root"
    again = await root.client.post(f"/api/v1/grants/{gid}/revoke", headers=root.headers())
    assert again.status_code == 404
    reach = {
        (e["asset"], e["action"]) for e in (await alice.client.get("/api/v1/access/now")).json()
    }
    assert ("plc-10", "ssh") not in reach
    listed = await root.client.get("/api/v1/grants", params={"include_revoked": "true"})
    assert gid in {g["id"] for g in listed.json()}


async def test_endpoints_are_in_the_openapi_schema(api: Api) -> None:
    async with api.client() as client:
        schema = (await client.get("/openapi.json")).json()
    paths = schema["paths"]
    expected = {
        "/api/v1/access/now": {"get"},
        "/api/v1/requests": {"get", "post"},
        "/api/v1/requests/{request_id}": {"get"},
        "/api/v1/requests/{request_id}/approve": {"post"},
        "/api/v1/requests/{request_id}/deny": {"post"},
        "/api/v1/requests/{request_id}/cancel": {"post"},
        "/api/v1/grants": {"get", "post"},
        "/api/v1/grants/{grant_id}/revoke": {"post"},
    }
    for path, methods in expected.items():
        assert methods <= set(paths[path]), path
    request_in = schema["components"]["schemas"]["RequestIn"]
    assert request_in["additionalProperties"] is False
    assert request_in["properties"]["reason"]["maxLength"] == 2000


# Instants from outside must lie in rbac.windows' documented range [2000-01-01, 2200-01-01)
# UTC; outside it, or at the calendar's ends, the answer is a 422 that names the field.
EXTREME_INSTANTS = [
    "9999-12-31T23:59:00+00:00",  # start + duration overflowed after the row was stored
    "9999-12-31T23:59:59-14:00",  # beyond year 9999 once in UTC
    "0001-01-01T00:00:00+14:00",  # before year 1 once in UTC
    "0001-01-01T00:00:00+00:00",
    "1999-12-31T23:59:59+00:00",
    "2200-01-01T00:00:00+00:00",
]


@pytest.mark.parametrize("start", EXTREME_INSTANTS)
async def test_request_start_outside_the_range_is_422_naming_it_and_not_stored(
    api: Api, start: str
) -> None:
    alice = await api.login("alice")
    bob = await api.login("bob")
    sent = await alice.client.post(
        "/api/v1/requests", json=request_body(api, start=start), headers=alice.headers()
    )
    assert sent.status_code == 422, sent.text
    assert any(e["loc"][-1] == "start" for e in sent.json()["detail"]), sent.text
    listed = await bob.client.get("/api/v1/requests")
    assert listed.status_code == 200 and listed.json() == []


@pytest.mark.parametrize("instant", EXTREME_INSTANTS)
async def test_grant_instants_outside_the_range_are_422_naming_them(api: Api, instant: str) -> None:
    root = await api.login("root")
    for field in ("valid_from", "valid_until"):
        body = {
            "subject_kind": "user",
            "subject": "alice",
            "object_kind": "asset",
            "object": "plc-10",
            "action": "ssh",
            field: instant,
        }
        sent = await root.client.post("/api/v1/grants", json=body, headers=root.headers())
        assert sent.status_code == 422, sent.text
        assert any(e["loc"][-1] == field for e in sent.json()["detail"]), sent.text
    grants = (await root.client.get("/api/v1/grants")).json()
    # the fixture's own, nothing more
    assert sorted(g["subject"] for g in grants) == ["role:vendor", "role:vendor", "user:bob"]


async def test_a_stored_request_beyond_the_calendar_breaks_neither_list_nor_expiry(
    api: Api,
) -> None:
    """A row an older version stored (start 9999-12-31T23:59Z) must not take the list down."""
    alice = await api.login("alice")
    bob = await api.login("bob")
    services = api.env.services
    good = await make_request(api, alice)
    async with services.sessions() as db, db.begin():
        db.add(
            AccessRequestRow(
                id="r-legacy000000000",
                requester="alice",
                assets='["plc-1"]',
                actions='["ssh"]',
                reason="stored before instants were bounded",
                start=dt.datetime(9999, 12, 31, 23, 59, tzinfo=dt.UTC),
                duration_seconds=3600,
                required_approvals=1,
                pending_ttl_seconds=24 * 3600,
                state="pending",
                version=0,
                created_at=api.env.clock.now,
                updated_at=api.env.clock.now,
            )
        )
    for who in (alice, bob):
        listed = await who.client.get("/api/v1/requests")
        assert listed.status_code == 200, listed.text
        assert good["id"] in {r["id"] for r in listed.json()}
    api.env.clock.advance(25 * 3600)  # both are past the 24-hour pending time-to-live
    expired = await services.requests.expire_due()
    assert good["id"] in expired
    assert (await services.requests.get(str(good["id"]))).state.value == "expired"


async def test_a_request_for_an_asset_not_requestable_is_404_and_audited(api: Api) -> None:
    """Filing a request needs ``request`` on every asset (as the portal's form offers them):
    the API answers an asset the vendor may not ask for exactly like a missing one."""
    services = api.env.services
    await services.authz.add_asset("sis-1", "10.0.0.20", 22, "ssh", actor="test")
    alice = await api.login("alice")
    for assets in (["sis-1"], ["plc-1", "sis-1"], ["no-such-asset"]):
        sent = await alice.client.post(
            "/api/v1/requests", json=request_body(api, assets=assets), headers=alice.headers()
        )
        assert sent.status_code == 404, sent.text
        assert sent.json()["detail"] == "not found or not permitted"
    assert await services.requests.list_requests(requester="alice") == []
    reasons = [json.loads(r.detail)["reason"] for r in await api.refusals()]
    assert any("may not request ['sis-1']" in reason for reason in reasons)
