"""The live-sessions table with many live sessions: server time of the page's parts, in process.

The portal app runs over ASGI (no network, no browser: server time only) on SQLite in a
temporary directory, with ``--rows`` live sessions as the broker registers them (rows of the
shared ``live_sessions`` table, half of them on another node). Two callers: an admin, whose
role sees every session, and an approver who sees one asset's sessions through a ``watch``
grant (per-asset decisions, cached per asset). Measured, each ``--repeat`` times, medians
and p95 in ms: ``/live/table`` (the fragment htmx fetches every 2 s), ``/live`` (the whole
page), and as the baseline the JSON API's ``/api/v1/sessions`` over the same rows for the
same caller. Used by ``bench.portal`` (part ``table``); runs alone too:
``python -m bench.portal_table [--rows 500] [--repeat 30]``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pyotp

from gateway.identity.accounts import create_user
from gateway.sessions import store as live_store
from gateway.sessions.live import LiveSession
from gateway.web.app import create_app
from tests.test_identity_helpers import Env, build_env

PASSWORD = "Bench-Table-Passphrase-9"  # noqa: S105 - throwaway benchmark accounts
USERS = {"root": "admin", "appr": "approver"}
ASSETS = ("plc-1", "plc-2", "hmi-1", "hmi-2", "eng-1")
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


async def _never(reason: str) -> None:  # rows only: nothing to end in this process
    return None


async def _setup(env: Env, rows: int) -> dict[str, str]:
    services, now = env.services, env.clock.now
    totp = {name: pyotp.random_base32() for name in USERS}
    async with services.sessions() as db, db.begin():
        for name, role in USERS.items():
            await create_user(
                db, username=name, roles=[role], now=now, master_key=services.keys.master_key,
                password=PASSWORD, totp_secret=totp[name], status="active",
            )  # fmt: skip
    for i, asset in enumerate(ASSETS):
        await services.authz.add_asset(asset, f"10.0.0.{i + 1}", 22, "ssh", actor="bench")
    await services.authz.add_grant(
        subject_kind="user", subject="appr", object_kind="asset", obj="plc-1", action="watch",
        actor="bench",
    )  # fmt: skip
    async with services.sessions() as db, db.begin():
        for i in range(rows):
            await live_store.add(
                db,
                LiveSession(
                    session_id=secrets.token_hex(12), node="node-a" if i % 2 else "node-b",
                    username=("alice", "mallory")[i % 2], asset=ASSETS[i % len(ASSETS)],
                    protocol="ssh", started_at=now + dt.timedelta(seconds=i),
                    valid_until=now + dt.timedelta(hours=1), kill=_never,
                    bytes_up=i * 97, bytes_down=i * 4099,
                ),
            )  # fmt: skip
    return totp


async def _login(client: httpx.AsyncClient, env: Env, name: str, secret: str) -> None:
    found = CSRF.search((await client.get("/login")).text)
    assert found is not None  # noqa: S101
    body = {"username": name, "password": PASSWORD, "csrf_token": found.group(1)}
    await client.post("/login", data=body)
    found = CSRF.search((await client.get("/login/code")).text)
    assert found is not None  # noqa: S101
    code = pyotp.TOTP(secret).generate_otp(int(env.clock.now.timestamp()) // 30)
    done = await client.post("/login/code", data={"code": code, "csrf_token": found.group(1)})
    if done.status_code != 303:
        raise RuntimeError(f"login of {name} failed: {done.status_code}")


async def _time(client: httpx.AsyncClient, path: str, repeat: int) -> tuple[list[float], str]:
    samples, text = [], ""
    for _ in range(repeat):
        start = time.perf_counter()
        answer = await client.get(path)
        samples.append((time.perf_counter() - start) * 1000)
        if answer.status_code != 200:
            raise RuntimeError(f"{path}: {answer.status_code}")
        text = answer.text
    return samples, text


def _figures(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(ordered), 1),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 1),
    }


async def measure(rows: int, repeat: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="conduit-bench-table-") as work:
        env = await build_env(f"sqlite+aiosqlite:///{work}/conduit.db", Path(work) / "data")
        try:
            totp = await _setup(env, rows)
            transport = httpx.ASGITransport(app=create_app(env.services))
            out: dict[str, Any] = {"rows": rows, "repeat": repeat, "database": "sqlite"}
            for name in USERS:
                async with httpx.AsyncClient(
                    transport=transport, base_url="https://portal"
                ) as client:
                    await _login(client, env, name, totp[name])
                    table, text = await _time(client, "/live/table", repeat)
                    shown = text.count("<tr ")
                    whole, _ = await _time(client, "/live", repeat)
                    api, body = await _time(client, "/api/v1/sessions", repeat)
                    out[USERS[name]] = {
                        "rows_shown": shown,
                        "api_rows": len(json.loads(body)),
                        "table": _figures(table),
                        "page": _figures(whole),
                        "api_json": _figures(api),
                        "table_vs_api": round(statistics.median(table) / statistics.median(api), 2),
                    }
        finally:
            await env.services.close()
    worst = max(out[role]["table"]["median_ms"] for role in USERS.values())
    out["target_table_ms"] = 300
    out["target_met"] = worst < 300
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    rows = max(1, min(args.rows, 20000))
    repeat = max(3, min(args.repeat, 500))
    print(json.dumps(asyncio.run(measure(rows, repeat))))


if __name__ == "__main__":
    main()
