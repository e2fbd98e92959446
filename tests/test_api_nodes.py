"""The nodes view: ``GET /api/v1/nodes`` and the admin dashboard's card, in process, on
SQLite and PostgreSQL (rows as ``conduit serve`` writes them through ``sessions.cluster``)."""

from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import select

from gateway.audit.tables import AuditEventRow
from gateway.sessions import cluster
from tests.test_api_access import Api, api
from tests.test_api_sessions import add_session
from tests.test_identity_helpers import env

__all__ = ["api", "env"]
ODD_NAME = "<b>n2</b>"  # a node name is configuration, and still only ever shown escaped


async def two_nodes(api: Api) -> None:
    """This node ("node-a" is what add_session uses) and a second one gone quiet an hour ago."""
    services = api.env.services
    async with services.sessions() as db, db.begin():
        now = await cluster.database_now(db, services.clock)
        db.add(cluster.NodeRow(name="node-a", worker=0, pid=101, version="0.1.0",
                               started_at=now, heartbeat_at=now))  # fmt: skip
        hour_ago = now - dt.timedelta(hours=1)
        db.add(cluster.NodeRow(name=ODD_NAME, worker=1, pid=202, version="0.0.9",
                               started_at=hour_ago, heartbeat_at=hour_ago))  # fmt: skip


async def test_admins_list_nodes_with_heartbeat_age_and_sessions(api: Api) -> None:
    await two_nodes(api)
    await add_session(api, "alice", "plc-1")
    root = await api.login("root")
    answer = await root.client.get("/api/v1/nodes")
    assert answer.status_code == 200, answer.text
    rows = {r["node"]: r for r in answer.json()}
    assert set(rows) == {"node-a", ODD_NAME}
    assert rows["node-a"]["live_sessions"] == 1 and rows["node-a"]["alive"] is True
    assert rows["node-a"]["heartbeat_age_seconds"] < 60
    odd = rows[ODD_NAME]
    assert (odd["worker"], odd["pid"], odd["version"]) == (1, 202, "0.0.9")
    assert odd["alive"] is False and odd["heartbeat_age_seconds"] >= 3600
    assert odd["live_sessions"] == 0


async def test_only_site_admins_see_nodes_and_refusals_are_audited(api: Api) -> None:
    await two_nodes(api)
    alice = await api.login("alice")
    assert (await alice.client.get("/api/v1/nodes")).status_code == 403
    async with api.env.services.sessions() as db:
        refused = await db.scalars(
            select(AuditEventRow).where(AuditEventRow.action == "api.refused")
        )
        reasons = [json.loads(r.detail).get("reason", "") for r in refused]
    assert "caller is not a site admin" in reasons


async def test_dashboard_card_lists_nodes_escaped(api: Api) -> None:
    await two_nodes(api)
    root = await api.login("root")
    page = await root.client.get("/admin/dashboard")
    assert page.status_code == 200
    assert "<b>n2</b>" not in page.text
    assert "<td>&lt;b&gt;n2&lt;/b&gt;</td>" in page.text
    assert '<strong class="error">not answering</strong>' in page.text
    assert "<td>node-a</td>" in page.text
