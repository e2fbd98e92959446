"""The audit log viewer for auditors and admins: ``/evidence/audit``, its exports and a chain check.

``GET /evidence/audit`` lists events newest first, 50 a page (keyset: ``before`` an id),
filtered by actor, action, target, result, a time range (UTC) and a session id (the history
page links ``?session_id=ID``). ``GET /evidence/audit/export`` streams the same filter's
events, oldest first, as JSON lines (``AuditEvent.as_json``, the CLI's export), RFC 5424
syslog (``format_syslog``, the CLI's) or CSV for spreadsheets, with formula-like cells
defused; the export is audited ``audit.export``. ``POST /evidence/audit/verify`` (CSRF) runs
the chain verification of ``conduit audit verify`` in a worker thread and keeps its result
for the page (per process); audited ``audit.verify``. Bad filter values get an inline
message and a 422, never a query. Auditors and admins only (``READ_EVIDENCE``): anyone else
gets 404, audited. Reads only: nothing here changes an event.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from gateway.audit import RESULTS, AuditEvent, format_syslog
from gateway.audit import query as audit_query
from gateway.recorder import catalog
from gateway.web.auth import services_of, source_of
from gateway.web.layout import page, sign_in_redirect
from gateway.web.portal_forms import require_capability, shown_instant, signed_in, signed_in_post
from rbac.errors import WindowError
from rbac.roles import SiteAction
from rbac.windows import check_instant

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50
EXPORT_MAX = 1_000_000  # events in one export; narrow the filter for more
MAX_EVENT_ID = 2**63 - 1
_ACTION = re.compile(r"[a-z][a-z0-9_.:-]{0,63}")
# The session filter scans detail text; with no time range it looks back this far.
SESSION_LOOKBACK = dt.timedelta(days=31)
SESSION_SLACK = dt.timedelta(minutes=10)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
CSV_COLUMNS = ("id", "time", "actor", "source", "action", "target", "result", "detail",
               "prev_hash", "hash")  # fmt: skip
COMMON_ACTIONS = ("recording.viewed", "session.watched", "session.start", "session.end",
                  "sftp.write", "sftp.read", "recording.download", "recording.verify",
                  "login.success", "login.failure", "portal.refused", "api.refused")  # fmt: skip
FORMATS = {"jsonl": ("application/x-ndjson", "jsonl"), "syslog": ("text/plain", "log"),
           "csv": ("text/csv", "csv")}  # fmt: skip


@dataclass
class Query:
    """The filter as typed (to refill the form) and as checked (to run)."""

    raw: dict[str, str]
    filter: audit_query.AuditFilter | None = None
    before: int | None = None
    errors: list[str] = field(default_factory=list)
    note: str = ""


FIELDS = {"actor": 200, "action": 64, "target": 500, "result": 16, "since": 40, "until": 40,
          "session_id": 64, "before": 20}  # fmt: skip


def _instant(text: str, what: str, errors: list[str]) -> dt.datetime | None:
    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
        return check_instant(when if when.tzinfo else when.replace(tzinfo=dt.UTC), what)
    except WindowError as exc:  # a ValueError too: caught first
        errors.append(str(exc))
    except ValueError:
        errors.append(f"{what}: expected a date and time like 2026-11-27T08:00 (UTC)")
    return None


def parse_query(params: dict[str, str]) -> Query:
    """Check every filter value; errors name the field and leave ``filter`` unset."""
    raw = {name: params.get(name, "").strip()[:limit] for name, limit in FIELDS.items()}
    q, errors = Query(raw), []
    if raw["action"] and not _ACTION.fullmatch(raw["action"]):
        errors.append("action: lower-case words joined by '.', like session.start")
    if raw["result"] and raw["result"] not in RESULTS:
        errors.append(f"result: one of {', '.join(RESULTS)}")
    since = _instant(raw["since"], "from", errors)
    until = _instant(raw["until"], "until", errors)
    if since and until and since >= until:
        errors.append("from must be before until")
    if raw["before"]:
        if not raw["before"].isdigit() or not 1 <= int(raw["before"]) <= MAX_EVENT_ID:
            errors.append("before: an event id")
        else:
            q.before = int(raw["before"])
    if raw["session_id"] and not audit_query.SESSION_ID.fullmatch(raw["session_id"]):
        errors.append("session: letters, digits, '-' or '_' only")
    q.errors = errors
    if not errors:
        q.filter = audit_query.AuditFilter(
            actor=raw["actor"], action=raw["action"], target=raw["target"],
            result=raw["result"], since=since, until=until, session_id=raw["session_id"],
        )  # fmt: skip
    return q


async def bound_session_scan(request: Request, q: Query) -> None:
    """Give a session filter a time range: its recording's span, else the last 31 days.

    Session ids live in the detail JSON, which no index covers; a range keeps the scan to
    the rows of that time (``time`` is indexed)."""
    f = q.filter
    if f is None or not f.session_id or (f.since and f.until):
        return
    services = services_of(request)
    since, until = services.clock() - SESSION_LOOKBACK, services.clock() + SESSION_SLACK
    span = await _session_span(request, f.session_id)
    if span is not None:
        since, until = span[0] - SESSION_SLACK, span[1] + SESSION_SLACK
    else:
        q.note = "No recording names this session: the last 31 days were searched."
    q.filter = audit_query.AuditFilter(
        actor=f.actor, action=f.action, target=f.target, result=f.result,
        since=f.since or since, until=f.until or until, session_id=f.session_id,
    )  # fmt: skip


async def _session_span(
    request: Request, session_id: str
) -> tuple[dt.datetime, dt.datetime] | None:
    services = services_of(request)
    async with services.sessions() as db:
        entry = await catalog.entry_of_session(db, session_id)
    if entry is None:
        return None
    return entry.started_at, entry.ended_at or services.clock()


@dataclass(frozen=True)
class EventRow:
    id: int
    time: dict[str, str]
    actor: str
    source: str
    action: str
    target: str
    result: str
    detail: str
    session_id: str


def exact_instant(instant: dt.datetime) -> dict[str, str]:
    """What ``_time.html`` renders, to the second: an audit trail needs the exact time."""
    at = instant.astimezone(dt.UTC)
    return {
        "iso": at.isoformat().replace("+00:00", "Z"),
        "utc": at.strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def event_row(event: AuditEvent, now: dt.datetime) -> EventRow:
    detail = event.detail_object()
    sid = detail.get("session_id")
    shown = event.detail if len(event.detail) <= 400 else event.detail[:399] + "\u2026"
    return EventRow(event.id, exact_instant(event.time), event.actor, event.source,
                    event.action, event.target, event.result, shown,
                    sid if isinstance(sid, str) else "")  # fmt: skip


def chain_state(request: Request) -> dict[str, Any] | None:
    """The last chain verification this process ran, for the page."""
    state: dict[str, Any] | None = getattr(request.app.state, "audit_chain", None)
    return state


def link(raw: dict[str, str], **changes: str) -> str:
    """This page's query string with ``changes`` (empty values dropped)."""
    from urllib.parse import urlencode

    merged = {**raw, **changes}
    return urlencode({k: v for k, v in merged.items() if v})


