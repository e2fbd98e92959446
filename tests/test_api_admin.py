"""The admin JSON API in process: users (invite, roles, status), assets with write-only
credentials, zones, tokens; admin role, scopes, step-up and audit; ``/openapi.json`` tags."""

from __future__ import annotations

import json

from sqlalchemy import select

from gateway.audit.tables import AuditEventRow
from gateway.identity.accounts import list_users
from tests.test_api_access import Api, api
from tests.test_identity_helpers import env

__all__ = ["api", "env"]
SECRET = "Vaulted-Target-Password-77"
RESOURCE_TAGS = {"access", "sessions", "users", "assets", "zones", "tokens", "alerts",
                 "recordings", "search", "audit", "transfers", "nodes"}  # fmt: skip


async def changes(api: Api) -> list[AuditEventRow]:
    async with api.env.services.sessions() as db:
        rows = await db.scalars(
            select(AuditEventRow).where(AuditEventRow.action == "admin.changed")
        )
        return list(rows)


async def test_openapi_lists_every_resource_tag(api: Api) -> None:
    spec = (await api.client().get("/openapi.json")).json()
    tags = {t for ops in spec["paths"].values() for op in ops.values() for t in op["tags"]}
    assert RESOURCE_TAGS <= tags
    assert all(p.startswith("/api/v1/") for p in spec["paths"])  # pages stay out of it
    assert "/api/v1/assets/{name}/credentials/{account}" in spec["paths"]


async def test_invite_returns_the_link_once_and_is_audited_without_it(api: Api) -> None:
    root = await api.login("root")
    body = {"username": "vera", "roles": ["vendor"], "organisation": "acme-pumps"}
    made = await root.client.post("/api/v1/users", json=body, headers=root.headers())
    assert made.status_code == 201, made.text
    assert made.headers["cache-control"] == "no-store"
    url = made.json()["enrolment_url"]
    assert "/enroll/" in url and made.json()["user"]["status"] == "invited"
    listed = await root.client.get("/api/v1/users")
    assert [u["status"] for u in listed.json() if u["username"] == "vera"] == ["invited"]
    token = url.rsplit("/", 1)[1]
    assert token not in listed.text
    [change] = [c for c in await changes(api) if c.target == "vera"]
    assert token not in change.detail
    assert json.loads(change.detail)["after"]["roles"] == ["vendor"]
    # Bad bodies: an unknown role, an unknown field, a bad name; each 422 and audited.
    before = len(await api.refusals())
    for bad in ({**body, "roles": ["god"]}, {**body, "admin": True},
                {**body, "username": "no spaces allowed"}):  # fmt: skip
        answer = await root.client.post("/api/v1/users", json=bad, headers=root.headers())
        assert answer.status_code == 422, bad
    assert len(await api.refusals()) == before + 3


async def test_non_admins_tokens_and_stale_sessions_are_refused_and_audited(api: Api) -> None:
    alice = await api.login("alice")
    body = {"username": "eve-new", "roles": ["admin"]}
    answer = await alice.client.post("/api/v1/users", json=body, headers=alice.headers())
    assert answer.status_code == 403
    assert (await alice.client.get("/api/v1/assets")).status_code == 403
    admin_token = await api.token("root", ["admin"])
    read_token = await api.token("root", ["read"])
    async with api.client() as bot:
        assert (await bot.get("/api/v1/users", headers=admin_token)).status_code == 200
        assert (await bot.get("/api/v1/users", headers=read_token)).status_code == 403
        # An admin token may read but never change: it cannot show a second factor.
        step = await bot.post("/api/v1/users", json=body, headers=admin_token)
        assert step.status_code == 403 and "API tokens" in step.json()["detail"]
    root = await api.login("root")
    api.env.clock.advance(6 * 60)  # past the 5-minute step-up limit, inside the idle limit
    stale = await root.client.post("/api/v1/users", json=body, headers=root.headers())
    assert stale.status_code == 403 and "step-up" in stale.json()["detail"]
    # A portal session without the CSRF header changes nothing either.
    assert (await root.client.post("/api/v1/users", json=body)).status_code == 403
    reasons = [json.loads(r.detail)["reason"] for r in await api.refusals()]
    assert "caller is not a site admin" in reasons
    assert "step-up refused for an API token" in reasons
    assert any("lacks admin" in r for r in reasons)
    async with api.env.services.sessions() as db:
        assert "eve-new" not in {u.username for u in await list_users(db)}


async def test_admin_cannot_lock_themselves_out(api: Api) -> None:
    root = await api.login("root")
    h = root.headers()
    off = await root.client.put("/api/v1/users/root/status", json={"status": "disabled"}, headers=h)
    assert off.status_code == 409
    drop = await root.client.put("/api/v1/users/root/roles", json={"roles": ["vendor"]}, headers=h)
    assert drop.status_code == 409
    bob = await root.client.put("/api/v1/users/bob/status", json={"status": "disabled"}, headers=h)
    assert bob.status_code == 200 and bob.json()["status"] == "disabled"
    missing = await root.client.put("/api/v1/users/nobody/roles", json={"roles": ["vendor"]},
                                    headers=h)  # fmt: skip
    assert missing.status_code == 404


