"""The admin dashboard (``/admin/dashboard``): the site at a glance, read-only.

Live sessions now and pending requests (counts linking to their pages), sessions per UTC day
over the last 30 days and per vendor organisation (``recorder.activity``: one GROUP BY
query), the newest refusals and security alerts of those 30 days (``audit.recent``), and the
recordings storage used against its quota, and the gateway nodes with their heartbeats
(``sessions.cluster``). The two series reach the page as a JSON block
that ``static/dashboard.js`` (an ES module) draws with uPlot; every number is also in the
page as text and tables, for screen readers and for browsers without script. Only people
with ``SiteAction.ADMINISTER_SITE`` see it; everyone else gets "not found", audited
(``admin_common.admin_page``). Changes nothing, and does not decide access.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from gateway.audit.recent import recent_alerts, recent_refusals
from gateway.recorder.activity import DAYS, Activity, session_activity, window
from gateway.recorder.quota import QuotaStatus, quota_status
from gateway.services import Services
from gateway.sessions import cluster
from gateway.sessions import store as live_store
from gateway.web.admin_common import admin_page, admin_view
from gateway.web.audit_pages import EventRow, event_row
from gateway.web.auth import PortalContext, services_of
from gateway.web.layout import pending_count, sign_in_redirect

router = APIRouter(include_in_schema=False)
RECENT = 20
NO_ORG = "No organisation (staff)"
ALERT_TEXT = {
    "hostkey_mismatch": "Host key did not match its pin",
    "certificate_outside_register": "Certificate signed with our CA key, never issued here",
    "client_integrity_failure": "Client packet failed its integrity check",
}


@dataclass(frozen=True)
class AlertRow:
    kind: str
    text: str
    event: EventRow


def size_text(size: int) -> str:
    """Bytes for people: 1023 B, 1.5 KiB ... 2.0 TiB."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def chart_data(activity: Activity) -> dict[str, Any]:
    """What ``dashboard.js`` draws: labels and counts, nothing else."""
    return {
        "days": [d.isoformat() for d in activity.days],
        "per_day": list(activity.per_day),
        "orgs": [org or NO_ORG for org, _ in activity.per_org],
        "per_org": [n for _, n in activity.per_org],
    }


def storage(status: QuotaStatus) -> dict[str, Any]:
    return {
        "used": status.used_bytes,
        "used_text": size_text(status.used_bytes),
        "quota": status.quota_bytes,
        "quota_text": size_text(status.quota_bytes) if status.quota_bytes else "",
        "percent": round(100 * status.fraction),
        "warning": status.warning,
        "exceeded": status.exceeded,
    }


async def _counts(request: Request, context: PortalContext, services: Services) -> dict[str, int]:
    async with services.sessions() as db:
        live = await live_store.count(db)
    return {"live": live, "pending": await pending_count(request, context)}


async def dashboard_values(
    request: Request, context: PortalContext, services: Services
) -> dict[str, Any]:
    now = services.clock()
    since, _ = window(now, DAYS)
    async with services.sessions() as db:
        activity = await session_activity(db, now, DAYS)
    refusals = await recent_refusals(services.sessions, since, RECENT)
    alerts = await recent_alerts(services.sessions, since, RECENT)
    status = await quota_status(services.sessions, services.settings.recordings.quota_bytes)
    return {
        "section": "dashboard",
        "counts": await _counts(request, context, services),
        "days": DAYS,
        "limit": RECENT,
        "since": since.date().isoformat(),
        "activity": activity,
        "per_day_rows": list(zip(activity.days, activity.per_day, strict=True)),
        "org_rows": [(org or NO_ORG, n) for org, n in activity.per_org],
        "chart": chart_data(activity),
        "refusals": [event_row(e, now) for e in refusals],
        "alerts": [AlertRow(a.kind, ALERT_TEXT[a.kind], event_row(a.event, now)) for a in alerts],
        "storage": storage(status),
        "nodes": await cluster.members(services),
        "now": now.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


@router.get("/admin/dashboard", response_class=HTMLResponse)
async def dashboard(request: Request) -> Response:
    context = await admin_page(request)
    if context is None:
        return sign_in_redirect(request)
    services = services_of(request)
    values = await dashboard_values(request, context, services)
    return await admin_view(request, context, "admin/dashboard.html", values)
