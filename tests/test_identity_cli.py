"""The identity CLI handlers, parsed with the argparse builders the CLI will call."""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import re
import stat
from pathlib import Path

import pyotp
import pytest
from sqlalchemy import select

from gateway.audit import AuditLog
from gateway.audit.tables import AuditEventRow
from gateway.cli.common import common_parser as _common
from gateway.cli.identity import add_token_commands, add_user_commands
from gateway.db import migrate
from gateway.db.models import User
from gateway.errors import ConduitError
from gateway.identity.login import AuthenticationFailed, Authenticator
from gateway.keys import init_key_material, load_keyring
from gateway.services import Services, utc_now
from tests.test_identity_helpers import make_settings


def parser() -> argparse.ArgumentParser:
    common = _common()
    root = argparse.ArgumentParser(prog="conduit")
    sub = root.add_subparsers(dest="command", required=True)
    user = sub.add_parser("user").add_subparsers(dest="user_command", required=True)
    add_user_commands(user, common)
    add_token_commands(sub, common)
    return root


def run(data: Path, *argv: str) -> int:
    args = parser().parse_args([*argv, "--data-dir", str(data)])
    code: int = args.handler(args)
    return code


@pytest.fixture
def data(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CONDUIT_DATABASE__URL", database_url)
    monkeypatch.delenv("CONDUIT_MASTER_KEY", raising=False)
    settings = make_settings(database_url, tmp_path / "data")
    init_key_material(settings)

    async def upgrade() -> None:
        services = Services.build(settings, load_keyring(settings))
        try:
            await migrate.upgrade(services.engine)
        finally:
            await services.close()

    asyncio.run(upgrade())
    return tmp_path / "data"


async def _login(database_url: str, data: Path, user: str, password: str, code: str) -> str:
    settings = make_settings(database_url, data)
    keys = load_keyring(settings)
    services = Services.build(settings, keys)
    try:
        audit = AuditLog(services.sessions, keys.signing_key, utc_now)
        auth = Authenticator(services.sessions, keys.master_key, settings.lockout, audit)
        identity = await auth.verify_password_and_code(user, password, code, "ssh", "t", utc_now())
        return identity.username
    finally:
        await services.close()


async def _audit_actions(database_url: str, data: Path) -> list[tuple[str, str]]:
    settings = make_settings(database_url, data)
    services = Services.build(settings, load_keyring(settings))
    try:
        async with services.sessions() as db:
            rows = await db.scalars(select(AuditEventRow).order_by(AuditEventRow.id))
            return [(r.action, r.target) for r in rows]
    finally:
        await services.close()


async def _user(database_url: str, data: Path, name: str) -> User:
    settings = make_settings(database_url, data)
    services = Services.build(settings, load_keyring(settings))
    try:
        async with services.sessions() as db:
            user = await db.scalar(select(User).where(User.username == name))
            assert user is not None
            return user
    finally:
        await services.close()


def test_user_add_token_disable_unlock_reset(
    data: Path,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    password = "Copper-Meadow-Signal-7"
    secret_file = data.parent / "alice.totp"
    monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
    assert (
        run(
            data,
            "user",
            "add",
            "alice",
            "--role",
            "vendor",
            "--role",
            "approver",
            "--org",
            "acme",
            "--password-stdin",
            "--totp-secret-file",
            str(secret_file),
        )  # fmt: skip
        == 0
    )
    out = capsys.readouterr().out
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text().strip()
    assert re.fullmatch(r"[A-Z2-7]{32}", secret) and secret not in out
    assert len(re.findall(r"[a-z2-7]{5}-[a-z2-7]{5}", out)) == 10
    code = pyotp.TOTP(secret).now()
    assert asyncio.run(_login(database_url, data, "alice", password, code)) == "alice"

    monkeypatch.setattr("sys.stdin", io.StringIO("password1234\n"))
    with pytest.raises(ConduitError, match="common"):
        run(data, "user", "add", "weak", "--role", "vendor", "--password-stdin",
            "--totp-secret-file", str(data.parent / "weak.totp"))  # fmt: skip

    with pytest.raises(ConduitError, match="needs --password-stdin"):
        run(data, "user", "add", "nopw", "--role", "vendor", "--totp-secret-file", "x.totp")
    assert run(data, "user", "invite", "bob", "--role", "vendor") == 0
    link = re.search(r"https://\S+/enroll/([A-Za-z0-9_-]{43})", capsys.readouterr().out)
    assert link

    assert run(data, "token", "create", "--user", "alice", "--scope", "read", "--days", "3") == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert token.startswith("cdt_")

    assert run(data, "user", "disable", "alice") == 0
    assert asyncio.run(_user(database_url, data, "alice")).status == "disabled"
    assert run(data, "user", "enable", "alice") == 0
    assert run(data, "user", "unlock", "alice") == 0
    assert run(data, "user", "reset-mfa", "alice") == 0
    reset = capsys.readouterr().out
    assert "/enroll/" in reset
    after = asyncio.run(_user(database_url, data, "alice"))
    assert after.status == "invited" and after.totp_secret_enc is None
    with pytest.raises(AuthenticationFailed):
        asyncio.run(_login(database_url, data, "alice", password, pyotp.TOTP(secret).now()))

    actions = [a for a, _ in asyncio.run(_audit_actions(database_url, data))]
    for expected in (
        "user.create", "user.invite", "token.create", "user.disable", "user.enable",
        "account.unlock", "mfa.reset",
    ):  # fmt: skip
        assert expected in actions
    for secret_text in (password, secret, code, token, link.group(1)):
        assert secret_text not in caplog.text


def test_password_policy_comes_from_configuration(tmp_path: Path) -> None:
    from tests.support import clean_env, conduit, init_data_dir

    data = tmp_path / "policy"
    init_data_dir(data)
    args = [
        "user",
        "add",
        "erin",
        "--role",
        "vendor",
        "--password-stdin",
        "--totp-secret-file",
        str(tmp_path / "erin.totp"),
        "--data-dir",
        str(data),
    ]
    password = "Quartz-Lantern-47\n"  # 17 characters, not a common password
    strict = conduit(*args, env=clean_env(CONDUIT_PASSWORDS__MIN_LENGTH="20"), stdin=password)
    assert strict.returncode == 1
    assert "at least 20 characters" in strict.stderr
    assert not (tmp_path / "erin.totp").exists()
    default = conduit(*args, stdin=password)
    assert default.returncode == 0, default.stderr
