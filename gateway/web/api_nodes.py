"""JSON API: the gateway nodes sharing this database (``GET /api/v1/nodes``), read-only.

Site admins only (``SiteAction.ADMINISTER_SITE``; anyone else 403, audited). Each row is one
serving process: node name, worker, pid, version, heartbeat age on the database's clock,
alive or dead by ``cluster.dead_after_seconds``, and its live sessions; the same rows as
``conduit nodes list`` and the admin dashboard. Changes nothing and decides nothing.
"""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Request

from gateway.sessions import cluster
from gateway.web.api_access import Admin, AuditedRoute, Out
from gateway.web.api_admin import require_site_admin
from gateway.web.auth import services_of

router = APIRouter(prefix="/api/v1", tags=["nodes"], route_class=AuditedRoute)


class NodeOut(Out):
    node: str
    worker: int
    pid: int
    version: str
    started_at: dt.datetime
    heartbeat_at: dt.datetime
    heartbeat_age_seconds: float
    alive: bool
    live_sessions: int

    @classmethod
    def of(cls, m: cluster.Member) -> NodeOut:
        return cls(
            node=m.name, worker=m.worker, pid=m.pid, version=m.version,
            started_at=m.started_at, heartbeat_at=m.heartbeat_at,
            heartbeat_age_seconds=round(m.age, 1), alive=m.alive, live_sessions=m.live_sessions,
        )  # fmt: skip


@router.get("/nodes", response_model=list[NodeOut])
async def list_nodes(request: Request, caller: Admin) -> list[NodeOut]:
    """Every node and worker with its heartbeat age and live sessions, by name."""
    require_site_admin(caller)
    return [NodeOut.of(m) for m in await cluster.members(services_of(request))]
