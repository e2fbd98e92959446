"""Benchmark logins per second with the chosen argon2id parameters, against baselines.

Measured in one process on a fresh SQLite database in a temporary directory:
* ``argon2_verify`` - one argon2id verification alone (argon2-cffi defaults, RFC 9106 low
  memory: t=3, m=64 MiB, p=4): the floor any password login pays;
* ``login_one_shot`` - ``Authenticator.verify_password_and_code`` (SSH/API path): argon2 in a
  worker thread, user lookup, TOTP check and single-use claim, lockout bookkeeping, two
  audit events' worth of work (one hash-chained event);
* ``portal_login`` - the full portal flow over in-process HTTP (GET /login, POST /login,
  GET /login/code, POST /login/code, session created), sequential and with ``--parallel``
  clients at once (argon2 runs behind a semaphore of 4).
Every login uses a fresh TOTP step (the clock is passed in, so it moves 30 s per login)
because codes are single use. The last printed line is one JSON object with the figures.

Run from the repository root: ``python -m bench.login [--n 30] [--parallel 8]``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
import tempfile
import time
from pathlib import Path

import httpx
import pyotp

from gateway.audit import AuditLog
from gateway.config import Overrides, load_settings
from gateway.db import migrate
from gateway.identity.accounts import create_user
from gateway.identity.login import Authenticator
from gateway.identity.passwords import hash_password, verify_password
from gateway.keys import init_key_material, load_keyring
from gateway.services import Services
from gateway.web.app import create_app

PASSWORD = "Bench-Passphrase-Long-1"  # noqa: S105 - a throwaway benchmark account
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"  # noqa: S105
CSRF_RE = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


class SteppingClock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def step(self) -> str:
        """Move to the next TOTP step and return that step's code."""
        self.now += dt.timedelta(seconds=30)
        return str(pyotp.TOTP(SECRET).generate_otp(int(self.now.timestamp()) // 30))


def bench_argon2(n: int) -> float:
    stored = hash_password(PASSWORD)
    start = time.perf_counter()
    for _ in range(n):
        assert verify_password(stored, PASSWORD)
    return n / (time.perf_counter() - start)


async def portal_login(client: httpx.AsyncClient, user: str, code: str) -> None:
    page = await client.get("/login")
    csrf = CSRF_RE.search(page.text)
    assert csrf
    token = csrf.group(1)
    data = {"username": user, "password": PASSWORD, "csrf_token": token}
    assert (await client.post("/login", data=data)).status_code == 303
    done = await client.post("/login/code", data={"code": code, "csrf_token": token})
    assert done.status_code == 303, done.status_code


async def run(n: int, parallel: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        settings = load_settings(None, Overrides(data_dir=data), environ={})
        init_key_material(settings)
        keys = load_keyring(settings, environ={})
        clock = SteppingClock()
        services = Services.build(settings, keys, clock=clock)
        try:
            await migrate.upgrade(services.engine)
            users = [f"bench{i}" for i in range(parallel)]
            async with services.sessions() as db, db.begin():
                for name in users:
                    await create_user(
                        db, username=name, roles=["vendor"], now=clock.now,
                        master_key=keys.master_key, password=PASSWORD, totp_secret=SECRET,
                        status="active",
                    )  # fmt: skip
            audit = AuditLog(services.sessions, keys.signing_key, clock)
            auth = Authenticator(services.sessions, keys.master_key, settings.lockout, audit)
            start = time.perf_counter()
            for _ in range(n):
                code = clock.step()
                await auth.verify_password_and_code(users[0], PASSWORD, code, "ssh", "b", clock())
            one_shot = n / (time.perf_counter() - start)

            transport = httpx.ASGITransport(app=create_app(services))
            clients = [
                httpx.AsyncClient(transport=transport, base_url="https://bench")
                for _ in range(parallel)
            ]
            start = time.perf_counter()
            for _ in range(n):
                await portal_login(clients[0], users[0], clock.step())
            portal = n / (time.perf_counter() - start)
            rounds = max(1, n // parallel)
            start = time.perf_counter()
            for _ in range(rounds):
                code = clock.step()  # one step, but each user has its own replay guard
                await asyncio.gather(
                    *(portal_login(c, u, code) for c, u in zip(clients, users, strict=True))
                )
            portal_parallel = rounds * parallel / (time.perf_counter() - start)
            for c in clients:
                await c.aclose()
        finally:
            await services.close()
    return {
        "login_one_shot_per_s": one_shot,
        "portal_login_per_s": portal,
        "portal_login_parallel_per_s": portal_parallel,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--parallel", type=int, default=8)
    args = parser.parse_args()
    argon2 = bench_argon2(args.n)
    figures = asyncio.run(run(args.n, args.parallel))
    parallel = figures["portal_login_parallel_per_s"]
    result = {
        "argon2": "argon2id t=3 m=65536KiB p=4 (argon2-cffi defaults)",
        "n": args.n,
        "parallel": args.parallel,
        "argon2_verify_per_s": round(argon2, 2),
        **{k: round(v, 2) for k, v in figures.items()},
        "ratio_one_shot_vs_argon2": round(figures["login_one_shot_per_s"] / argon2, 3),
        "ratio_portal_vs_argon2": round(figures["portal_login_per_s"] / argon2, 3),
        "ratio_portal_parallel_vs_argon2": round(parallel / argon2, 3),
    }
    for key, value in result.items():
        print(f"{key:34} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
