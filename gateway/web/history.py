"""Session history (``GET /evidence``): every recorded session, filtered and paged, for auditors.

Every session is recorded before it starts (fail closed), so the recordings catalog is the
history. Filters (user, vendor organisation, asset, zone, protocol, start range, end reason)
come from the query string and are bounded here; a value out of range is refused with a
message naming the field, and the page shows nothing rather than guess. Pages are keyset
pages over ``(started_at, id)`` newest first: one indexed query of ``PAGE + 1`` rows per
page and no count of everything, so a page costs the same on the first and the ten
thousandth page. Each row links to its player page and its audit events, with its integrity
badge. Does not open recordings (``player``), search text (``search_pages``) or decide who is
an auditor (``rbac.roles``: READ_EVIDENCE).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from gateway.recorder.catalog import CatalogEntry
from gateway.recorder.history import EARLIEST, LIVE, Cursor, SessionFilter, history_page
from gateway.recorder.tables import STATE_OPEN
from gateway.web.auth import services_of
from gateway.web.end_reasons import END_REASONS, staff_words
from gateway.web.layout import page, sign_in_redirect
from gateway.web.my_sessions import duration_text
from gateway.web.portal_forms import shown_instant, signed_in
from rbac.roles import SiteAction

router = APIRouter(include_in_schema=False)

PAGE = 50
LATEST_AHEAD = dt.timedelta(days=1)  # "until" may be a little in the future, no more
# End reasons the gateway writes, offered in the filter; the field accepts any well-formed code.
KNOWN_END_REASONS = (*END_REASONS, LIVE)
PROTOCOLS = ("ssh", "sftp", "scp", "exec", "tunnel", "vnc", "rdp")
_NAME = re.compile(r"[A-Za-z0-9_.@+-]{1,64}")
_ORG = re.compile(r"[^\x00-\x1f\x7f]{1,100}")
_CODE = re.compile(r"[a-z0-9_.:-]{1,64}")
_TEXT_FIELDS = ("user", "org", "asset", "zone", "protocol", "end")
INTEGRITY_LABELS = {
    "intact": "intact",
    "incomplete": "incomplete after crash",
    "tampered": "tampered",
    "truncated": "tampered (cut short)",
    "missing": "file missing",
    "unverified": "unverified",
}


class FilterProblem(ValueError):
    """A filter value outside its range: the message names the field."""


@dataclass(frozen=True)
class HistoryFilter(SessionFilter):
    """The catalog filter plus the values as typed."""

    raw: dict[str, str] = field(default_factory=dict)  # as typed, to refill the form

    def query_string(self, **extra: str) -> str:
        values = {k: v for k, v in self.raw.items() if v}
        values.update({k: v for k, v in extra.items() if v})
        return urlencode(values)


def _instant(name: str, label: str, value: str, now: dt.datetime) -> dt.datetime | None:
    """``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM[:SS]``, read as UTC, within the documented range."""
    if not value:
        return None
    if len(value) > 25:
        raise FilterProblem(f"{label}: too long; use YYYY-MM-DD or YYYY-MM-DD HH:MM (UTC).")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise FilterProblem(
            f"{label}: not a date; use YYYY-MM-DD or YYYY-MM-DD HH:MM (UTC)."
        ) from None
    parsed = parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)
    latest = now + LATEST_AHEAD
    if not EARLIEST <= parsed <= latest:
        raise FilterProblem(f"{label}: must be between 2000-01-01 and {latest:%Y-%m-%d %H:%M} UTC.")
    return parsed


def _text(raw: Mapping[str, str], name: str, label: str, pattern: re.Pattern[str]) -> str:
    value = raw.get(name, "").strip()
    if value and pattern.fullmatch(value) is None:
        raise FilterProblem(f"{label}: not a valid value.")
    return value


def page_position(value: str) -> Cursor | None:
    if not value:
        return None
    try:
        return Cursor.parse(value[:60])
    except ValueError:
        raise FilterProblem("Page position: not a position this page made; start again.") from None


def parse_filter(params: Mapping[str, str], now: dt.datetime) -> HistoryFilter:
    """The filter of a query string; ``FilterProblem`` names the first bad field."""
    raw = {name: str(params.get(name, ""))[:200] for name in (*_TEXT_FIELDS, "since", "until")}
    since = _instant("since", "Started from", raw["since"], now)
    until = _instant("until", "Started before", raw["until"], now)
    if since is not None and until is not None and since >= until:
        raise FilterProblem("Started from: must be before 'Started before'.")
    return HistoryFilter(
        user=_text(raw, "user", "User", _NAME),
        org=_text(raw, "org", "Vendor organisation", _ORG),
        asset=_text(raw, "asset", "Asset", _NAME),
        zone=_text(raw, "zone", "Zone", _NAME),
        protocol=_text(raw, "protocol", "Protocol", _CODE),
        end=_text(raw, "end", "End reason", _CODE),
        since=since,
        until=until,
        raw=raw,
    )


@dataclass(frozen=True)
class HistoryRow:
    recording_id: str
    session_id: str
    user: str
    asset: str
    protocol: str
    kind: str
    started: dict[str, Any]
    duration: str
    state: str
    integrity: str
    integrity_label: str
    integrity_detail: str

    @property
    def state_words(self) -> str:
        return staff_words(self.state)


def history_row(entry: CatalogEntry, now: dt.datetime) -> HistoryRow:
    live = entry.state == STATE_OPEN
    end = now if live or entry.ended_at is None else entry.ended_at
    integrity = entry.integrity if entry.integrity in INTEGRITY_LABELS else "unverified"
    return HistoryRow(
        recording_id=entry.id,
        session_id=entry.session_id,
        user=entry.username,
        asset=entry.asset,
        protocol=entry.protocol,
        kind=entry.kind,
        started=shown_instant(entry.started_at, now),
        duration=duration_text((end - entry.started_at).total_seconds()),
        state=LIVE if live else (entry.end_reason or "unknown"),
        integrity=integrity,
        integrity_label=INTEGRITY_LABELS[integrity],
        integrity_detail=entry.integrity_detail,
    )


async def load_history(request: Request) -> dict[str, Any]:
    """The page's values: the filter as typed, the rows, the next page link or a problem."""
    services = services_of(request)
    now = services.clock()
    params = dict(request.query_params)
    values: dict[str, Any] = {"rows": [], "problem": "", "next_query": "", "first_page": True}
    try:
        f = parse_filter(params, now)
        after = page_position(params.get("after", ""))
    except FilterProblem as problem:
        raw = {name: str(params.get(name, ""))[:200] for name in (*_TEXT_FIELDS, "since", "until")}
        values.update(problem=str(problem), filter=replace(HistoryFilter(), raw=raw))
        return values
    async with services.sessions() as db:
        entries, nxt = await history_page(db, f, after, PAGE)
    values.update(
        filter=f,
        rows=[history_row(entry, now) for entry in entries],
        first_page=after is None,
        next_query=f.query_string(after=nxt.text()) if nxt is not None else "",
        newest_query=f.query_string(),
    )
    return values


@router.get("/evidence", response_class=HTMLResponse)
async def history(request: Request) -> Response:
    context = await signed_in(request, SiteAction.READ_EVIDENCE)
    if context is None:
        return sign_in_redirect(request)
    values = await load_history(request)
    values.update(
        known_end_reasons=KNOWN_END_REASONS, protocols=PROTOCOLS, page_size=PAGE, section="sessions"
    )
    status = 422 if values["problem"] else 200
    return await page(
        request, context, "evidence.html", values, current="evidence", status_code=status
    )
