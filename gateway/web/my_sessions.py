"""My sessions (``GET /sessions``): the signed-in user's own past and live sessions.

Every session is recorded before it starts (fail closed), so the recordings catalog is the
list: asset, protocol, start, end and end reason, newest first, at most ``LIMIT``. A kill's
note (the person's text) is not in the catalog; it comes from the ``session.end`` audit
events of the same sessions, in one more query. A row that cannot be shown as expected (an
end before its start, a missing field, a bad note) is shown with what is readable and never
breaks the list. Does not show other users' sessions and does not decide access.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from gateway.recorder import catalog
from gateway.recorder.catalog import CatalogEntry
from gateway.web.auth import services_of
from gateway.web.end_reasons import own_words
from gateway.web.layout import page, sign_in_redirect
from gateway.web.portal_forms import signed_in
from rbac.roles import SiteAction

router = APIRouter(include_in_schema=False)
log = logging.getLogger(__name__)
LIMIT = 100  # the newest sessions shown; older ones are in the evidence export
NOTES_SCANNED = 4 * LIMIT  # session.end events read for notes (one per session, and slack)


@dataclass(frozen=True)
class PastSession:
    asset: str
    protocol: str
    started: str
    duration: str
    state: str  # "live" or the end reason code
    note: str

    @property
    def state_words(self) -> str:
        return own_words(self.state)


def duration_text(seconds: float) -> str:
    """``1 h 02 min``, ``3 min 05 s``, ``12 s``; "unknown" for a negative span."""
    if seconds < 0:
        return "unknown"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def _utc(instant: dt.datetime | None) -> dt.datetime | None:
    if instant is None:
        return None
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=dt.UTC)


def past_session(entry: CatalogEntry, notes: dict[str, str], now: dt.datetime) -> PastSession:
    started = _utc(entry.started_at)
    ended = _utc(entry.ended_at)
    live = entry.state == "open"
    duration = "unknown"
    if started is not None:
        duration = duration_text(
            ((now if live or ended is None else ended) - started).total_seconds()
        )
    return PastSession(
        asset=str(entry.asset),
        protocol=str(entry.protocol),
        started=started.strftime("%Y-%m-%d %H:%M:%S UTC") if started is not None else "unknown",
        duration=duration,
        state="live" if live else str(entry.end_reason or "unknown"),
        note=notes.get(entry.session_id, ""),
    )


def notes_of(details: list[str]) -> dict[str, str]:
    """session id -> kill note, from ``session.end`` audit details (bad ones skipped)."""
    notes: dict[str, str] = {}
    for text in details:
        try:
            detail = json.loads(text)
        except ValueError:
            continue
        if isinstance(detail, dict):
            sid, note = detail.get("session_id"), detail.get("note")
            if isinstance(sid, str) and isinstance(note, str) and note:
                notes[sid] = note
    return notes


async def own_sessions(request: Request, username: str) -> list[PastSession]:
    services = services_of(request)
    now = services.clock()
    async with services.sessions() as db:
        entries = await catalog.list_for_user(db, username, LIMIT)
    ends = await services.audit.latest(action="session.end", actor=username, limit=NOTES_SCANNED)
    notes = notes_of([event.detail for event in ends])
    out = []
    for entry in entries:
        try:
            out.append(past_session(entry, notes, now))
        except (TypeError, ValueError, OverflowError, AttributeError):
            log.warning("my sessions: recording %s could not be shown", entry.id)
            out.append(PastSession(str(entry.asset), str(entry.protocol), "unknown",
                                   "unknown", "unreadable entry", ""))  # fmt: skip
    return out


@router.get("/sessions", response_class=HTMLResponse)
async def my_sessions(request: Request) -> Response:
    context = await signed_in(request, SiteAction.USE_ASSETS)
    if context is None:
        return sign_in_redirect(request)
    rows = await own_sessions(request, context.session.username)
    values = {"rows": rows, "limit": LIMIT}
    return await page(request, context, "my_sessions.html", values, current="sessions")
