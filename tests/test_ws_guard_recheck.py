"""An open portal socket's recheck of its portal session when the check itself fails.

A database that is unreachable is asked again, but only within the outage grace; any other
error (here: a persistent one, the sessions table gone) ends the socket at once, audited:
sign-out and a disabled user must not be outlived by a broken check. Real databases
(PostgreSQL, directly and through a cut-able path) and a real Starlette ``WebSocket`` over a
scope; the socket's wire is not needed (the recheck only reads its cookie and address).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy import select, text
from starlette.types import Message
from starlette.websockets import WebSocket

from gateway.audit.tables import AuditEventRow
from gateway.config import Overrides, load_settings
from gateway.db import migrate
from gateway.identity import portal_sessions
from gateway.identity.accounts import create_user
from gateway.keys import init_key_material, load_keyring
from gateway.services import Services
from gateway.web import ws_guard
from gateway.web.auth import SESSION_COOKIE, PortalContext, current_session
from tests.db_path import DatabasePath

RECHECK = 0.05


def build(url: str, data_dir: Path, *, serving: bool) -> Services:
    data_dir.mkdir(parents=True, exist_ok=True)
    environ = {"CONDUIT_DATABASE__URL": url, "CONDUIT_DATABASE__OUTAGE_GRACE_SECONDS": "1"}
    settings = load_settings(None, Overrides(data_dir=data_dir), environ=environ)
    init_key_material(settings)
    return Services.build(settings, load_keyring(settings, environ={}), serving=serving)


async def _nothing() -> Message:
    raise AssertionError("the recheck reads nothing from the socket")


async def _nowhere(message: Message) -> None:
    raise AssertionError("the recheck sends nothing on the socket")


async def signed_in_socket(services: Services) -> tuple[WebSocket, PortalContext]:
    await migrate.upgrade(services.engine)
    async with services.sessions() as db, db.begin():
        now = services.clock()
        user = await create_user(
            db, username="alice", roles=["vendor"], now=now,
            master_key=services.keys.master_key, status="active",
        )  # fmt: skip
        await db.flush()
        raw = await portal_sessions.create(db, user.id, now, now, "127.0.0.1", "test")
    app = FastAPI()
    app.state.services = services
    scope = {
        "type": "websocket", "path": "/ws/terminal", "root_path": "", "query_string": b"",
        "scheme": "wss", "server": ("127.0.0.1", 443), "client": ("127.0.0.1", 50000),
        "headers": [(b"host", b"127.0.0.1"), (b"cookie", f"{SESSION_COOKIE}={raw}".encode())],
        "app": app,
    }  # fmt: skip
    ws = WebSocket(scope, _nothing, _nowhere)
    context = await current_session(ws)
    assert context is not None
    return ws, context


def _never_typed() -> bool:
    return False


async def ended(ws: WebSocket, context: PortalContext, used: Callable[[], bool]) -> None:
    # Bounded so that a recheck that never ends fails the test instead of hanging it.
    await asyncio.wait_for(ws_guard.until_signed_out(ws, context, used, "terminal t"), 30)


@pytest.fixture(autouse=True)
def quick_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ws_guard, "RECHECK_SECONDS", RECHECK)


@pytest.fixture
async def pg_services(pg_database: str, tmp_path: Path) -> AsyncIterator[Services]:
    services = build(pg_database, tmp_path / "data", serving=True)
    try:
        yield services
    finally:
        await services.close()


@pytest.mark.postgres
async def test_a_check_that_keeps_failing_not_for_an_outage_ends_the_socket(
    pg_services: Services,
) -> None:
    services = pg_services
    ws, context = await signed_in_socket(services)
    table = portal_sessions.PortalSession.__tablename__
    async with services.sessions() as db, db.begin():
        await db.execute(text(f"ALTER TABLE {table} RENAME TO {table}_gone"))
    await ended(ws, context, _never_typed)
    async with services.sessions() as db:
        [row] = await db.scalars(
            select(AuditEventRow).where(AuditEventRow.action == "portal.refused")
        )
    assert row.actor == "alice" and row.result == "error"
    assert services.db_health.up  # not taken for an outage
    assert "portal session check failed" in json.loads(row.detail)["reason"]


@pytest.mark.postgres
async def test_an_unreachable_database_is_asked_again_only_within_the_grace(
    pg_database: str, tmp_path: Path
) -> None:
    path = DatabasePath()
    services = build(path.url(pg_database), tmp_path / "data", serving=True)
    try:
        ws, context = await signed_in_socket(services)
        asked: list[bool] = []

        def used() -> bool:
            asked.append(services.db_health.up)
            return False

        path.cut()
        await ended(ws, context, used)
        # It went on asking through the outage, and stopped once the grace was spent.
        assert len(asked) > 2 and not any(asked[1:])
        assert services.db_health.down_for() >= services.db_health.grace_seconds
    finally:
        await services.close()
        path.close()
