"""The auditors' session history with many sessions in the catalog: server time, in process.

The portal app runs over ASGI (no network, no browser: server time only) on the database
given (SQLite in a temporary directory by default; pass a PostgreSQL URL for the issue's
figure) with ``--sessions`` catalog rows, as the recorder writes them, spread over 50 users
and 20 assets and a year. An auditor signed in asks, ``--repeat`` times each: the newest
page, a page deep in the middle (keyset cursor), and one user's newest page. Medians and
p95 in ms. Runs alone: ``python -m bench.evidence_history [--sessions 100000]
[--database-url postgresql+asyncpg://...]``; ``time_history_page`` is the function to call.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pyotp
from sqlalchemy import insert

from gateway.identity.accounts import create_user
from gateway.recorder.history import Cursor
from gateway.recorder.tables import RecordingRow
from gateway.web.app import create_app
from tests.test_identity_helpers import Env, build_env

PASSWORD = "Bench-History-Passphrase-8"  # noqa: S105 - a throwaway benchmark account
SECRET = pyotp.random_base32()
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
BATCH = 5000


async def _fill(env: Env, sessions: int) -> dt.datetime:
    now = env.clock.now
    step = dt.timedelta(days=365) / max(sessions, 1)
    async with env.services.sessions() as db, db.begin():
        for start in range(0, sessions, BATCH):
            rows = [
                dict(id=f"{i:032x}", kind="terminal", username=f"user{i % 50}",
                     asset=f"asset-{i % 20}", protocol="ssh", session_id=f"s{i}", node="n1",
                     data_key_id="k" * 32, state="closed", started_at=now - i * step,
                     ended_at=now - i * step + dt.timedelta(minutes=5), end_reason="closed",
                     size_bytes=1000, integrity="intact", integrity_detail="", indexed_lines=0)
                for i in range(start, min(start + BATCH, sessions))
            ]  # fmt: skip
            await db.execute(insert(RecordingRow), rows)
    return now - (sessions // 2) * step


async def _auditor(env: Env, client: httpx.AsyncClient) -> None:
    async with env.services.sessions() as db, db.begin():
        await create_user(
            db, username="audit", roles=["auditor"], now=env.clock.now,
            master_key=env.services.keys.master_key, password=PASSWORD, totp_secret=SECRET,
            status="active",
        )  # fmt: skip
    token = CSRF.search((await client.get("/login")).text)
    assert token is not None  # noqa: S101 - a benchmark's own precondition
    body = {"username": "audit", "password": PASSWORD, "csrf_token": token.group(1)}
    await client.post("/login", data=body)
    token = CSRF.search((await client.get("/login/code")).text)
    assert token is not None  # noqa: S101
    code = pyotp.TOTP(SECRET).generate_otp(int(env.clock.now.timestamp()) // 30)
    await client.post("/login/code", data={"code": code, "csrf_token": token.group(1)})


async def _timed(client: httpx.AsyncClient, url: str, repeat: int) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        answer = await client.get(url)
        times.append((time.perf_counter() - began) * 1000)
        assert answer.status_code == 200, answer.text[:300]  # noqa: S101
    times.sort()
    return {"median_ms": round(statistics.median(times), 2),
            "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2)}  # fmt: skip


async def time_history_page(
    sessions: int, *, repeat: int = 20, database_url: str | None = None
) -> dict[str, Any]:
    """Server time of ``/evidence`` with ``sessions`` rows: newest, middle and per-user page."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        url = database_url or f"sqlite+aiosqlite:///{data / 'conduit.db'}"
        env = await build_env(url, data)
        try:
            middle = await _fill(env, sessions)
            transport = httpx.ASGITransport(app=create_app(env.services))
            async with httpx.AsyncClient(transport=transport, base_url="https://bench") as client:
                await _auditor(env, client)
                cursor = Cursor(middle, "f" * 32).text()
                return {
                    "sessions": sessions,
                    "database": url.split(":", 1)[0],
                    "newest_page": await _timed(client, "/evidence", repeat),
                    "middle_page": await _timed(client, f"/evidence?after={cursor}", repeat),
                    "one_user": await _timed(client, "/evidence?user=user7", repeat),
                }
        finally:
            await env.services.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    figures = asyncio.run(
        time_history_page(args.sessions, repeat=args.repeat, database_url=args.database_url)
    )
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
