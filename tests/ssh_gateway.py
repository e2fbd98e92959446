"""A real ``conduit serve`` in front of the real sshd target, for load, limit, API and
cluster tests.

Like the fixture in test_ssh_jump, with extra environment for the gateway process, as many
users as a test needs logins (TOTP codes are single-use), and a reader for the process's
resident memory. ``populate_with_admin``, ``Site`` and ``admin_site`` make the site the live
sessions API and cluster tests kill sessions on: vendors with a grant each on ``target`` and
an admin ``root`` who signs in to the portal (``portal_login``), on SQLite or PostgreSQL.
Does not start the sshd target (the tests' module fixture does).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyotp

from gateway.authz import hostkeys
from gateway.config import Overrides, load_settings
from gateway.identity.accounts import create_user
from gateway.keys import load_keyring
from gateway.services import Services
from gateway.vault import set_credential
from tests.sshd_target import SSHDTarget
from tests.support import clean_env, conduit, init_data_dir, serving
from tests.test_ssh_jump import PASSWORD, Gateway, _populate

ADMIN_SECRET = pyotp.random_base32()
ADMIN_PASSWORD = "Root-Kills-Carefully-7"
CSRF_RE = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` now (VmRSS in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Logins:
    """Hands out (user, code) pairs never used before: a code works once per user."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._next = [(user, step) for step in (0, 1) for user in sorted(gateway.secrets)]

    def take(self) -> tuple[str, str]:
        user, step = self._next.pop(0)
        return user, self._gateway.code(user, step)


@contextmanager
def running_gateway(
    sshd: SSHDTarget, tmp_path: Path, users: int = 4, **env: str
) -> Iterator[Gateway]:
    data = tmp_path / "data"
    init_data_dir(data)
    secrets = {f"vendor{i}": pyotp.random_base32() for i in range(users)}
    asyncio.run(_populate(data, sshd, secrets))
    with serving(data, clean_env(**env)) as (server, ssh_port):
        work = tmp_path / "client"
        work.mkdir()
        yield Gateway(data, server, ssh_port, secrets, work)


def settle_rss(pid: int, seconds: float = 1.0) -> int:
    """RSS after a short pause, so start-up allocations are counted in the baseline."""
    time.sleep(seconds)
    return rss_bytes(pid)


async def populate_with_admin(
    data: Path, environ: dict[str, str], sshd: SSHDTarget, secrets: dict[str, str]
) -> None:
    """The vendors in ``secrets`` may ssh to ``target`` (the real sshd), each by a grant of
    their own; root is an admin."""
    settings = load_settings(None, Overrides(data_dir=data), environ=environ)
    services = Services.build(settings, load_keyring(settings))
    now, key = services.clock(), services.keys.master_key
    try:
        async with services.sessions() as db, db.begin():
            for user, secret in secrets.items():
                await create_user(
                    db, username=user, roles=["vendor"], now=now, master_key=key,
                    password=PASSWORD, totp_secret=secret, status="active",
                )  # fmt: skip
            await create_user(
                db, username="root", roles=["admin"], now=now, master_key=key,
                password=ADMIN_PASSWORD, totp_secret=ADMIN_SECRET, status="active",
            )  # fmt: skip
        await services.authz.add_asset("target", "127.0.0.1", sshd.port, "ssh", actor="test")
        async with services.sessions() as db, db.begin():
            await set_credential(
                db, key, asset="target", username="root",
                private_key=sshd.client_key.read_bytes(), now=now,
            )  # fmt: skip
            await hostkeys.pin(
                db, "target", hostkeys.parse_key_line(sshd.host_public_key), actor="test", now=now
            )
        for user in secrets:
            await services.authz.add_grant(
                subject_kind="user", subject=user, object_kind="asset", obj="target",
                action="ssh", actor="test",
            )  # fmt: skip
    finally:
        await services.close()


@dataclass
class Site:
    """A served gateway and the environment its ``conduit`` commands need (the database)."""

    gateway: Gateway
    env: dict[str, str]

    def conduit(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = conduit(*args, "--data-dir", str(self.gateway.data), env=self.env)
        assert done.returncode == 0, done.stderr
        return done

    def audit_until(self, action: str, deadline_s: float = 15) -> list[dict[str, object]]:
        """The audit log once it holds ``action`` (session.end follows the client's end)."""
        end = time.monotonic() + deadline_s
        while True:
            lines = self.conduit("audit", "export").stdout.splitlines()
            events = [json.loads(line) for line in lines]
            if any(e["action"] == action for e in events) or time.monotonic() > end:
                return events
            time.sleep(0.2)


@contextmanager
def admin_site(
    sshd: SSHDTarget, tmp_path: Path, environ: dict[str, str], vendors: tuple[str, ...]
) -> Iterator[Site]:
    """A real ``conduit serve`` on the database ``environ`` names, in front of the real sshd:
    ``vendors`` and root (``populate_with_admin``)."""
    data = tmp_path / "data"
    init_data_dir(data, env=clean_env(**environ))
    secrets = {user: pyotp.random_base32() for user in vendors}
    asyncio.run(populate_with_admin(data, environ, sshd, secrets))
    with serving(data, clean_env(**environ)) as (server, ssh_port):
        work = tmp_path / "client"
        work.mkdir()
        yield Site(Gateway(data, server, ssh_port, secrets, work), clean_env(**environ))


def _csrf(page: httpx.Response) -> str:
    found = CSRF_RE.search(page.text)
    assert found, page.text
    return found.group(1)


def portal_login(client: httpx.Client) -> str:
    """Log in as the admin (password, then TOTP); returns the session's CSRF token."""
    first = {"username": "root", "password": ADMIN_PASSWORD, "csrf_token": ""}
    first["csrf_token"] = _csrf(client.get("/login"))
    assert client.post("/login", data=first).status_code == 303
    page = client.get("/login/code")
    code = pyotp.TOTP(ADMIN_SECRET).now()
    done = client.post("/login/code", data={"code": code, "csrf_token": _csrf(page)})
    assert done.status_code == 303, done.text
    return _csrf(client.get("/account"))
