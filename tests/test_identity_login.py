"""Login rules on SQLite and PostgreSQL: single-use codes, lockout, pending-state binding."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import threading

import pytest
from sqlalchemy import select

from gateway.audit.tables import AuditEventRow
from gateway.db.models import User
from gateway.identity import login, pending
from gateway.identity.codes import is_totp_format, matching_step, replace_recovery_codes
from gateway.identity.login import FAILED, AuthenticationFailed, Identity
from gateway.identity.onboarding import unlock_user
from gateway.identity.ssh_access import issue_connect_code
from tests.test_identity_helpers import PASSWORDS, SECRETS, Env, env

__all__ = ["env"]


async def ssh_login(e: Env, user: str, password: str, code: str) -> Identity:
    return await e.auth.verify_password_and_code(
        user, password, code, "ssh", "192.0.2.7", e.clock.now
    )


async def portal_login(e: Env, user: str, password: str, code: str) -> Identity:
    async with e.services.sessions() as db, db.begin():
        raw = await pending.start(db, e.clock.now)
    assert await e.auth.password_step(raw, user, password, e.clock.now, "192.0.2.8")
    identity, _next = await e.auth.code_step(raw, code, e.clock.now, "192.0.2.8")
    return identity


async def audit_rows(e: Env) -> list[AuditEventRow]:
    async with e.services.sessions() as db:
        return list(await db.scalars(select(AuditEventRow).order_by(AuditEventRow.id)))


@pytest.mark.parametrize(
    "code",
    [
        "\uff11\uff12\uff13\uff14\uff15\uff16",  # full-width digits
        "١٢٣٤٥٦",  # Arabic-Indic digits: str.isdigit() is True for these
        " 123456",
        "123456 ",
        "123 456",
        "+123456",
        "-123456",
        "12345",
        "1234567",
        "",
        "12345a",
    ],
)
def test_only_ascii_six_digit_codes_have_the_format(code: str) -> None:
    assert not is_totp_format(code)
    assert matching_step(SECRETS["alice"], code, dt.datetime.now(dt.UTC)) is None


async def test_lookalike_codes_are_refused_even_when_digits_match(env: Env) -> None:
    good = env.code("alice")
    fullwidth = "".join(chr(0xFF10 + int(d)) for d in good)
    for bad in (fullwidth, f" {good}", f"{good} ", f"+{good}", f"{good[:3]} {good[3:]}"):
        with pytest.raises(AuthenticationFailed) as exc:
            await ssh_login(env, "alice", PASSWORDS["alice"], bad)
        assert exc.value.reason == "bad-code"
        # Each refusal counts as a failure; unlock so five tries do not lock the account.
        async with env.services.sessions() as db, db.begin():
            await unlock_user(db, "alice")
    assert (await ssh_login(env, "alice", PASSWORDS["alice"], good)).username == "alice"


async def test_same_code_twice_gives_one_success(env: Env) -> None:
    code = env.code("alice")
    assert (await portal_login(env, "alice", PASSWORDS["alice"], code)).factor == "totp"
    with pytest.raises(AuthenticationFailed) as exc:
        await ssh_login(env, "alice", PASSWORDS["alice"], code)
    assert exc.value.reason == "bad-code" and exc.value.message == FAILED
    # An older step's code is not usable once a newer one was accepted.
    with pytest.raises(AuthenticationFailed):
        await ssh_login(env, "alice", PASSWORDS["alice"], env.code("alice", -1))
    env.clock.advance(30)
    assert (await ssh_login(env, "alice", PASSWORDS["alice"], env.code("alice"))).channel == "ssh"


async def test_fifty_concurrent_logins_with_one_code_give_exactly_one_success(env: Env) -> None:
    code = env.code("alice")
    results = await asyncio.gather(
        *(ssh_login(env, "alice", PASSWORDS["alice"], code) for _ in range(50)),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, Identity)]
    others = [r for r in results if not isinstance(r, Identity)]
    assert len(wins) == 1, results
    assert all(isinstance(r, AuthenticationFailed) for r in others), others


async def test_neighbouring_steps_accepted_and_further_ones_not(env: Env) -> None:
    assert await ssh_login(env, "alice", PASSWORDS["alice"], env.code("alice", -1))
    assert await ssh_login(env, "alice", PASSWORDS["alice"], env.code("alice", +1))
    env.clock.advance(120)
    with pytest.raises(AuthenticationFailed):
        await ssh_login(env, "alice", PASSWORDS["alice"], env.code("alice", +2))


async def test_failures_over_ssh_and_portal_add_up_to_a_lock(env: Env) -> None:
    for _ in range(3):
        with pytest.raises(AuthenticationFailed):
            await ssh_login(env, "alice", "wrong password here", env.code("alice"))
    for _ in range(2):
        with pytest.raises(AuthenticationFailed):
            await portal_login(env, "alice", PASSWORDS["alice"], "000000")
    # Locked: the correct password and a fresh code are refused on both channels.
    with pytest.raises(AuthenticationFailed) as exc:
        await portal_login(env, "alice", PASSWORDS["alice"], env.code("alice"))
    assert exc.value.reason == "locked" and exc.value.message == FAILED
    env.clock.advance(600)
    with pytest.raises(AuthenticationFailed) as exc:
        await ssh_login(env, "alice", PASSWORDS["alice"], env.code("alice"))
    assert exc.value.reason == "locked"
    # Unlock by time (lock_seconds = 900 by default).
    env.clock.advance(301)
    assert (await ssh_login(env, "alice", PASSWORDS["alice"], env.code("alice"))).username
    actions = [(r.action, r.actor) for r in await audit_rows(env)]
    assert ("account.lock", "alice") in actions
    assert actions[-1] == ("login.success", "alice")


async def test_admin_unlock_ends_the_lock_at_once(env: Env) -> None:
    for _ in range(5):
        with pytest.raises(AuthenticationFailed):
            await ssh_login(env, "alice", "wrong password here", "000000")
    with pytest.raises(AuthenticationFailed):
        await ssh_login(env, "alice", PASSWORDS["alice"], env.code("alice"))
    async with env.services.sessions() as db, db.begin():
        await unlock_user(db, "alice")
    env.clock.advance(30)
    assert await ssh_login(env, "alice", PASSWORDS["alice"], env.code("alice"))


async def test_alice_then_mallorys_password_in_one_state_logs_in_neither(env: Env) -> None:
    now, src = env.clock.now, "192.0.2.9"
    async with env.services.sessions() as db, db.begin():
        raw = await pending.start(db, now)
    assert await env.auth.password_step(raw, "alice", "not alices password", now, src)
    # Mallory submits her own valid password in alice's pending state.
    assert not await env.auth.password_step(raw, "mallory", PASSWORDS["mallory"], now, src)
    for user in ("alice", "mallory"):
        with pytest.raises(AuthenticationFailed) as exc:
            await env.auth.code_step(raw, env.code(user), now, src)
        assert exc.value.reason == "no-pending-login"
    rows = await audit_rows(env)
    assert any(
        r.action == "login.failure" and "pending-login-user-mismatch" in r.detail for r in rows
    )
    assert not any(r.action == "login.success" for r in rows)


async def test_unknown_user_wrong_password_wrong_code_look_alike(env: Env) -> None:
    messages = set()
    for user, password, code in (
        ("nobody", "Whatever-Passphrase-9", env.code("alice")),
        ("alice", "wrong password here", env.code("alice")),
        ("alice", PASSWORDS["alice"], "999999"),
        ("Bad Name!", "x", "123456"),
    ):
        with pytest.raises(AuthenticationFailed) as exc:
            await portal_login(env, user, password, code)
        messages.add(str(exc.value))
    assert messages == {FAILED}


async def test_recovery_code_works_once(env: Env) -> None:
    async with env.services.sessions() as db, db.begin():
        alice = await db.scalar(select(User).where(User.username == "alice"))
        assert alice is not None
        codes = await replace_recovery_codes(db, alice.id, env.clock.now)
    assert len(codes) == 10 and len(set(codes)) == 10
    identity = await portal_login(env, "alice", PASSWORDS["alice"], codes[0].upper())
    assert identity.factor == "recovery"
    with pytest.raises(AuthenticationFailed):
        await portal_login(env, "alice", PASSWORDS["alice"], codes[0])
    assert (await ssh_login(env, "alice", PASSWORDS["alice"], codes[1])).factor == "recovery"


async def test_disabled_account_cannot_log_in(env: Env) -> None:
    async with env.services.sessions() as db, db.begin():
        alice = await db.scalar(select(User).where(User.username == "alice"))
        assert alice is not None
        alice.status = "disabled"
    with pytest.raises(AuthenticationFailed) as exc:
        await ssh_login(env, "alice", PASSWORDS["alice"], env.code("alice"))
    assert exc.value.reason == "account-disabled"


async def test_no_secret_reaches_the_logs(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    code = env.code("alice")
    await portal_login(env, "alice", PASSWORDS["alice"], code)
    with pytest.raises(AuthenticationFailed):
        await ssh_login(env, "alice", PASSWORDS["mallory"], code)
    async with env.services.sessions() as db, db.begin():
        raw = await pending.start(db, env.clock.now)
    await env.auth.password_step(raw, "alice", PASSWORDS["alice"], env.clock.now, "s")
    await env.auth.password_step(raw, "mallory", PASSWORDS["mallory"], env.clock.now, "s")
    text = caplog.text + "".join(r.detail for r in await audit_rows(env))
    for secret in (*PASSWORDS.values(), *SECRETS.values(), code, raw):
        assert secret not in text


async def test_old_argon2_parameters_are_rehashed_at_login(env: Env) -> None:
    from argon2 import PasswordHasher

    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORDS["alice"])
    async with env.services.sessions() as db, db.begin():
        alice = await db.scalar(select(User).where(User.username == "alice"))
        assert alice is not None
        alice.password_hash = weak
    await ssh_login(env, "alice", PASSWORDS["alice"], env.code("alice"))
    async with env.services.sessions() as db:
        stored = await db.scalar(select(User.password_hash).where(User.username == "alice"))
    assert stored is not None and stored != weak and "m=65536" in stored


async def test_a_burst_of_logins_hashes_at_most_slots_at_once(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound is what keeps a burst's memory at slots x 64 MiB and lets logins finish in
    turn; checked on the real verifier, wrapped to count how many run together."""
    running, most, lock = [0], [0], threading.Lock()
    real = login.verify_or_dummy

    def counted(stored: str | None, password: str) -> bool:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            return real(stored, password)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(login, "verify_or_dummy", counted)
    env.auth.hash_slots = 2
    results = await asyncio.gather(
        *(ssh_login(env, "alice", PASSWORDS["alice"], "000000") for _ in range(6)),
        return_exceptions=True,
    )
    assert all(isinstance(r, AuthenticationFailed) for r in results)
    assert most[0] == 2


