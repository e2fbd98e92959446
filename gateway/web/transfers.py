"""File transfers for auditors and admins: ``GET /evidence/transfers``.

Every file moved by SFTP or SCP through the gateway, from the audit events the SFTP bridge
writes when a file is closed (``sftp.write``: to the asset, ``sftp.read``: from it; see
``gateway.ssh.files``): user, asset, path, size, SHA-256 (none when the bytes did not move
in order), time, result and the session. Filter by user, asset and time (UTC); newest
first, 50 a page (keyset by event id). Auditors and admins only (``READ_EVIDENCE``), else
404, audited. Reads only.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from gateway.audit import AuditEvent
from gateway.audit import query as audit_query
from gateway.web.audit_pages import PAGE_SIZE, exact_instant, link, parse_query
from gateway.web.auth import services_of
from gateway.web.layout import page, sign_in_redirect
from gateway.web.portal_forms import signed_in
from rbac.roles import SiteAction

router = APIRouter(include_in_schema=False)
DIRECTIONS = {"sftp.write": "to asset", "sftp.read": "from asset"}


@dataclass(frozen=True)
class Transfer:
    id: int
    time: dict[str, str]
    user: str
    asset: str
    direction: str
    path: str
    size: str
    sha256: str
    result: str
    error: str
    session_id: str


def _text(detail: dict[str, Any], key: str) -> str:
    value = detail.get(key)
    return value if isinstance(value, str) else ""


def transfer_of(event: AuditEvent, now: dt.datetime) -> Transfer:
    """One row; an odd detail (a tampered row) shows what is readable, never breaks the page."""
    detail = event.detail_object()
    size = detail.get("size")
    return Transfer(
        id=event.id, time=exact_instant(event.time), user=event.actor, asset=event.target,
        direction=DIRECTIONS.get(event.action, event.action), path=_text(detail, "path"),
        size=f"{size:,}" if isinstance(size, int) else "", sha256=_text(detail, "sha256"),
        result=event.result, error=_text(detail, "error"),
        session_id=_text(detail, "session_id"),
    )  # fmt: skip


def only_transfers(f: audit_query.AuditFilter) -> audit_query.AuditFilter:
    """The file transfers among the events ``f`` (user, asset, time) selects."""
    return audit_query.AuditFilter(
        actor=f.actor, target=f.target, since=f.since, until=f.until, actions=tuple(DIRECTIONS)
    )


@router.get("/evidence/transfers", response_class=HTMLResponse)
async def transfers_page(request: Request) -> Response:
    context = await signed_in(request, SiteAction.READ_EVIDENCE)
    if context is None:
        return sign_in_redirect(request)
    params = dict(request.query_params)
    wanted = {"actor": params.get("user", ""), "target": params.get("asset", ""),
              **{k: params.get(k, "") for k in ("since", "until", "before")}}  # fmt: skip
    q = parse_query(wanted)
    rows: list[Transfer] = []
    older = ""
    services = services_of(request)
    if q.filter is not None:
        only = only_transfers(q.filter)
        events = await audit_query.page(services.sessions, only, before=q.before,
                                        limit=PAGE_SIZE + 1)  # fmt: skip
        now = services.clock()
        rows = [transfer_of(e, now) for e in events[:PAGE_SIZE]]
        if len(events) > PAGE_SIZE:
            older = link(_shown(q.raw), before=str(rows[-1].id))
    shown = _shown(q.raw)
    values = {"q": shown, "errors": q.errors, "rows": rows, "older": older,
              "newest": link({**shown, "before": ""}) if q.before else None}  # fmt: skip
    return await page(request, context, "transfers.html", values, current="evidence",
                      status_code=422 if q.errors else 200)  # fmt: skip


def _shown(raw: dict[str, str]) -> dict[str, str]:
    """The page's own field names for the filter values."""
    return {"user": raw["actor"], "asset": raw["target"], "since": raw["since"],
            "until": raw["until"], "before": raw["before"]}  # fmt: skip
