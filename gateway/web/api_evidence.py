"""JSON API for evidence: recordings, search, audit events and file transfers (``/api/v1``).

For auditors and admins (``SiteAction.READ_EVIDENCE``) with a portal session or a token
carrying the ``read`` scope. Anyone else gets 404 for every route here, exactly as for a
recording id that does not exist (guessing ids tells nothing); every refusal is audited
``api.refused``. The routes answer what the evidence pages show and call the same
functions: session history with the page's filters and keyset cursor (``history``), one
recording's metadata and integrity verdict, "verify now" (``evidence_bundle``, audited
``recording.verify``), the evidence bundle download (audited ``recording.download``),
full-text search (audited by the service), audit events newest first with the viewer's
filters and ``before`` keyset (``audit_pages``) and file transfers (``transfers``). Reads
only, except that a verification stores its verdict in the catalog. Does not decide who is
an auditor (``rbac.roles``).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response

from gateway.audit import AuditEvent
from gateway.audit import query as audit_query
from gateway.recorder import CatalogEntry, RecordingMissing, catalog
from gateway.recorder.history import history_page
from gateway.web import audit_pages, history, search_pages
from gateway.web.api_access import NOT_FOUND, AuditedRoute, Caller, Out, Reader, Refused
from gateway.web.auth import services_of, source_of
from gateway.web.evidence_bundle import bundle_download, verify_recording
from gateway.web.transfers import only_transfers
from rbac.roles import SiteAction

recordings_router = APIRouter(prefix="/api/v1", tags=["recordings"], route_class=AuditedRoute)
search_router = APIRouter(prefix="/api/v1", tags=["search"], route_class=AuditedRoute)
audit_router = APIRouter(prefix="/api/v1", tags=["audit"], route_class=AuditedRoute)
transfers_router = APIRouter(prefix="/api/v1", tags=["transfers"], route_class=AuditedRoute)

RecordingId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
Text = Annotated[str, Query(max_length=200)]
SEARCH_MAX = search_pages.MAX_PAGES * search_pages.PAGE


def require_evidence(caller: Caller) -> None:
    """Auditors and admins; anyone else sees nothing here, as for a missing recording."""
    if not caller.may(SiteAction.READ_EVIDENCE):
        raise Refused(404, NOT_FOUND, "caller may not read evidence")


class RecordingOut(Out):
    id: str
    session_id: str
    kind: str
    user: str
    asset: str
    protocol: str
    node: str
    state: str
    started_at: dt.datetime
    ended_at: dt.datetime | None
    end_reason: str | None
    size_bytes: int
    integrity: str
    integrity_detail: str
    verified_at: dt.datetime | None

    @classmethod
    def of(cls, e: CatalogEntry) -> RecordingOut:
        return cls(
            id=e.id, session_id=e.session_id, kind=e.kind, user=e.username, asset=e.asset,
            protocol=e.protocol, node=e.node, state=e.state, started_at=e.started_at,
            ended_at=e.ended_at, end_reason=e.end_reason, size_bytes=e.size_bytes,
            integrity=e.integrity, integrity_detail=e.integrity_detail,
            verified_at=e.verified_at,
        )  # fmt: skip


class RecordingPage(Out):
    recordings: list[RecordingOut]
    next: str | None  # pass as ``after`` for the next (older) page; null on the last page


class HitOut(Out):
    recording_id: str
    user: str
    asset: str
    started_at: dt.datetime
    offset_seconds: float
    snippet: str  # the line around the hit, each query word marked as [word]


class EventOut(Out):
    id: int
    time: dt.datetime
    actor: str
    source: str
    action: str
    target: str
    result: str
    detail: dict[str, Any]
    hash: str

    @classmethod
    def of(cls, e: AuditEvent) -> EventOut:
        return cls(
            id=e.id, time=e.time, actor=e.actor, source=e.source, action=e.action,
            target=e.target, result=e.result, detail=e.detail_object(), hash=e.hash,
        )  # fmt: skip


class EventPage(Out):
    events: list[EventOut]
    before: int | None  # pass as ``before`` for the next (older) page; null on the last
    note: str


async def _entry(request: Request, caller: Caller, recording_id: str) -> CatalogEntry:
    require_evidence(caller)
    try:
        return await services_of(request).recordings.entry(recording_id)
    except (RecordingMissing, ValueError):
        raise Refused(404, NOT_FOUND, f"no recording {recording_id}") from None


@recordings_router.get("/recordings", response_model=RecordingPage)
async def recordings(
    request: Request,
    caller: Reader,
    user: Text = "",
    org: Text = "",
    asset: Text = "",
    zone: Text = "",
    protocol: Text = "",
    end: Text = "",
    since: Text = "",
    until: Text = "",
    after: Annotated[str, Query(max_length=60)] = "",
) -> RecordingPage:
    """Session history, newest first, with the history page's filters (``since``/``until``:
    UTC dates or times of the start) and keyset paging (``after``: the previous ``next``)."""
    require_evidence(caller)
    services = services_of(request)
    params = {"user": user, "org": org, "asset": asset, "zone": zone, "protocol": protocol,
              "end": end, "since": since, "until": until}  # fmt: skip
    try:
        wanted = history.parse_filter(params, services.clock())
        position = history.page_position(after)
    except history.FilterProblem as problem:
        raise Refused(422, str(problem), f"history filter: {problem}") from None
    async with services.sessions() as db:
        entries, nxt = await history_page(db, wanted, position, history.PAGE)
    return RecordingPage(
        recordings=[RecordingOut.of(e) for e in entries],
        next=nxt.text() if nxt is not None else None,
    )


@recordings_router.get("/recordings/{recording_id}", response_model=RecordingOut)
async def recording(request: Request, recording_id: RecordingId, caller: Reader) -> RecordingOut:
    """One recording's metadata and its last integrity verdict."""
    return RecordingOut.of(await _entry(request, caller, recording_id))


