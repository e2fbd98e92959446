"""Benchmark audit appends against plain INSERTs run alongside, on SQLite and PostgreSQL.

What one append costs over the same row inserted without a chain: the head lock
(``BEGIN IMMEDIATE`` / ``pg_advisory_xact_lock``), reading the previous hash, SHA-256 over
the canonical encoding. Both sides commit one transaction per row through the same engine
and session factory, measured in alternating slices, first from one task, then from
``--tasks`` concurrent tasks (where the chain serialises appends and plain INSERTs do not).
Verification speed is measured on the chain written. Each measurement is time-boxed
(``--seconds``), so a run takes a few seconds.

PostgreSQL runs in a throwaway database on 127.0.0.1:5432 (dropped afterwards) and is
reported as null when that server is not there. The last printed line is one JSON object.

Run from the repository root: ``python -m bench.audit_append [--seconds 0.75] [--tasks 8]``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from gateway.audit import AuditLog
from gateway.config import Overrides, load_settings
from gateway.db import migrate
from gateway.db.engine import make_engine, make_sessionmaker

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
PLAIN_TABLE = """
CREATE TABLE bench_plain (
    id {pk}, time TIMESTAMP WITH TIME ZONE NOT NULL, actor VARCHAR(200) NOT NULL,
    source VARCHAR(100) NOT NULL, action VARCHAR(64) NOT NULL, target VARCHAR(500) NOT NULL,
    result VARCHAR(16) NOT NULL, detail TEXT NOT NULL
)
"""
PLAIN_INSERT = text(
    "INSERT INTO bench_plain (time, actor, source, action, target, result, detail) "
    "VALUES (:time, :actor, :source, :action, :target, :result, :detail)"
)
DETAIL = {"asset_id": 42, "protocol": "ssh", "grant_id": 7}
ROUNDS = 5


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def count_until(op: Callable[[], Awaitable[object]], seconds: float, tasks: int) -> int:
    """How many operations ``tasks`` concurrent loops complete in ``seconds``."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await op()
            done += 1

    async with asyncio.TaskGroup() as group:
        for _ in range(tasks):
            group.create_task(loop())
    return done


async def paired_rates(
    plain: Callable[[], Awaitable[object]],
    audit: Callable[[], Awaitable[object]],
    seconds: float,
    tasks: int,
) -> tuple[float, float]:
    """Operations per second of each, measured in alternating slices.

    Alternating cancels most of the drift a shared machine adds (other processes' I/O),
    which a plain-then-audit pair would book against one side.
    """
    for _ in range(10):  # warm the pool and statement caches
        await plain()
        await audit()
    totals = [0, 0]
    elapsed = [0.0, 0.0]
    for _ in range(ROUNDS):
        for side, op in enumerate((plain, audit)):
            start = time.perf_counter()
            totals[side] += await count_until(op, seconds / ROUNDS, tasks)
            elapsed[side] += time.perf_counter() - start
    return totals[0] / elapsed[0], totals[1] / elapsed[1]


async def measure(engine: AsyncEngine, seconds: float, tasks: int) -> dict[str, float]:
    await migrate.upgrade(engine)
    pk = "INTEGER PRIMARY KEY" if engine.dialect.name == "sqlite" else "BIGSERIAL PRIMARY KEY"
    async with engine.begin() as conn:
        await conn.execute(text(PLAIN_TABLE.format(pk=pk)))
    sessions: async_sessionmaker[Any] = make_sessionmaker(engine)
    audit = AuditLog(sessions, Ed25519PrivateKey.generate(), utc_now)
    row = {"actor": "alice", "source": "192.0.2.10", "action": "session.start",
           "target": "plc-eng-01", "result": "success"}  # fmt: skip

    async def append() -> None:
        await audit.record(**row, detail=DETAIL)

    async def plain() -> None:
        async with sessions() as db, db.begin():
            await db.execute(PLAIN_INSERT, {**row, "time": utc_now(), "detail": json.dumps(DETAIL)})

    figures: dict[str, float] = {}
    figures["plain_per_s"], figures["audit_per_s"] = await paired_rates(plain, append, seconds, 1)
    (
        figures["plain_concurrent_per_s"],
        figures["audit_concurrent_per_s"],
    ) = await paired_rates(plain, append, seconds, tasks)
    start = time.perf_counter()
    result = await audit.verify()
    assert result.ok, result.problems
    figures["verify_events_per_s"] = result.checked / (time.perf_counter() - start)
    figures["events"] = result.checked
    figures["ratio"] = figures["audit_per_s"] / figures["plain_per_s"]
    figures["concurrent_ratio"] = (
        figures["audit_concurrent_per_s"] / figures["plain_concurrent_per_s"]
    )
    return {k: round(v, 3) for k, v in figures.items()}


def engine_for(url: str, data_dir: Path) -> AsyncEngine:
    settings = load_settings(
        None, Overrides(data_dir=data_dir), environ={"CONDUIT_DATABASE__URL": url}
    )
    return make_engine(settings)


async def bench_sqlite(seconds: float, tasks: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="conduit-bench-") as tmp:
        engine = engine_for(f"sqlite+aiosqlite:///{tmp}/bench.db", Path(tmp))
        try:
            return await measure(engine, seconds, tasks)
        finally:
            await engine.dispose()


async def bench_postgresql(seconds: float, tasks: int) -> dict[str, float] | None:
    import asyncpg

    name = f"conduit_bench_{secrets.token_hex(4)}"
    try:
        admin = await asyncpg.connect(PG_ADMIN, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        print(f"postgresql: skipped ({type(exc).__name__}: {exc})")
        return None
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        with tempfile.TemporaryDirectory(prefix="conduit-bench-") as tmp:
            url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
            engine = engine_for(url, Path(tmp))
            try:
                return await measure(engine, seconds, tasks)
            finally:
                await engine.dispose()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def main(seconds: float, tasks: int) -> dict[str, Any]:
    report: dict[str, Any] = {"seconds_per_measurement": seconds, "tasks": tasks}
    report["sqlite"] = await bench_sqlite(seconds, tasks)
    print(f"sqlite: {report['sqlite']}")
    report["postgresql"] = await bench_postgresql(seconds, tasks)
    if report["postgresql"] is not None:
        print(f"postgresql: {report['postgresql']}")
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.75, help="per measurement")
    parser.add_argument("--tasks", type=int, default=8, help="concurrent tasks")
    options = parser.parse_args()
    print(json.dumps(asyncio.run(main(options.seconds, options.tasks))))
