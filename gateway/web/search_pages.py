"""Full-text search across all recordings (``GET /evidence/search?q=``), for auditors.

Calls the recordings service's search (the same as ``conduit recordings search``; it audits
``recording.search`` itself) and shows each hit with its recording's user, asset and start,
the time offset and a snippet; a hit links to the player just after that offset (the
screen with the line on it). The query is
bounded (``MAX_QUERY`` characters, at least one word) and refused with a message otherwise;
results come in pages of ``PAGE``, at most ``MAX_PAGES`` pages. The snippet's highlighting is
built here as (text, marked) pieces that the template escapes: no stored text is ever
markup. Does not index text (``gateway.recorder.search``) and does not open recordings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from gateway.recorder import catalog
from gateway.recorder.search import MAX_QUERY_WORDS, SearchHit
from gateway.web.auth import services_of, source_of
from gateway.web.layout import page, sign_in_redirect
from gateway.web.portal_forms import shown_instant, signed_in
from rbac.roles import SiteAction

router = APIRouter(include_in_schema=False)

MAX_QUERY = 200
PAGE = 25
MAX_PAGES = 20
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class HitRow:
    recording_id: str
    user: str
    asset: str
    started: dict[str, Any]
    offset: float
    pieces: list[tuple[str, bool]]  # snippet text, and whether the piece is a query word
    href: str


def pieces_of(snippet: str, words: list[str]) -> list[tuple[str, bool]]:
    """The service's snippet marks each query word as ``[word]``: split it into plain and
    marked pieces (brackets around anything else stay text)."""
    if not words:
        return [(snippet, False)]
    marked = re.compile(r"\[(" + "|".join(re.escape(w) for w in words) + r")\]", re.IGNORECASE)
    out: list[tuple[str, bool]] = []
    last = 0
    for found in marked.finditer(snippet):
        if found.start() > last:
            out.append((snippet[last : found.start()], False))
        out.append((found.group(1), True))
        last = found.end()
    if last < len(snippet):
        out.append((snippet[last:], False))
    return out


def check_query(query: str) -> tuple[list[str], str]:
    """The query's words and an empty message, or no words and why the query is refused."""
    if len(query) > MAX_QUERY:
        return [], f"The search is too long: at most {MAX_QUERY} characters."
    words = _WORD.findall(query)
    if not words:
        return [], "Type at least one word (letters or digits) to search for."
    if len(words) > MAX_QUERY_WORDS:
        return [], f"Too many words: at most {MAX_QUERY_WORDS}."
    return words, ""


def page_number(value: str | None) -> int:
    try:
        number = int((value or "1")[:4])
    except ValueError:
        return 1
    return min(max(number, 1), MAX_PAGES)


async def hit_rows(request: Request, hits: list[SearchHit], words: list[str]) -> list[HitRow]:
    services = services_of(request)
    async with services.sessions() as db:
        found = await catalog.list_entries(db, ids=sorted({h.recording_id for h in hits}))
    entries = {e.id: e for e in found}
    now = services.clock()
    rows = []
    for hit in hits:
        entry = entries.get(hit.recording_id)
        if entry is None:  # deleted by retention between the two queries
            continue
        # A millisecond past the line's time: the player shows the screen after it appeared.
        at = f"{(hit.offset_us // 1000 + 1) / 1000:.3f}"
        rows.append(
            HitRow(
                recording_id=hit.recording_id,
                user=entry.username,
                asset=entry.asset,
                started=shown_instant(entry.started_at, now),
                offset=hit.offset_seconds,
                pieces=pieces_of(hit.snippet, words),
                href=f"/evidence/recordings/{hit.recording_id}?{urlencode({'t': at, 'hit': '1'})}",
            )
        )
    return rows


@router.get("/evidence/search", response_class=HTMLResponse)
async def search(request: Request) -> Response:
    context = await signed_in(request, SiteAction.READ_EVIDENCE)
    if context is None:
        return sign_in_redirect(request)
    query = request.query_params.get("q", "")
    number = page_number(request.query_params.get("page"))
    values: dict[str, Any] = {
        "q": query[: MAX_QUERY + 50],
        "rows": [],
        "problem": "",
        "section": "search",
        "page_number": number,
        "searched": False,
    }
    status = 200
    if query:
        words, problem = check_query(query)
        if problem:
            values["problem"], status = problem, 422
        else:
            hits = await services_of(request).recordings.search(
                query, actor=context.session.username, source=source_of(request),
                limit=number * PAGE + 1,
            )  # fmt: skip
            shown = hits[(number - 1) * PAGE : number * PAGE]
            values.update(
                searched=True,
                rows=await hit_rows(request, shown, words),
                more=len(hits) > number * PAGE and number < MAX_PAGES,
                next_query=urlencode({"q": query, "page": number + 1}),
                prev_query=urlencode({"q": query, "page": number - 1}) if number > 1 else "",
                first_index=(number - 1) * PAGE + 1,
                last_page=number >= MAX_PAGES,
                max_results=MAX_PAGES * PAGE,
            )
    return await page(
        request, context, "evidence_search.html", values, current="evidence", status_code=status
    )
