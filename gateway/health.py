"""Readiness checks: database reachable and migrated, keys loaded, recordings writable.

Each check returns ok or a short reason for the log; ``/readyz`` shows only the names of
failing checks, never the reasons (they can carry paths or driver messages).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text

from gateway.db.migrate import head_revision
from gateway.keys import keyring_files_present
from gateway.services import Services

log = logging.getLogger(__name__)
CHECK_TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    reason: str = ""


async def check_database(services: Services) -> CheckResult:
    if not services.db_health.up:  # the outage watch saw it go: no need to wait for a timeout
        away = services.db_health.down_for()
        return CheckResult("database", False, f"unreachable for {away:.0f} s")
    url = services.settings.database_url
    if url.startswith("sqlite"):
        # A pooled SQLite connection keeps working on a deleted file; look at the path too.
        path = url.split(":///", 1)[1]
        if not await asyncio.to_thread(os.path.isfile, path):
            return CheckResult("database", False, f"database file {path} is gone")
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS), services.engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    except Exception as exc:  # any driver failure means "not ready", whatever its class
        services.db_health.failed(exc)  # and an outage is one for every path, at once
        return CheckResult("database", False, f"{type(exc).__name__}: {exc}")
    if version != head_revision():
        return CheckResult("database", False, f"schema at {version}, expected {head_revision()}")
    return CheckResult("database", True)


def check_keys(services: Services) -> CheckResult:
    if keyring_files_present(services.keys, services.settings):
        return CheckResult("keys", True)
    return CheckResult("keys", False, "a key file is missing or no longer private")


def _probe_writable(directory: Path) -> None:
    probe = directory / f".ready-{secrets.token_hex(6)}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"ok")
        os.fsync(fd)
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


async def check_recordings(services: Services) -> CheckResult:
    directory = services.settings.recordings_dir
    try:
        await asyncio.to_thread(_probe_writable, directory)
    except OSError as exc:
        return CheckResult("recordings", False, f"{directory}: {exc.strerror}")
    return CheckResult("recordings", True)


async def readiness(services: Services) -> list[CheckResult]:
    results = [
        await check_database(services),
        check_keys(services),
        await check_recordings(services),
    ]
    for result in results:
        services.metrics.ready.labels(result.name).set(1 if result.ok else 0)
        if not result.ok:
            log.warning("readiness check %s failed: %s", result.name, result.reason)
    return results
