"""Cluster membership across a database outage, on real PostgreSQL through cut-able paths.

Two serving ``Services`` (each watching its own database health, as ``conduit serve`` does)
stand for two nodes; each reaches PostgreSQL through its own ``DatabasePath``. When every
node lost the database for longer than the dead limit, nobody could heartbeat: the first to
get it back must not reap the others (decision 0023). A node cut off alone, while another
kept the database, is still reaped by that one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config import Overrides, load_settings
from gateway.db import migrate
from gateway.keys import init_key_material, load_keyring
from gateway.services import Services
from gateway.sessions import cluster
from gateway.sessions import store as live_store
from tests.db_path import DatabasePath
from tests.test_cluster import add_session

pytestmark = pytest.mark.postgres
DEAD_AFTER = 1.0
HEARTBEAT = 0.2


def serving(url: str, data_dir: Path, node: str) -> Services:
    data_dir.mkdir(parents=True, exist_ok=True)
    environ = {
        "CONDUIT_DATABASE__URL": url,
        "CONDUIT_SERVER__NODE_NAME": node,
        "CONDUIT_CLUSTER__DEAD_AFTER_SECONDS": str(DEAD_AFTER),
        "CONDUIT_CLUSTER__HEARTBEAT_SECONDS": str(HEARTBEAT),
    }
    settings = load_settings(None, Overrides(data_dir=data_dir), environ=environ)
    init_key_material(settings)
    return Services.build(settings, load_keyring(settings, environ={}), serving=True)


@pytest.fixture
async def nodes(
    pg_database: str, tmp_path: Path
) -> AsyncIterator[tuple[Services, DatabasePath, Services, DatabasePath]]:
    path_a, path_b = DatabasePath(), DatabasePath()
    a = serving(path_a.url(pg_database), tmp_path / "data", "node-a")
    await migrate.upgrade(a.engine)
    b = serving(path_b.url(pg_database), tmp_path / "data", "node-b")
    try:
        yield a, path_a, b, path_b
    finally:
        await a.close()
        await b.close()
        path_a.close()
        path_b.close()


async def outage(services: Services) -> None:
    """The node notices its database is away (its watch's probe, run here by hand)."""
    assert not await services.db_health.probe()


async def reachable_for_a_dead_limit(services: Services) -> None:
    await asyncio.sleep(max(0.0, DEAD_AFTER + HEARTBEAT - services.db_health.up_for()))


async def test_after_an_outage_everyone_had_nobody_reaps_anybody(
    nodes: tuple[Services, DatabasePath, Services, DatabasePath],
) -> None:
    a, path_a, b, path_b = nodes
    await cluster.join(a)
    await cluster.join(b)
    await reachable_for_a_dead_limit(a)
    session = await add_session(b, "alice", "node-b")

    path_a.cut()
    path_b.cut()
    await outage(a)
    await outage(b)
    await asyncio.sleep(DEAD_AFTER * 1.5)  # longer than the dead limit: no heartbeats
    path_a.restore()
    path_b.restore()
    assert await a.db_health.probe()

    # a is back first: b's heartbeat is older than the dead limit, but a must not reap it.
    assert await cluster.reap_dead(a) == []
    assert await b.db_health.probe()
    assert await cluster.heartbeat(b)  # b is still a member: nothing to end
    await reachable_for_a_dead_limit(a)
    assert await cluster.heartbeat(b)
    assert await cluster.reap_dead(a) == []
    async with a.sessions() as db:
        assert await live_store.get(db, session) is not None


async def test_a_node_cut_off_alone_is_still_reaped(
    nodes: tuple[Services, DatabasePath, Services, DatabasePath],
) -> None:
    a, _, b, path_b = nodes
    await cluster.join(a)
    await cluster.join(b)
    session = await add_session(b, "alice", "node-b")

    path_b.cut()
    await outage(b)
    await asyncio.sleep(DEAD_AFTER * 1.5)
    await reachable_for_a_dead_limit(a)  # a kept the database all along
    assert await cluster.reap_dead(a) == [("node-b", 0, 1)]
    async with a.sessions() as db:
        assert await live_store.get(db, session) is None

    # b comes back and learns it was judged dead (its sessions were ended already).
    path_b.restore()
    assert await b.db_health.probe()
    assert not await cluster.heartbeat(b)