@recordings_router.post("/recordings/{recording_id}/verify", response_model=RecordingOut)
async def verify(request: Request, recording_id: RecordingId, caller: Reader) -> RecordingOut:
    """Verify the file now; the catalog keeps the verdict (audited ``recording.verify``)."""
    entry = await _entry(request, caller, recording_id)
    return RecordingOut.of(await verify_recording(request, caller.username, entry))


@recordings_router.get(
    "/recordings/{recording_id}/bundle",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}}},
)
async def bundle(request: Request, recording_id: RecordingId, caller: Reader) -> Response:
    """The evidence bundle (zip): recording, signature key, the session's audit events and
    an offline verification script (audited ``recording.download``)."""
    entry = await _entry(request, caller, recording_id)
    try:
        return await bundle_download(request, caller.username, entry)
    except RecordingMissing:
        raise Refused(404, NOT_FOUND, f"recording file {entry.id} missing") from None


@search_router.get("/search", response_model=list[HitOut])
async def search(
    request: Request,
    caller: Reader,
    q: Annotated[str, Query(min_length=1, max_length=search_pages.MAX_QUERY)],
    limit: Annotated[int, Query(ge=1, le=SEARCH_MAX)] = search_pages.PAGE,
) -> list[HitOut]:
    """Full-text search across every recording's output (audited by the service)."""
    require_evidence(caller)
    _words, problem = search_pages.check_query(q)
    if problem:
        raise Refused(422, problem, f"search query: {problem}")
    services = services_of(request)
    hits = await services.recordings.search(
        q, actor=caller.username, source=source_of(request), limit=limit
    )
    async with services.sessions() as db:
        found = await catalog.list_entries(db, ids=sorted({h.recording_id for h in hits}))
    entries = {e.id: e for e in found}  # a hit whose recording retention just removed drops
    return [
        HitOut(recording_id=h.recording_id, user=entries[h.recording_id].username,
               asset=entries[h.recording_id].asset,
               started_at=entries[h.recording_id].started_at, offset_seconds=h.offset_seconds,
               snippet=h.snippet)
        for h in hits if h.recording_id in entries
    ]  # fmt: skip


def _audit_query(params: dict[str, str]) -> audit_pages.Query:
    q = audit_pages.parse_query(params)
    if q.errors:
        raise Refused(422, "; ".join(q.errors), "audit filter: " + "; ".join(q.errors))
    return q


