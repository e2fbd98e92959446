"""Refusals of the owner's watch socket (``/ws/watch-owner/{id}``) cannot be amplified into
audit writes: a real portal (``create_app`` under uvicorn, in this process, SQLite) and a
real websocket client. Per source, a burst is audited one by one and the rest summarised
(gateway.web.refusal_budget); while the database is away the outage's cap applies too.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import select
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway.audit.tables import AuditEventRow
from gateway.config import Overrides, load_settings
from gateway.db import migrate
from gateway.db.health import DatabaseHealth
from gateway.keys import init_key_material, load_keyring
from gateway.services import Services
from gateway.web import refusal_budget
from gateway.web.app import create_app

TRIES = 30


@dataclass
class Portal:
    services: Services
    base: str
    server: uvicorn.Server


@pytest.fixture
async def portal(tmp_path: Path) -> AsyncIterator[Portal]:
    data = tmp_path / "data"
    data.mkdir()
    environ = {"CONDUIT_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path}/conduit.db"}
    settings = load_settings(None, Overrides(data_dir=data), environ=environ)
    init_key_material(settings)
    services = Services.build(settings, load_keyring(settings, environ={}))
    await migrate.upgrade(services.engine)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # connections queue here until uvicorn accepts them
    port = listener.getsockname()[1]
    config = uvicorn.Config(create_app(services), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        yield Portal(services, f"ws://127.0.0.1:{port}", server)
    finally:
        server.should_exit = True
        await serving
        await services.close()
        listener.close()


async def refused(url: str) -> int:
    async with connect(url, open_timeout=10) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def refusals(services: Services) -> list[AuditEventRow]:
    async with services.sessions() as db:
        rows = await db.scalars(
            select(AuditEventRow)
            .where(AuditEventRow.action == "portal.refused")
            .order_by(AuditEventRow.id)
        )
        return list(rows)


@pytest.mark.parametrize(
    "path", ["/ws/watch-owner/not-a-session-id!", "/ws/watch-owner/" + "a" * 24]
)
async def test_a_flood_of_refusals_is_audited_up_to_a_burst_then_summarised(
    portal: Portal, path: str
) -> None:
    """A malformed id (refused before any database access) and a well-formed one without a
    grant (refused after one) alike."""
    for _ in range(TRIES):
        assert await refused(portal.base + path) == 4404
    one_by_one = await refusals(portal.services)
    assert int(refusal_budget.BURST) <= len(one_by_one) < TRIES  # the bucket refills a little
    budget = portal.server.config.app.state.watch_owner_refusals
    await budget.flush()
    *_, summary = await refusals(portal.services)
    detail = json.loads(summary.detail)
    assert detail["count"] == TRIES - len(one_by_one)
    assert detail["sources"] == [{"source": "127.0.0.1", "count": detail["count"]}]
    unaudited = portal.services.metrics.registry.get_sample_value(
        "conduit_portal_refusals_unaudited_total", {"endpoint": "watch-owner"}
    )
    assert unaudited == detail["count"]


async def test_during_an_outage_refusals_count_against_the_outages_cap(
    portal: Portal, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A watched health, as ``conduit serve`` has on PostgreSQL, told the database is away.
    health = DatabaseHealth(portal.services.engine, grace_seconds=60)
    portal.services.db_health = health
    assert health.failed(OSError("the database went away"))
    try:
        monkeypatch.setattr(refusal_budget, "BURST", 1000.0)
        monkeypatch.setattr("gateway.db.health.REFUSALS_AUDITED_PER_OUTAGE", 3)
        for _ in range(5):
            assert await refused(portal.base + "/ws/watch-owner/" + "a" * 24) == 1013
    finally:
        assert await health.probe()  # SQLite answers: the outage is over
    assert len(await refusals(portal.services)) == 3