async def test_asset_credentials_are_write_only(api: Api) -> None:
    root = await api.login("root")
    h = root.headers()
    zone = {"name": "cell-1", "required_approvals": 2}
    assert (await root.client.post("/api/v1/zones", json=zone, headers=h)).status_code == 201
    asset = {"name": "hmi-7", "host": "10.0.0.7", "port": 22, "protocol": "ssh",
             "zones": ["cell-1"]}  # fmt: skip
    made = await root.client.post("/api/v1/assets", json=asset, headers=h)
    assert made.status_code == 201, made.text
    assert made.json()["zones"] == ["cell-1"] and made.json()["credentials"] == []
    for bad in ({**asset, "name": "hmi-8", "port": 70000}, {**asset, "name": "hmi-8",
                "zones": ["nowhere"]}, {**asset, "name": "hmi-8", "port": "22"}):  # fmt: skip
        assert (await root.client.post("/api/v1/assets", json=bad, headers=h)).status_code == 422
    path = "/api/v1/assets/hmi-7/credentials/default"
    both = {"username": "operator", "password": SECRET, "private_key": "x"}
    assert (await root.client.put(path, json=both, headers=h)).status_code == 422
    stored = await root.client.put(path, json={"username": "operator", "password": SECRET},
                                   headers=h)  # fmt: skip
    assert stored.status_code == 200, stored.text
    assert stored.json()["set_by"] == "root" and stored.json()["kind"] == "password"
    assert set(stored.json()) == {"account", "username", "kind", "set_at", "set_by"}
    replaced = await root.client.put(path, json={"username": "op2", "password": SECRET + "!"},
                                     headers=h)  # fmt: skip
    assert replaced.status_code == 200 and replaced.json()["username"] == "op2"
    shown = await root.client.get("/api/v1/assets/hmi-7")
    assert shown.json()["credentials"][0]["username"] == "op2"
    disabled = await root.client.put(
        "/api/v1/assets/hmi-7", headers=h,
        json={"host": "10.0.0.7", "port": 2222, "zones": [], "disabled": True},
    )  # fmt: skip
    assert disabled.status_code == 200 and disabled.json()["disabled"] is True
    assert disabled.json()["port"] == 2222
    assert (await root.client.put("/api/v1/assets/nope/credentials/default", headers=h,
            json={"username": "x", "password": SECRET})).status_code == 404  # fmt: skip
    async with api.env.services.sessions() as db:
        every = [r.detail for r in await db.scalars(select(AuditEventRow))]
    assert not any(SECRET in d for d in every)
    creds = [json.loads(c.detail) for c in await changes(api) if c.target == "hmi-7/default"]
    assert creds[-1]["before"]["value"] == creds[-1]["after"]["value"] == "(redacted)"
    for answer in (shown, stored, replaced, disabled, await root.client.get("/api/v1/assets")):
        assert SECRET not in answer.text


async def test_tokens_of_every_user_listed_and_revoked(api: Api) -> None:
    bearer = await api.token("bob", ["read"])
    root = await api.login("root")
    listed = (await root.client.get("/api/v1/tokens")).json()
    [mine] = [t for t in listed if t["owner"] == "bob"]
    assert bearer["Authorization"].split()[1] not in json.dumps(listed)
    done = await root.client.post(f"/api/v1/tokens/{mine['id']}/revoke", headers=root.headers())
    assert done.status_code == 200 and done.json()["revoked_at"] is not None
    async with api.client() as bot:
        assert (await bot.get("/api/v1/access/now", headers=bearer)).status_code == 401
    again = await root.client.post(f"/api/v1/tokens/{mine['id']}/revoke", headers=root.headers())
    assert again.status_code == 404
    assert (await root.client.get("/api/v1/alerts")).status_code == 200


async def test_grant_schedule_preview_over_the_api(api: Api) -> None:
    root = await api.login("root")
    # The fixture's clock is a Friday 12:00 UTC: the Berlin window is open now.
    shown = await root.client.post(
        "/api/v1/grants/preview", json={"schedule": "Mon-Fri 07:00-17:00 Europe/Berlin"},
        headers=root.headers(),
    )  # fmt: skip
    assert shown.status_code == 200, shown.text
    windows = shown.json()
    assert len(windows) == 3 and windows[0]["open_now"] is True
    assert [w["utc"] for w in windows[1:]] == ["06:00-16:00 UTC", "06:00-16:00 UTC"]
    bad = await root.client.post(
        "/api/v1/grants/preview", json={"schedule": "sometimes"}, headers=root.headers()
    )
    assert bad.status_code == 422
    alice = await api.login("alice")
    refused = await alice.client.post(
        "/api/v1/grants/preview", json={"schedule": "Mon-Fri 07:00-17:00 UTC"},
        headers=alice.headers(),
    )  # fmt: skip
    assert refused.status_code == 403