async def _event_page(
    request: Request, q: audit_pages.Query, f: audit_query.AuditFilter, limit: int
) -> EventPage:
    events = await audit_query.page(
        services_of(request).sessions, f, before=q.before, limit=limit + 1
    )
    shown = events[:limit]
    older = shown[-1].id if len(events) > limit else None
    return EventPage(events=[EventOut.of(e) for e in shown], before=older, note=q.note)


PageSize = Annotated[int, Query(ge=1, le=500)]


@audit_router.get("/audit/events", response_model=EventPage)
async def audit_events(
    request: Request,
    caller: Reader,
    actor: Text = "",
    action: Text = "",
    target: Annotated[str, Query(max_length=500)] = "",
    result: Text = "",
    since: Text = "",
    until: Text = "",
    session_id: Text = "",
    before: Annotated[str, Query(max_length=20)] = "",
    limit: PageSize = audit_pages.PAGE_SIZE,
) -> EventPage:
    """Audit events newest first, with the viewer's filters; ``before``: the previous
    page's ``before`` (an event id)."""
    require_evidence(caller)
    q = _audit_query({"actor": actor, "action": action, "target": target, "result": result,
                      "since": since, "until": until, "session_id": session_id,
                      "before": before})  # fmt: skip
    await audit_pages.bound_session_scan(request, q)
    assert q.filter is not None  # noqa: S101 - parse_query sets it when there are no errors
    return await _event_page(request, q, q.filter, limit)


class ChainOut(Out):
    ok: bool
    checked: int
    checkpoints: int
    problems: list[str]
    first_bad_id: int | None


@audit_router.get("/audit/export", response_class=Response)
async def audit_export(
    request: Request,
    caller: Reader,
    format: Annotated[Literal["jsonl", "syslog", "csv"], Query()],  # noqa: A002 - the API's word
    actor: Text = "",
    action: Text = "",
    target: Annotated[str, Query(max_length=500)] = "",
    result: Text = "",
    since: Text = "",
    until: Text = "",
    session_id: Text = "",
) -> Response:
    """The filtered events, oldest first, as JSON lines, RFC 5424 syslog or CSV (formula
    cells guarded), streamed; audited ``audit.export``."""
    require_evidence(caller)
    q = _audit_query({"actor": actor, "action": action, "target": target, "result": result,
                      "since": since, "until": until, "session_id": session_id})  # fmt: skip
    await audit_pages.bound_session_scan(request, q)
    if q.errors:
        raise Refused(422, "; ".join(q.errors), "audit export: " + "; ".join(q.errors))
    return await audit_pages.export_response(request, q, format, caller.username)


@audit_router.post("/audit/verify", response_model=ChainOut)
async def audit_verify(request: Request, caller: Reader) -> ChainOut:
    """Verify every event's hash and link and the signed checkpoints (``conduit audit
    verify``); audited ``audit.verify``."""
    require_evidence(caller)
    state = await audit_pages.check_chain(request, caller.username)
    return ChainOut(
        ok=state["ok"], checked=state["checked"], checkpoints=state["checkpoints"],
        problems=list(state["problems"]), first_bad_id=state["first_bad_id"],
    )  # fmt: skip


@transfers_router.get("/transfers", response_model=EventPage)
async def transfers(
    request: Request,
    caller: Reader,
    user: Text = "",
    asset: Text = "",
    since: Text = "",
    until: Text = "",
    before: Annotated[str, Query(max_length=20)] = "",
    limit: PageSize = audit_pages.PAGE_SIZE,
) -> EventPage:
    """Every SFTP/SCP file (``sftp.write``/``sftp.read`` events: path, size, SHA-256 in
    ``detail``), newest first; ``before`` pages as for audit events."""
    require_evidence(caller)
    q = _audit_query({"actor": user, "target": asset, "since": since, "until": until,
                      "before": before})  # fmt: skip
    assert q.filter is not None  # noqa: S101 - parse_query sets it when there are no errors
    return await _event_page(request, q, only_transfers(q.filter), limit)
