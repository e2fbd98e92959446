"""Enrolment through one-time links, SSH keys and connect codes, API tokens, password policy."""

from __future__ import annotations

import asyncio
import datetime as dt
import re

import asyncssh
import httpx
import pyotp
import pytest
from sqlalchemy import select

from gateway.db.models import User
from gateway.identity import ssh_access, tokens
from gateway.identity.enrollment import issue_admin_bootstrap
from gateway.identity.onboarding import invite_user, reset_mfa
from gateway.identity.passwords import PasswordPolicy, PasswordPolicyError
from gateway.web.app import create_app
from tests.test_identity_helpers import PASSWORDS, Env, env

__all__ = ["env"]
SECRET_RE = re.compile(r'<code class="secret">([A-Z2-7]{32})</code>')
CSRF_RE = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


def client_for(e: Env) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(e.services))
    return httpx.AsyncClient(transport=transport, base_url="https://testserver")


async def user_row(e: Env, name: str) -> User:
    async with e.services.sessions() as db:
        user = await db.scalar(select(User).where(User.username == name))
    assert user is not None
    return user


@pytest.mark.parametrize(
    "password,ok",
    [
        ("short-pass1", False),
        ("password1234", False),
        ("Qwerty123456", False),
        ("iloveyou2024", False),
        ("carol-likes-long-walks", False),  # contains the username
        ("Tangerine-Lantern-Orbit", True),
    ],
)
def test_password_policy(password: str, ok: bool) -> None:
    policy = PasswordPolicy()
    if ok:
        policy.check(password, "carol")
    else:
        with pytest.raises(PasswordPolicyError):
            policy.check(password, "carol")


def test_common_list_is_shipped_and_sizeable() -> None:
    common = PasswordPolicy().common
    assert len(common) > 2000 and "password123" in common and "qwertyuiop" in common


async def test_invite_enrol_then_login(env: Env) -> None:
    async with env.services.sessions() as db, db.begin():
        _user, link = await invite_user(
            db, "carol", ["vendor"], env.clock.now, env.services.keys.master_key
        )
    async with client_for(env) as c:
        page = await c.get(f"/enroll/{link.token}")
        assert page.status_code == 200 and "valid until" in page.text
        assert 'src="data:image/svg+xml' in page.text and "<script" not in page.text
        found = SECRET_RE.search(page.text)
        csrf = CSRF_RE.search(page.text)
        assert found and csrf
        secret = found.group(1)
        totp = pyotp.TOTP(secret)
        step = int(env.clock.now.timestamp()) // 30
        form = {
            "password": "password1234",
            "password_confirm": "password1234",
            "code": totp.generate_otp(step),
            "csrf_token": csrf.group(1),
        }
        weak = await c.post(f"/enroll/{link.token}", data=form)
        assert weak.status_code == 400 and "too common" in weak.text
        strong = "Tangerine-Lantern-Orbit"
        form.update(password=strong, password_confirm=strong)
        no_csrf = {k: v for k, v in form.items() if k != "csrf_token"}
        assert (await c.post(f"/enroll/{link.token}", data=no_csrf)).status_code == 403
        wrong_code = {**form, "code": "000000" if form["code"] != "000000" else "111111"}
        assert (await c.post(f"/enroll/{link.token}", data=wrong_code)).status_code == 400
        done = await c.post(f"/enroll/{link.token}", data=form)
        assert done.status_code == 200
        codes = re.findall(r"<code>([a-z2-7]{5}-[a-z2-7]{5})</code>", done.text)
        assert len(codes) == 10
        # The link is spent; the confirming code is spent too.
        assert (await c.get(f"/enroll/{link.token}")).status_code == 404
        assert (await c.post(f"/enroll/{link.token}", data=form)).status_code == 404
    carol = await user_row(env, "carol")
    assert carol.status == "active" and carol.totp_secret_enc is not None
    assert secret.encode() not in carol.totp_secret_enc
    with pytest.raises(Exception, match="invalid"):
        await env.auth.verify_password_and_code(
            "carol", strong, totp.generate_otp(step), "ssh", "t", env.clock.now
        )
    env.clock.advance(30)
    next_code = totp.generate_otp(step + 1)
    identity = await env.auth.verify_password_and_code(
        "carol", strong, next_code, "ssh", "t", env.clock.now
    )
    assert identity.username == "carol"
    now = env.clock.now
    recovered = await env.auth.verify_password_and_code("carol", strong, codes[0], "api", "t", now)
    assert recovered.factor == "recovery"


