"""Shared fixtures: real processes, real databases, and the CI rule that skips fail.

PostgreSQL tests use the server at 127.0.0.1:5432 (trust auth, database ``test``): each test
session creates its own throwaway database there and drops it at the end. Outside CI they
skip with a reason when no server answers; with ``CI=true`` any skip fails the run.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sshd_target import SSHDTarget, missing_reason, start_sshd
from tests.support import PG_ADMIN_DSN, pg_available

IN_CI = os.environ.get("CI", "").lower() == "true"
_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if IN_CI and _skipped:
        print(f"\nCI=true: {len(_skipped)} skipped test(s) count as failures:")
        for nodeid in _skipped:
            print(f"  {nodeid}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHDTarget]:
    """A real OpenSSH sshd on 127.0.0.1 as the asset behind the gateway (one per module)."""
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    target = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield target
    finally:
        target.stop()


@pytest.fixture
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(scope="session")
def pg_server() -> str:
    reason = pg_available()
    if reason:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 not usable: {reason}")
    return PG_ADMIN_DSN


async def _pg_exec(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
def pg_database(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; its SQLAlchemy URL."""
    name = f"conduit_test_{secrets.token_hex(6)}"
    asyncio.run(_pg_exec(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(_pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'data' / 'conduit.db'}"
    url: str = request.getfixturevalue("pg_database")
    return url
