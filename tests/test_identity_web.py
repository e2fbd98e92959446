"""The portal's login, sessions, CSRF, redirects and account routes, in-process over HTTPS."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import select

from gateway.audit.tables import AuditEventRow
from gateway.db.models import User
from gateway.identity.accounts import create_user
from gateway.identity.models import ConnectCode
from gateway.identity.onboarding import set_status
from gateway.web.app import create_app
from gateway.web.auth import LOGIN_COOKIE, SESSION_COOKIE
from tests.test_identity_helpers import PASSWORDS, SECRETS, Env, env

__all__ = ["env"]
CSRF_RE = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


@dataclass
class Portal:
    env: Env
    client: httpx.AsyncClient

    def fresh_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=self.client._transport, base_url="https://testserver")


@pytest.fixture
async def portal(env: Env) -> AsyncIterator[Portal]:
    app = create_app(env.services)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
        yield Portal(env, client)


def csrf_of(page: httpx.Response) -> str:
    found = CSRF_RE.search(page.text)
    assert found, page.text
    return found.group(1)


async def start_login(client: httpx.AsyncClient, next_path: str = "/") -> str:
    page = await client.get("/login", params={"next": next_path})
    assert page.status_code == 200 and "Authorised use only" in page.text
    return csrf_of(page)


async def login(
    client: httpx.AsyncClient, user: str, password: str, code: str, next_path: str = "/"
) -> httpx.Response:
    csrf = await start_login(client, next_path)
    step1 = await client.post(
        "/login", data={"username": user, "password": password, "csrf_token": csrf}
    )
    assert step1.status_code == 303 and step1.headers["location"] == "/login/code"
    page = await client.get("/login/code")
    assert page.status_code == 200
    return await client.post("/login/code", data={"code": code, "csrf_token": csrf_of(page)})


async def account_csrf(client: httpx.AsyncClient) -> str:
    page = await client.get("/account")
    assert page.status_code == 200, page.status_code
    return csrf_of(page)


async def test_login_sets_a_fresh_session_and_logout_kills_it(portal: Portal) -> None:
    c, e = portal.client, portal.env
    done = await login(c, "alice", PASSWORDS["alice"], e.code("alice"), "/account")
    assert done.status_code == 303 and done.headers["location"] == "/account"
    set_cookie = done.headers["set-cookie"]
    assert SESSION_COOKIE in set_cookie
    for attribute in ("HttpOnly", "Secure", "SameSite=strict", "Path=/"):
        assert attribute.lower() in set_cookie.lower()
    first = c.cookies[SESSION_COOKIE]
    assert len(first) >= 43  # 256 bits, base64url
    assert LOGIN_COOKIE not in c.cookies
    e.clock.advance(30)
    await login(c, "alice", PASSWORDS["alice"], e.code("alice"))
    second = c.cookies[SESSION_COOKIE]
    assert second != first
    csrf = await account_csrf(c)
    out = await c.post("/logout", data={"csrf_token": csrf})
    assert out.status_code == 303
    async with portal.fresh_client() as old:
        old.cookies.set(SESSION_COOKIE, second)
        assert (await old.get("/account")).status_code == 303
        refused = await old.post("/logout", data={"csrf_token": csrf})
        assert refused.status_code == 401
        # Logging in again in the same browser ended the first session too.
        old.cookies.set(SESSION_COOKIE, first)
        assert (await old.get("/account")).status_code == 303


async def test_missing_or_wrong_csrf_is_403(portal: Portal) -> None:
    c, e = portal.client, portal.env
    csrf = await start_login(c)
    body = {"username": "alice", "password": PASSWORDS["alice"]}
    assert (await c.post("/login", data=body)).status_code == 403
    assert (await c.post("/login", data={**body, "csrf_token": "0" * 64})).status_code == 403
    assert (await c.post("/login", data={**body, "csrf_token": csrf})).status_code == 303
    assert (await c.post("/login/code", data={"code": e.code("alice")})).status_code == 403
    wrong = {"code": e.code("alice"), "csrf_token": "f" * 64}
    assert (await c.post("/login/code", data=wrong)).status_code == 403
    ok = await c.post("/login/code", data={"code": e.code("alice"), "csrf_token": csrf})
    assert ok.status_code == 303
    token_form = {"scopes": "read", "days": "7"}
    assert (await c.post("/account/tokens", data=token_form)).status_code == 403
    bad = {**token_form, "csrf_token": csrf}  # the login token is not the session's
    assert (await c.post("/account/tokens", data=bad)).status_code == 403
    assert (await c.post("/logout")).status_code == 403
    session_csrf = await account_csrf(c)
    made = await c.post("/account/tokens", data=token_form, headers={"X-CSRF-Token": session_csrf})
    assert made.status_code == 200 and "cdt_" in made.text


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example",
        "//evil.example/path",
        "https://evil.example/",
        "http:evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "javascript:alert(1)",
        "/ok\r\nSet-Cookie: x=1",
        "",
    ],
)
async def test_next_only_follows_local_paths(portal: Portal, target: str) -> None:
    e = portal.env
    done = await login(portal.client, "alice", PASSWORDS["alice"], e.code("alice"), target)
    assert done.status_code == 303 and done.headers["location"] == "/"


async def test_next_follows_a_local_path(portal: Portal) -> None:
    e = portal.env
    done = await login(portal.client, "alice", PASSWORDS["alice"], e.code("alice"), "/a/b?c=d")
    assert done.headers["location"] == "/a/b?c=d"


BAD_BODIES: list[dict[str, object]] = [
    {"data": {}},
    {"data": {"username": "alice"}},
    {"json": {"username": None, "password": None, "csrf_token": None}},
    {"json": {"username": ["alice", "bob"], "password": ["x"], "csrf_token": ["y"]}},
    {"json": {"username": {"a": 1}, "password": {"b": 2}, "csrf_token": {}}},
    {"json": [1, 2, 3]},
    {"content": b"\xff\xfe\x00garbage", "headers": {"content-type": "application/json"}},
    {"data": {"username": "a" * 1_000_000, "password": "x", "csrf_token": "y"}},
    {"data": {"username": "alice", "password": "p" * 1_000_000, "csrf_token": "y"}},
    {"data": {"username": "alice", "password": "x", "csrf_token": "c" * 1_000_000}},
    {"files": {"username": ("u.txt", b"a" * 1_000_000)}, "data": {"password": "x"}},
]


async def test_malformed_login_bodies_are_4xx_never_500(portal: Portal) -> None:
    await start_login(portal.client)
    for path in ("/login", "/login/code", "/enroll/" + "A" * 43):
        for body in BAD_BODIES:
            response = await portal.client.post(path, **body)  # type: ignore[arg-type]
            status = response.status_code
            assert 400 <= status < 500, (path, status, response.text[:200])


async def test_alice_then_mallory_in_one_browser_state_gets_no_session(portal: Portal) -> None:
    c, e = portal.client, portal.env
    csrf = await start_login(c)
    step1 = await c.post(
        "/login", data={"username": "alice", "password": "guess-guess-guess", "csrf_token": csrf}
    )
    assert step1.status_code == 303
    hijack = await c.post(
        "/login",
        data={"username": "mallory", "password": PASSWORDS["mallory"], "csrf_token": csrf},
    )
    assert hijack.status_code == 401 and "invalid username, password or code" in hijack.text
    for user in ("alice", "mallory"):
        page = await c.get("/login/code")
        assert page.status_code == 303  # no bound state any more
        attempt = await c.post("/login/code", data={"code": e.code(user), "csrf_token": csrf})
        assert attempt.status_code in (401, 403)
        assert SESSION_COOKIE not in c.cookies


async def test_idle_and_absolute_timeouts(portal: Portal) -> None:
    c, e = portal.client, portal.env
    await login(c, "alice", PASSWORDS["alice"], e.code("alice"))
    e.clock.advance(899)
    assert (await c.get("/account")).status_code == 200
    e.clock.advance(901)
    assert (await c.get("/account")).status_code == 303
    e.clock.advance(30)
    await login(c, "alice", PASSWORDS["alice"], e.code("alice"))
    for _ in range(int(43200 / 800)):
        e.clock.advance(800)
        assert (await c.get("/account")).status_code == 200
    e.clock.advance(800)
    assert (await c.get("/account")).status_code == 303


async def test_disable_and_admin_revoke_take_effect_at_once(portal: Portal) -> None:
    c, e = portal.client, portal.env
    async with e.services.sessions() as db, db.begin():
        await create_user(
            db, username="root", roles=["admin"], now=e.clock.now,
            master_key=e.services.keys.master_key, password="Root-Strong-Passphrase-4",
            totp_secret=SECRETS["bob"], status="active",
        )  # fmt: skip
    async with portal.fresh_client() as admin:
        code = SECRETS["bob"]
        import pyotp

        step = int(e.clock.now.timestamp()) // 30
        await login(admin, "root", "Root-Strong-Passphrase-4", pyotp.TOTP(code).generate_otp(step))
        await login(c, "alice", PASSWORDS["alice"], e.code("alice"))
        assert (await c.get("/account")).status_code == 200
        admin_csrf = await account_csrf(admin)
        e.clock.advance(6 * 60)  # step-up window passed
        revoke = await admin.post(
            "/admin/users/alice/sessions/revoke", data={"csrf_token": admin_csrf}
        )
        assert revoke.status_code == 403
        step_up = await admin.post(
            "/account/step-up",
            data={
                "csrf_token": admin_csrf,
                "code": pyotp.TOTP(code).generate_otp(int(e.clock.now.timestamp()) // 30),
            },
        )
        assert step_up.status_code == 303
        revoke = await admin.post(
            "/admin/users/alice/sessions/revoke", data={"csrf_token": admin_csrf}
        )
        assert revoke.status_code == 303
        assert (await c.get("/account")).status_code == 303
        # A non-admin gets the same answer as for a missing route.
        await login(c, "alice", PASSWORDS["alice"], e.code("alice"))
        denied = await c.post(
            "/admin/users/root/sessions/revoke", data={"csrf_token": await account_csrf(c)}
        )
        assert denied.status_code == 404
    async with e.services.sessions() as db, db.begin():
        await set_status(db, "alice", "disabled", e.clock.now)
    assert (await c.get("/account")).status_code == 303


async def test_user_lists_and_ends_own_sessions(portal: Portal) -> None:
    c, e = portal.client, portal.env
    async with portal.fresh_client() as other:
        await login(other, "alice", PASSWORDS["alice"], e.code("alice"))
        e.clock.advance(30)
        await login(c, "alice", PASSWORDS["alice"], e.code("alice"))
        page = await c.get("/account")
        ends = re.findall(r'action="/account/sessions/(\d+)/end"', page.text)
        assert len(ends) == 1 and "this session" in page.text
        done = await c.post(f"/account/sessions/{ends[0]}/end", data={"csrf_token": csrf_of(page)})
        assert done.status_code == 303
        assert (await other.get("/account")).status_code == 303
        assert (await c.get("/account")).status_code == 200


async def test_api_token_shown_once_scoped_and_revocable(portal: Portal) -> None:
    c, e = portal.client, portal.env
    await login(c, "alice", PASSWORDS["alice"], e.code("alice"))
    csrf = await account_csrf(c)
    made = await c.post("/account/tokens", data={"scopes": "read", "days": "7", "csrf_token": csrf})
    token = re.search(r"cdt_[A-Za-z0-9_-]{43}", made.text)
    assert token
    page = await c.get("/account")
    assert token.group(0) not in page.text
    auth = {"Authorization": f"Bearer {token.group(0)}"}
    me = await c.get("/api/v1/me", headers=auth)
    assert me.status_code == 200 and me.json()["username"] == "alice"
    assert (await c.get("/api/v1/me", headers={"Authorization": "Bearer cdt_x"})).status_code == 401
    assert (await c.get("/api/v1/me")).status_code == 401
    other = await c.post(
        "/account/tokens", data={"scopes": "sessions", "days": "7", "csrf_token": csrf}
    )
    other_token = re.search(r"cdt_[A-Za-z0-9_-]{43}", other.text)
    assert other_token
    wrong = await c.get("/api/v1/me", headers={"Authorization": f"Bearer {other_token.group(0)}"})
    assert wrong.status_code == 403
    token_id = re.search(r'action="/account/tokens/(\d+)/revoke"', page.text)
    assert token_id
    await c.post(f"/account/tokens/{token_id.group(1)}/revoke", data={"csrf_token": csrf})
    assert (await c.get("/api/v1/me", headers=auth)).status_code == 401
    e.clock.advance(8 * 86400)
    assert (
        await c.get("/api/v1/me", headers={"Authorization": f"Bearer {other_token.group(0)}"})
    ).status_code == 401


async def test_no_secret_in_logs_during_web_flows(
    portal: Portal, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    c, e = portal.client, portal.env
    codes = [e.code("alice")]
    await login(c, "alice", PASSWORDS["alice"], codes[0])
    session_id = c.cookies[SESSION_COOKIE]
    csrf = await account_csrf(c)
    made = await c.post("/account/tokens", data={"scopes": "read", "days": "7", "csrf_token": csrf})
    token = re.search(r"cdt_[A-Za-z0-9_-]{43}", made.text)
    assert token
    await c.get("/api/v1/me", headers={"Authorization": f"Bearer {token.group(0)}"})
    async with portal.fresh_client() as other:
        e.clock.advance(30)
        codes.append(e.code("mallory"))
        await login(other, "mallory", PASSWORDS["alice"], codes[-1])
    async with e.services.sessions() as db:
        assert await db.scalar(select(User).where(User.username == "alice"))
    for secret in (*PASSWORDS.values(), *SECRETS.values(), *codes, token.group(0), session_id):
        assert secret not in caplog.text


async def test_connect_codes_only_for_assets_the_user_may_reach(portal: Portal) -> None:
    """A missing asset and one alice may not reach get the same 404 and no code; the audit
    says which it was."""
    c, e = portal.client, portal.env
    for asset in ("plc-1", "hmi-2", "rtu-3"):
        await e.services.authz.add_asset(asset, "127.0.0.1", 22, "ssh", actor="test")
    for asset, action in (("plc-1", "ssh"), ("rtu-3", "sftp-read")):
        await e.services.authz.add_grant(
            subject_kind="user", subject="alice", object_kind="asset", obj=asset,
            action=action, actor="test",
        )  # fmt: skip
    await login(c, "alice", PASSWORDS["alice"], e.code("alice"))
    csrf = await account_csrf(c)

    async def make(asset: str) -> httpx.Response:
        return await c.post("/account/connect-codes", data={"asset": asset, "csrf_token": csrf})

    refused = [await make(asset) for asset in ("nowhere", "hmi-2", "../plc-1")]
    for page in refused:
        assert page.status_code == 404
        assert "not found or not permitted" in page.text
        assert "valid 5 minutes" not in page.text
    assert refused[0].text == refused[1].text == refused[2].text
    made = await make("plc-1")
    assert made.status_code == 200 and "connect code for plc-1 (valid 5 minutes, once)" in made.text
    files_only = await make("rtu-3")  # sftp through the jump host: a code is of use there too
    assert files_only.status_code == 200 and "connect code for rtu-3" in files_only.text
    async with e.services.sessions() as db:
        codes = (await db.scalars(select(ConnectCode.asset))).all()
        rows = (await db.scalars(select(AuditEventRow).order_by(AuditEventRow.id))).all()
    assert sorted(codes) == ["plc-1", "rtu-3"]
    refusals = [(r.actor, r.result, r.target, json.loads(r.detail)["reason"])
                for r in rows if r.action == "connect_code.refused"]  # fmt: skip
    assert refusals == [
        ("alice", "denied", "nowhere", "asset:nowhere does not exist"),
        ("alice", "denied", "hmi-2", "user:alice ssh asset:hmi-2: no grant"),
        ("alice", "denied", "../plc-1", "malformed asset name"),
    ]
