"""Admin page for security alerts (``/admin/alerts``): every kind that
``conduit_security_alerts_total`` counts, and the newest alerts with time, kind and detail.

Alerts are read back from the audit events written beside each one
(``gateway.audit.alerts``): the counter itself lives only in the process that raised it.
Read-only. Does not raise alerts and does not decide access.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from gateway.audit.alerts import ALERT_KINDS, Alert, recent_alerts
from gateway.web.admin_common import admin_page, admin_view
from gateway.web.auth import services_of
from gateway.web.layout import sign_in_redirect
from gateway.web.portal_forms import shown_instant

router = APIRouter(include_in_schema=False)

SHOWN = 200  # the newest alerts; the audit viewer and its exports have every one
DETAIL_MAX = 400


def _row(alert: Alert, now: Any) -> dict[str, Any]:
    text = json.dumps(alert.detail, ensure_ascii=False, sort_keys=True)
    event = alert.event
    return {
        "kind": alert.kind, "at": shown_instant(event.time, now), "actor": event.actor,
        "target": event.target, "source": event.source, "event_id": event.id,
        "detail": text if len(text) <= DETAIL_MAX else text[: DETAIL_MAX - 1] + "…",
    }  # fmt: skip


@router.get("/admin/alerts", response_class=HTMLResponse)
async def alerts(request: Request) -> Response:
    context = await admin_page(request)
    if context is None:
        return sign_in_redirect(request)
    services = services_of(request)
    now = services.clock()
    found = await recent_alerts(services.sessions, SHOWN)
    counts = {s.kind: 0 for s in ALERT_KINDS}
    for alert in found:
        counts[alert.kind] += 1
    values = {
        "kinds": [(s, counts[s.kind]) for s in ALERT_KINDS],
        "alerts": [_row(a, now) for a in found],
        "shown_max": SHOWN,
    }
    return await admin_view(request, context, "admin/alerts.html", values)
