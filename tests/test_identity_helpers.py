"""Shared set-up for the identity tests: a migrated database, keys, services and users.

Not a conftest (that file belongs to the foundation); the identity test modules import the
``env`` fixture from here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pyotp
import pytest

from gateway.audit import AuditLog
from gateway.config import Overrides, Settings, load_settings
from gateway.db import migrate
from gateway.identity.accounts import create_user
from gateway.identity.login import Authenticator
from gateway.keys import init_key_material, load_keyring
from gateway.services import Services

START = dt.datetime(2026, 11, 27, 12, 0, 0, tzinfo=dt.UTC)
PASSWORDS = {
    "alice": "Alice-Sturdy-Passphrase-1",
    "mallory": "Mallory-Evil-Passphrase-2",
    "bob": "Bob-Quiet-Passphrase-3",
}
SECRETS = {
    "alice": "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP",
    "mallory": "KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU",
    "bob": "MFRGGZDFMZTWQ2LKMFRGGZDFMZTWQ2LK",
}


class Clock:
    """A settable clock: tests move time, never sleep."""

    def __init__(self, now: dt.datetime = START) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@dataclass
class Env:
    settings: Settings
    services: Services
    clock: Clock
    audit: AuditLog
    auth: Authenticator

    def code(self, username: str, offset_steps: int = 0) -> str:
        step = int(self.clock.now.timestamp()) // 30 + offset_steps
        return str(pyotp.TOTP(SECRETS[username]).generate_otp(step))


def make_settings(database_url: str, data_dir: Path) -> Settings:
    data_dir.mkdir(parents=True, exist_ok=True)
    return load_settings(
        None,
        Overrides(data_dir=data_dir),
        environ={"CONDUIT_DATABASE__URL": database_url, "CONDUIT_SSH__ENABLED": "false"},
    )


async def build_env(database_url: str, data_dir: Path) -> Env:
    settings = make_settings(database_url, data_dir)
    init_key_material(settings)
    keys = load_keyring(settings, environ={})
    clock = Clock()
    services = Services.build(settings, keys, clock=clock)
    await migrate.upgrade(services.engine)
    audit = AuditLog(services.sessions, keys.signing_key, clock)
    auth = Authenticator(services.sessions, keys.master_key, settings.lockout, audit)
    async with services.sessions() as db, db.begin():
        for name in ("alice", "mallory"):
            await create_user(
                db,
                username=name,
                roles=["vendor"],
                now=clock.now,
                master_key=keys.master_key,
                password=PASSWORDS[name],
                totp_secret=SECRETS[name],
                status="active",
            )
    return Env(settings, services, clock, audit, auth)


@pytest.fixture
async def env(database_url: str, tmp_path: Path) -> AsyncIterator[Env]:
    built = await build_env(database_url, tmp_path / "data")
    try:
        yield built
    finally:
        await built.services.close()