@router.get("/evidence/audit", response_class=HTMLResponse)
async def audit_page(request: Request) -> Response:
    context = await signed_in(request, SiteAction.READ_EVIDENCE)
    if context is None:
        return sign_in_redirect(request)
    services = services_of(request)
    q = parse_query(dict(request.query_params))
    await bound_session_scan(request, q)
    rows: list[EventRow] = []
    older = ""
    if q.filter is not None:
        events = await audit_query.page(
            services.sessions, q.filter, before=q.before, limit=PAGE_SIZE + 1
        )
        now = services.clock()
        rows = [event_row(e, now) for e in events[:PAGE_SIZE]]
        if len(events) > PAGE_SIZE:
            older = link(q.raw, before=str(rows[-1].id))
    base = {k: v for k, v in q.raw.items() if k != "before"}
    values = {
        "q": q.raw, "errors": q.errors, "note": q.note, "rows": rows, "older": older,
        "newest": link(base) if q.before else None, "exports": link(base),
        "results": RESULTS, "common_actions": COMMON_ACTIONS, "chain": chain_state(request),
    }  # fmt: skip
    return await page(request, context, "audit.html", values, current="evidence",
                      status_code=422 if q.errors else 200)  # fmt: skip


def csv_cell(value: object) -> str:
    """A spreadsheet cannot take this cell for a formula: a leading ' defuses = + - @ TAB CR."""
    text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def csv_line(event: AuditEvent) -> str:
    out = io.StringIO()
    values = event.as_json()
    values["detail"] = event.detail
    csv.writer(out).writerow([csv_cell(values[c]) for c in CSV_COLUMNS])
    return out.getvalue()