async def test_a_connect_code_does_not_log_in_a_locked_account_and_stays_unspent(
    env: Env,
) -> None:
    async def by_code(user: str, asset: str, code: str) -> Identity | None:
        return await env.auth.connect_code_login(
            user, asset, code, "ssh", "192.0.2.10", env.clock.now
        )

    async with env.services.sessions() as db, db.begin():
        alice = await db.scalar(select(User).where(User.username == "alice"))
        assert alice is not None
        code, _ = await issue_connect_code(db, alice.id, "plc-1", env.clock.now)
    # Not a code for this user and asset: None, and the caller goes on with it as a password.
    assert await by_code("alice", "plc-1", "not-the-code") is None
    assert await by_code("alice", "hmi-2", code) is None
    assert await by_code("mallory", "plc-1", code) is None
    assert await by_code("nobody", "plc-1", code) is None
    for _ in range(5):
        with pytest.raises(AuthenticationFailed):
            await ssh_login(env, "alice", "wrong password here", "000000")
    with pytest.raises(AuthenticationFailed) as exc:
        await by_code("alice", "plc-1", code)
    assert exc.value.reason == "locked" and exc.value.message == FAILED
    async with env.services.sessions() as db, db.begin():
        await unlock_user(db, "alice")
    identity = await by_code("alice", "plc-1", code)
    assert identity is not None
    assert (identity.username, identity.factor, identity.channel) == (
        "alice", "connect-code", "ssh",
    )  # fmt: skip
    assert await by_code("alice", "plc-1", code) is None  # spent
    events = [(r.action, r.actor, r.target, json.loads(r.detail)) for r in await audit_rows(env)]
    locked = {"channel": "ssh", "reason": "locked", "factor": "connect-code"}
    assert ("login.failure", "alice", "plc-1", locked) in events
    assert events[-1] == ("login.success", "alice", "plc-1",
                          {"channel": "ssh", "factor": "connect-code"})  # fmt: skip
