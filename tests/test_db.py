"""Migrations and the first data rules, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import inspect

from gateway.config import Overrides, Settings, load_settings
from gateway.db import migrate
from gateway.db.engine import make_engine, make_sessionmaker
from gateway.identity.accounts import AccountError, create_user, list_users, totp_context
from gateway.identity.enrollment import active_admin_exists, consume, issue_admin_bootstrap
from gateway.sealed import SealError, unseal
from tests.support import clean_env, conduit

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
KEY = bytes(range(32))


def settings_for(url: str, data_dir: Path) -> Settings:
    data_dir.mkdir(parents=True, exist_ok=True)
    return load_settings(None, Overrides(data_dir=data_dir), environ={"CONDUIT_DATABASE__URL": url})


def _revisions() -> list[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrate.alembic_config())
    return [rev.revision for rev in reversed(list(script.walk_revisions("base", "heads")))]


def test_cli_upgrade_then_current(database_url: str, tmp_path: Path) -> None:
    env = clean_env(CONDUIT_DATABASE__URL=database_url)
    (tmp_path / "data").mkdir(exist_ok=True)
    args = ["--data-dir", str(tmp_path / "data")]
    behind = conduit("db", "current", *args, env=env)
    assert behind.returncode == 1 and behind.stdout.startswith("empty behind")
    up = conduit("db", "upgrade", *args, env=env)
    assert up.returncode == 0, up.stderr
    revisions = _revisions()
    total = len(revisions)
    for index, rev in enumerate(revisions, 1):
        assert f"[{index}/{total}] applied {rev}" in up.stdout
    again = conduit("db", "upgrade", *args, env=env)
    assert again.returncode == 0 and "schema is current" in again.stdout
    current = conduit("db", "current", *args, env=env)
    assert current.returncode == 0
    assert current.stdout.strip() == f"{migrate.head_revision()} current"

    async def tables() -> set[str]:
        engine = make_engine(settings_for(database_url, tmp_path / "data"))
        try:
            async with engine.connect() as conn:
                names = await conn.run_sync(lambda c: inspect(c).get_table_names())
                return set(names)
        finally:
            await engine.dispose()

    assert {"users", "user_roles", "enrollment_tokens", "alembic_version"} <= asyncio.run(tables())


def test_upgrade_against_unreachable_database_is_one_line(tmp_path: Path) -> None:
    env = clean_env(CONDUIT_DATABASE__URL="postgresql+asyncpg://nobody:pw@127.0.0.1:1/none")
    result = conduit("db", "upgrade", "--data-dir", str(tmp_path), env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("conduit: cannot use the database")
    assert "Traceback" not in result.stderr and "pw@" not in result.stderr


async def test_bootstrap_link_is_single_use_under_concurrency(
    database_url: str, tmp_path: Path
) -> None:
    settings = settings_for(database_url, tmp_path / "data")
    engine = make_engine(settings)
    try:
        await migrate.upgrade(engine)
        sessions = make_sessionmaker(engine)
        async with sessions() as db, db.begin():
            old = await issue_admin_bootstrap(db, NOW)
        async with sessions() as db, db.begin():
            link = await issue_admin_bootstrap(db, NOW)
        assert link.expires_at == NOW + dt.timedelta(minutes=30)

        async def attempt(token: str, when: dt.datetime) -> bool:
            async with sessions() as db, db.begin():
                return await consume(db, token, when) is not None

        # A newer link voids the older one; an expired link never works.
        assert not await attempt(old.token, NOW)
        assert not await attempt(link.token, NOW + dt.timedelta(minutes=30))
        results = await asyncio.gather(
            *(attempt(link.token, NOW) for _ in range(12)), return_exceptions=True
        )
        wins = [r for r in results if r is True]
        assert len(wins) == 1, results
        assert not await attempt(link.token, NOW)
    finally:
        await engine.dispose()


async def test_users_roles_and_sealed_totp(database_url: str, tmp_path: Path) -> None:
    settings = settings_for(database_url, tmp_path / "data")
    engine = make_engine(settings)
    try:
        await migrate.upgrade(engine)
        sessions = make_sessionmaker(engine)
        async with sessions() as db, db.begin():
            assert not await active_admin_exists(db)
            user = await create_user(
                db,
                username="alice",
                roles=["admin", "approver"],
                now=NOW,
                master_key=KEY,
                password="correct horse battery",
                totp_secret="JBSWY3DPEHPK3PXP",
                status="active",
            )
        async with sessions() as db:
            assert await active_admin_exists(db)
            [stored] = await list_users(db)
            assert stored.role_names == ["admin", "approver"]
            assert stored.created_at == NOW
            assert stored.password_hash is not None and stored.password_hash.startswith(
                "$argon2id$"
            )
            assert stored.totp_secret_enc is not None
            assert b"JBSWY3DPEHPK3PXP" not in stored.totp_secret_enc
            assert unseal(KEY, stored.totp_secret_enc, totp_context(user.id)) == b"JBSWY3DPEHPK3PXP"
            with pytest.raises(SealError):
                unseal(KEY, stored.totp_secret_enc, totp_context(user.id + 1))
        for bad in ("Alice", "-x", "a b", "x" * 65, "", "ａlice"):
            async with sessions() as db:
                with pytest.raises(AccountError):
                    await create_user(db, username=bad, roles=["vendor"], now=NOW, master_key=KEY)
        async with sessions() as db:
            with pytest.raises(AccountError, match="already exists"):
                await create_user(db, username="alice", roles=["vendor"], now=NOW, master_key=KEY)
            with pytest.raises(AccountError, match="roles"):
                await create_user(db, username="bob", roles=["root"], now=NOW, master_key=KEY)
    finally:
        await engine.dispose()


def test_serve_refuses_an_unmigrated_database(
    database_url: str, tmp_path: Path, free_port: int
) -> None:
    data = tmp_path / "data"
    env = clean_env(CONDUIT_DATABASE__URL=database_url)
    assert conduit("init", "--data-dir", str(data), env=env).returncode == 0
    result = conduit(
        "serve",
        "--data-dir",
        str(data),
        "--portal-listen",
        f"127.0.0.1:{free_port}",
        "--ssh-listen",
        "127.0.0.1:0",
        env=env,
    )
    assert result.returncode == 1
    assert "run `conduit db upgrade`" in result.stderr