def formatter(fmt: str, hostname: str) -> Callable[[AuditEvent], str]:
    if fmt == "jsonl":
        return lambda e: json.dumps(e.as_json(), ensure_ascii=False, sort_keys=True) + "\n"
    if fmt == "syslog":
        return lambda e: format_syslog(e, hostname=hostname).decode() + "\n"
    return csv_line


async def _export_body(
    request: Request, f: audit_query.AuditFilter, fmt: str
) -> AsyncIterator[bytes]:
    services = services_of(request)
    hostname = services.settings.server.node_name or socket.gethostname()
    line = formatter(fmt, hostname)
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out).writerow(CSV_COLUMNS)
        yield out.getvalue().encode()
    batch: list[str] = []
    async for event in audit_query.matching(services.sessions, f, max_events=EXPORT_MAX):
        batch.append(line(event))
        if len(batch) >= 500:
            yield "".join(batch).encode()
            batch = []
    if batch:
        yield "".join(batch).encode()


@router.get("/evidence/audit/export")
async def audit_export(request: Request) -> Response:
    context = await signed_in(request, SiteAction.READ_EVIDENCE)
    if context is None:
        return sign_in_redirect(request)
    fmt = request.query_params.get("format", "")
    q = parse_query(dict(request.query_params))
    if fmt not in FORMATS:
        q.errors.append("format: jsonl, syslog or csv")
    await bound_session_scan(request, q)
    if q.errors or q.filter is None:
        return Response("\n".join(q.errors) + "\n", status_code=422, media_type="text/plain")
    return await export_response(request, q, fmt, context.session.username)


async def export_response(request: Request, q: Query, fmt: str, actor: str) -> Response:
    """The filtered events as a download (page and API alike), audited ``audit.export``."""
    assert q.filter is not None  # noqa: S101 - callers answer 422 for a query with errors
    services = services_of(request)
    await services.audit.record(
        actor=actor, action="audit.export", result="success", source=source_of(request),
        detail={"format": fmt, "filter": {k: v for k, v in q.raw.items() if v}},
    )  # fmt: skip
    media, suffix = FORMATS[fmt]
    stamp = services.clock().strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        _export_body(request, q.filter, fmt), media_type=f"{media}; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="conduit-audit-{stamp}.{suffix}"',
                 "Cache-Control": "no-store"},
    )  # fmt: skip


@router.post("/evidence/audit/verify")
async def verify_chain(request: Request) -> Response:
    context = await signed_in_post(request)
    await require_capability(request, context, SiteAction.READ_EVIDENCE)
    await check_chain(request, context.session.username)
    return RedirectResponse("/evidence/audit#chain", status_code=303)


async def check_chain(request: Request, actor: str) -> dict[str, Any]:
    """Verify the whole audit chain (what ``conduit audit verify`` runs), off the event loop;
    kept as this process's last result for the page; audited ``audit.verify``."""
    services = services_of(request)
    result = await audit_query.verify_elsewhere(
        services.settings, services.keys.signing_key, services.clock
    )
    state: dict[str, Any] = {
        "ok": result.ok, "checked": result.checked, "checkpoints": result.checkpoints,
        "problems": result.problems[:20], "first_bad_id": result.first_bad_id,
        "by": actor, "at": shown_instant(services.clock()),
    }  # fmt: skip
    request.app.state.audit_chain = state
    await services.audit.record(
        actor=actor, action="audit.verify", result="success" if result.ok else "failure",
        source=source_of(request),
        detail={"checked": result.checked, "first_bad_id": result.first_bad_id},
    )  # fmt: skip
    return state