async def test_admin_bootstrap_link_creates_the_first_admin(env: Env) -> None:
    async with env.services.sessions() as db, db.begin():
        link = await issue_admin_bootstrap(db, env.clock.now)
    async with client_for(env) as c:
        page = await c.get(f"/enroll/{link.token}")
        found, csrf = SECRET_RE.search(page.text), CSRF_RE.search(page.text)
        assert found and csrf and 'name="username"' in page.text
        code = pyotp.TOTP(found.group(1)).generate_otp(int(env.clock.now.timestamp()) // 30)
        form = {
            "username": "root",
            "password": "Granite-Harbour-Wisp",
            "password_confirm": "Granite-Harbour-Wisp",
            "code": code,
            "csrf_token": csrf.group(1),
        }
        taken = await c.post(f"/enroll/{link.token}", data={**form, "username": "alice"})
        assert taken.status_code == 400 and "already exists" in taken.text
        done = await c.post(f"/enroll/{link.token}", data=form)
        assert done.status_code == 200, done.text
    root = await user_row(env, "root")
    assert root.role_names == ["admin"] and root.status == "active"


async def test_reset_mfa_sends_the_user_through_enrolment_again(env: Env) -> None:
    async with env.services.sessions() as db, db.begin():
        _user, link = await reset_mfa(db, "alice", env.clock.now)
    alice = await user_row(env, "alice")
    assert alice.status == "invited" and alice.totp_secret_enc is None
    with pytest.raises(Exception, match="invalid"):
        await env.auth.verify_password_and_code(
            "alice", PASSWORDS["alice"], env.code("alice"), "ssh", "t", env.clock.now
        )
    assert len(link.token) >= 43


async def test_ssh_public_keys_and_connect_codes(env: Env) -> None:
    alice = await user_row(env, "alice")
    key = asyncssh.generate_private_key("ssh-ed25519", comment="alice@laptop")
    line = key.export_public_key("openssh").decode()
    async with env.services.sessions() as db, db.begin():
        row = await ssh_access.add_public_key(db, alice.id, line, env.clock.now)
        assert row.fingerprint.startswith("SHA256:") and row.comment == "alice@laptop"
        with pytest.raises(ssh_access.SSHKeyError, match="already"):
            await ssh_access.add_public_key(db, alice.id, line, env.clock.now)
    weak = asyncssh.generate_private_key("ssh-rsa", key_size=1024).export_public_key("openssh")
    for bad in ("not a key", weak.decode(), line + "\n" + line, "ssh-ed25519 AAAA" + "A" * 20000):
        with pytest.raises(ssh_access.SSHKeyError):
            ssh_access.parse_public_key(bad)
    async with env.services.sessions() as db:
        [found] = await ssh_access.authorized_keys(db, alice.id)
    assert found.public_data == key.public_data
    async with env.services.sessions() as db, db.begin():
        assert await ssh_access.remove_public_key(db, alice.id, row.id)
        assert await ssh_access.list_public_keys(db, alice.id) == []

    async with env.services.sessions() as db, db.begin():
        code, expires = await ssh_access.issue_connect_code(
            db, alice.id, "plc-eng-01", env.clock.now
        )
    assert expires == env.clock.now + dt.timedelta(minutes=5)

    async def use(user_id: int, asset: str, when: dt.datetime) -> bool:
        async with env.services.sessions() as db, db.begin():
            return await ssh_access.use_connect_code(db, user_id, asset, code, when)

    mallory = await user_row(env, "mallory")
    assert not await use(mallory.id, "plc-eng-01", env.clock.now)  # bound to alice
    assert not await use(alice.id, "hmi-02", env.clock.now)  # bound to the asset
    late = env.clock.now + dt.timedelta(minutes=5)
    assert not await use(alice.id, "plc-eng-01", late)
    results = await asyncio.gather(*(use(alice.id, "plc-eng-01", env.clock.now) for _ in range(10)))
    assert results.count(True) == 1


async def test_tokens_are_hashed_scoped_and_expire(env: Env) -> None:
    alice = await user_row(env, "alice")
    async with env.services.sessions() as db, db.begin():
        new = await tokens.create_token(db, alice.id, ["read", "read"], 2, env.clock.now)
        with pytest.raises(tokens.TokenError):
            await tokens.create_token(db, alice.id, ["Bad Scope"], 2, env.clock.now)
        with pytest.raises(tokens.TokenError):
            await tokens.create_token(db, alice.id, ["read"], 0, env.clock.now)
    async with env.services.sessions() as db:
        [row] = await tokens.list_tokens(db, alice.id)
        assert new.token not in row.token_sha256 and row.scopes == "read"
        found = await tokens.authenticate_token(db, new.token, env.clock.now)
        assert found is not None and found.scopes == {"read"}
        later = env.clock.now + dt.timedelta(days=2)
        assert await tokens.authenticate_token(db, new.token, later) is None
        assert await tokens.authenticate_token(db, new.token + "x", env.clock.now) is None
