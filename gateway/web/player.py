"""The recording player (``/evidence/recordings/{id}``) and its cast (``.../cast``), for auditors.

A terminal recording plays in asciinema-player, fed from ``/cast``: decrypted here, streamed
as asciicast v2 from the start of the file (``replay``) and only to a signed-in person whose
roles carry READ_EVIDENCE. The player downloads a cast whole before its first frame, so a
recording whose file is over ``PART_FILE_BYTES`` plays in parts (``/cast?part=1&from=S``:
about 8 MiB of cast from the page's offset; the page links the next part).
A desktop recording plays in noVNC (``desktop_player`` serves its data); a tunnel recording
is shown as its metadata and an event table instead. Anyone else, and any id that is not in
the catalog, gets "not found" (audited as ``portal.refused``), the same for a guessed id as
for a real one.

Every view is audited ``recording.viewed`` once: the page writes the event and hands the
player a view pass (random, bound to the person and the recording, 30 minutes) for its cast
URL; a cast fetched with that pass writes nothing more, a cast fetched without one (or on
another process) writes its own event. The player page alone may compile WebAssembly (the
player's terminal emulator): its CSP adds ``'wasm-unsafe-eval'``, which allows WebAssembly
compilation and nothing else (no ``eval``, no inline script or style). Does not verify
recordings (the catalog's last verdict is shown) and does not search.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from gateway.recorder.catalog import CatalogEntry
from gateway.recorder.service import RecordingMissing
from gateway.web.auth import PortalContext, current_session, services_of, source_of
from gateway.web.history import INTEGRITY_LABELS, history_row
from gateway.web.layout import page, sign_in_redirect
from gateway.web.portal_forms import NotPermitted, audit_refusal, shown_instant, signed_in
from gateway.web.replay import (
    PART_CAST_BYTES,
    TABLE_ROWS,
    Unreadable,
    cast_batches,
    first_output_seconds,
    tunnel_table,
)
from gateway.web.security import CSP
from rbac.roles import SiteAction
from recordings import RecordingNotFound

router = APIRouter(include_in_schema=False)

PASS_SECONDS = 30 * 60
MAX_PASSES = 10_000  # passes kept per process; the oldest go first
MAX_OFFSET = 10_000_000.0  # seconds (about 115 days): the longest offset ``?t=`` accepts
# A recording whose output (what the browser would load; the file itself when the output is
# not known, e.g. after crash recovery) is larger than this plays in parts. Format 2 stores
# terminal text compressed, so the file alone would understate it many times over.
PART_FILE_BYTES = 32 << 20
PLAYER_CSP = CSP.replace("script-src 'self'", "script-src 'self' 'wasm-unsafe-eval'")


@dataclass
class ViewPasses:
    """Which page views may fetch their cast without a second audit event."""

    issued: dict[str, tuple[str, str, float]] = field(default_factory=dict)

    def issue(self, username: str, recording_id: str) -> str:
        while len(self.issued) >= MAX_PASSES:
            self.issued.pop(next(iter(self.issued)))
        token = secrets.token_urlsafe(24)
        self.issued[token] = (username, recording_id, time.monotonic() + PASS_SECONDS)
        return token

    def valid(self, token: str, username: str, recording_id: str) -> bool:
        found = self.issued.get(token[:64])
        if found is None or found[2] < time.monotonic():
            return False
        return secrets.compare_digest(found[0], username) and found[1] == recording_id


def passes_of(request: Request) -> ViewPasses:
    state = request.app.state
    if getattr(state, "recording_view_passes", None) is None:
        state.recording_view_passes = ViewPasses()
    passes: ViewPasses = state.recording_view_passes
    return passes


def offset_of(value: str | None) -> tuple[float, str]:
    """``?t=SECONDS``: the offset and an empty message, or 0 and why it was refused."""
    if not value:
        return 0.0, ""
    try:
        seconds = float(value[:20])
    except ValueError:
        return 0.0, "The start offset is not a number of seconds; playing from the start."
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_OFFSET:
        return 0.0, "The start offset is out of range; playing from the start."
    return seconds, ""


async def entry_or_refuse(
    request: Request, context: PortalContext, recording_id: str
) -> CatalogEntry:
    """The catalog entry, or ``NotPermitted`` (a missing id looks like a forbidden one)."""
    try:
        return await services_of(request).recordings.entry(recording_id)
    except (RecordingMissing, ValueError):
        await audit_refusal(request, context.session.username, 404, "no such recording")
        raise NotPermitted(request.url.path) from None


async def audit_view(request: Request, who: str, entry: CatalogEntry, via: str) -> None:
    await services_of(request).audit.record(
        actor=who,
        action="recording.viewed",
        result="success",
        target=entry.id,
        source=source_of(request),
        detail={"session_id": entry.session_id, "user": entry.username, "asset": entry.asset,
                "via": via},
    )  # fmt: skip


@router.get("/evidence/recordings/{recording_id}", response_class=HTMLResponse)
async def player_page(request: Request, recording_id: str) -> Response:
    context = await signed_in(request, SiteAction.READ_EVIDENCE)
    if context is None:
        return sign_in_redirect(request)
    entry = await entry_or_refuse(request, context, recording_id)
    who = context.session.username
    start, problem = offset_of(request.query_params.get("t"))
    await audit_view(request, who, entry, "page")
    values: dict[str, Any] = {
        "entry": entry,
        "row": history_row(entry, services_of(request).clock()),
        "ended": shown_instant(entry.ended_at),
        "start": start,
        "problem": problem,
        "section": "sessions",
        "integrity_labels": INTEGRITY_LABELS,
    }
    if entry.kind == "terminal":
        query = f"pass={passes_of(request).issue(who, entry.id)}"
        if start and request.query_params.get("hit") == "1":
            query += f"&hit={start:.6f}"
        if max(entry.size_bytes, entry.output_bytes or 0) > PART_FILE_BYTES:
            query += f"&part=1&from={start:.6f}"
            values["part_mib"] = max(1, PART_CAST_BYTES >> 20)
        values["cast_url"] = f"/evidence/recordings/{entry.id}/cast?{query}"
        values["first_frame"] = await _first_frame(request, entry) if not start else None
        answer = await page(request, context, "player.html", values, current="evidence")
        answer.headers["Content-Security-Policy"] = PLAYER_CSP
        return answer
    if entry.kind == "desktop":
        values["pass"] = passes_of(request).issue(who, entry.id)
        return await page(request, context, "player_desktop.html", values, current="evidence")
    values.update(await _tunnel_values(request, entry))
    return await page(request, context, "player_table.html", values, current="evidence")


async def _first_frame(request: Request, entry: CatalogEntry) -> float | None:
    """The first output's offset (reads the recording's first chunk), for the poster."""
    recordings = services_of(request).recordings

    def read() -> float | None:
        with recordings.store.open_read(entry.id) as stream:
            return first_output_seconds(recordings.reader(stream))

    try:
        return await asyncio.to_thread(read)
    except (RecordingNotFound, OSError):
        return None


async def _tunnel_values(request: Request, entry: CatalogEntry) -> dict[str, Any]:
    recordings = services_of(request).recordings

    def read() -> tuple[Any, ...]:
        with recordings.store.open_read(entry.id) as stream:
            return tunnel_table(recordings.reader(stream))

    try:
        rows, totals, cut = await asyncio.to_thread(read)
    except (RecordingNotFound, OSError):
        return {"events": [], "unreadable": "The recording file is missing or unreadable."}
    return {"events": rows, "totals": totals, "cut": cut, "table_rows": TABLE_ROWS}


@router.get("/evidence/recordings/{recording_id}/cast")
async def cast(request: Request, recording_id: str) -> Response:
    context = await current_session(request)
    if context is None:
        await audit_refusal(request, "anonymous", 401, "cast without a valid session")
        return Response("log in first", status_code=401, media_type="text/plain")
    await signed_in(request, SiteAction.READ_EVIDENCE)
    entry = await entry_or_refuse(request, context, recording_id)
    if entry.kind != "terminal":
        await audit_refusal(request, context.session.username, 404, f"{entry.kind} has no cast")
        raise NotPermitted(request.url.path)
    who = context.session.username
    hit, _ = offset_of(request.query_params.get("hit"))
    if not passes_of(request).valid(request.query_params.get("pass", ""), who, entry.id):
        await audit_view(request, who, entry, "cast")
    try:
        stream = await asyncio.to_thread(services_of(request).recordings.store.open_read, entry.id)
    except (RecordingNotFound, OSError):
        return Response("recording file missing", status_code=410, media_type="text/plain")
    start, _ = offset_of(request.query_params.get("from"))
    part = request.query_params.get("part") == "1"
    batches = cast_batches(stream, services_of(request).recordings.reader(stream),
                           round(hit * 1_000_000) if hit else None, from_us=round(start * 1e6),
                           budget=PART_CAST_BYTES if part else None)  # fmt: skip
    try:
        first = await asyncio.to_thread(next, batches, b"")
    except Unreadable:
        stream.close()
        return Response("recording unreadable", status_code=422, media_type="text/plain")
    return StreamingResponse(
        _rest(first, batches, stream), media_type="application/x-asciicast; charset=utf-8"
    )


async def _rest(first: bytes, batches: Any, stream: BinaryIO) -> AsyncIterator[bytes]:
    """The first batch, then each next one read in a worker thread; the file closes at the
    end or when the browser goes away."""
    try:
        yield first
        while chunk := await asyncio.to_thread(next, batches, b""):
            yield chunk
    finally:
        with contextlib.suppress(Exception):
            batches.close()
        stream.close()
