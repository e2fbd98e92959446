"""Async engine creation for SQLite (WAL) and PostgreSQL; nothing else."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from gateway.config import Settings


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (readiness probes, the CLI) run beside the serving process; a busy
    # timeout turns brief writer contention into a wait instead of an error.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def statement_timeout_seconds(settings: Settings) -> float:
    """asyncpg's per-statement deadline: twelve connect timeouts (60 s by default)."""
    return 12.0 * settings.database.connect_timeout_seconds


def make_engine(settings: Settings) -> AsyncEngine:
    url = settings.database_url
    if url.startswith("sqlite"):
        engine = create_async_engine(url, pool_pre_ping=True, hide_parameters=True)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        url,
        pool_size=settings.database.pool_size,
        pool_pre_ping=True,
        # Bound values (code digests, hashes, tokens) never reach an error message or a log.
        hide_parameters=True,
        connect_args={
            "timeout": settings.database.connect_timeout_seconds,
            # A backstop for every statement: over a silent path (packets dropped, nothing
            # reset) a query would otherwise wait for TCP to give up, many minutes. Generous,
            # since it also bounds honest long queries (a verify's count, an advisory lock
            # wait); the audit append has its own, tighter deadline (gateway.audit.log).
            "command_timeout": statement_timeout_seconds(settings),
        },
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return async_sessionmaker(engine, expire_on_commit=False)
