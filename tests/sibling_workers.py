"""Two ``Services`` on one database and one data directory, with one node name and worker
indexes 0 and 1: sibling worker processes of a node (``conduit serve --workers N``) in one
test process. The real multi-process tests are in test_workers.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from gateway.config import Overrides, load_settings
from gateway.db import migrate
from gateway.keys import init_key_material, load_keyring
from gateway.services import Services


def worker_services(database_url: str, data_dir: Path, worker: int) -> Services:
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = load_settings(
        None,
        Overrides(data_dir=data_dir),
        environ={"CONDUIT_DATABASE__URL": database_url, "CONDUIT_SERVER__NODE_NAME": "node-a"},
    )
    init_key_material(settings)
    return Services.build(settings, load_keyring(settings, environ={}), worker=worker)


@asynccontextmanager
async def sibling_workers(
    database_url: str, data_dir: Path
) -> AsyncIterator[tuple[Services, Services]]:
    """Workers 0 and 1 of node ``node-a``, the database migrated."""
    first = worker_services(database_url, data_dir, 0)
    await migrate.upgrade(first.engine)
    second = worker_services(database_url, data_dir, 1)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()
