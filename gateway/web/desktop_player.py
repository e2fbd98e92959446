"""The desktop player's data: ``/evidence/recordings/{id}/desktop-index``, ``.../rfb`` and
``.../thumbnail.png``, for auditors.

The player page (``player.player_page``, ``templates/player_desktop.html``) shows noVNC fed
by ``static/desktop_player.js``, which reads the recording's index (start points, markers,
key track) as JSON and its RFB in parts of at most ``[desktop] replay_part_bytes``
(``?from=N``: from event N; the ``X-Next-Event`` header names the next part's first event).
Same rule as the terminal player's cast: a signed-in person whose roles carry READ_EVIDENCE;
anyone else and any id not in the catalog get "not found" (audited ``portal.refused``); a
fetch with the page's view pass writes nothing more, one without writes its own
``recording.viewed``.

Thumbnails are derived on request from the recording (the last start point and the updates
after it, decoded and scaled to about 320 px) and kept in this process's memory only
(``Cache-Control: no-store``, so not in a browser's disk cache either), at most
``THUMBNAILS`` of them: the recording stays the one copy of a customer's desktop at rest
(encrypted), there is no second store of images to key, rotate, expire or delete with it,
and a process restart costs one decode per thumbnail looked at. A thumbnail's first fetch by
a person is audited ``recording.viewed`` (``via: thumbnail``), later ones within
``player.PASS_SECONDS`` are not. Decodes run one at a time in a worker thread.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from gateway.desktop import rfb
from gateway.recorder.catalog import CatalogEntry
from gateway.recorder.tables import STATE_OPEN
from gateway.web.auth import current_session, services_of
from gateway.web.desktop_replay import desktop_index, rfb_part, thumbnail_png
from gateway.web.player import PASS_SECONDS, audit_view, entry_or_refuse, passes_of
from gateway.web.portal_forms import NotPermitted, audit_refusal, signed_in
from rbac.roles import SiteAction
from recordings import RecordingNotFound

router = APIRouter(include_in_schema=False)

THUMBNAILS = 256  # thumbnails kept per process (about 30-60 KB each)
MAX_EVENT_NUMBER = 1 << 40
_T = TypeVar("_T")


class Thumbnails:
    """Decoded thumbnails by (recording, size) and who saw which recently."""

    def __init__(self) -> None:
        self.images: OrderedDict[tuple[str, int], bytes | None] = OrderedDict()
        self.seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.decoding = asyncio.Lock()

    def get(self, key: tuple[str, int]) -> bytes | None | bool:
        if key not in self.images:
            return False
        self.images.move_to_end(key)
        return self.images[key]

    def put(self, key: tuple[str, int], image: bytes | None) -> None:
        self.images[key] = image
        while len(self.images) > THUMBNAILS:
            self.images.popitem(last=False)

    def first_look(self, who: str, recording_id: str) -> bool:
        now = time.monotonic()
        key = (who, recording_id)
        fresh = self.seen.get(key, 0.0) < now
        if fresh:
            self.seen[key] = now + PASS_SECONDS
            self.seen.move_to_end(key)
            while len(self.seen) > 4 * THUMBNAILS:
                self.seen.popitem(last=False)
        return fresh


def thumbnails_of(request: Request) -> Thumbnails:
    state = request.app.state
    if getattr(state, "desktop_thumbnails", None) is None:
        state.desktop_thumbnails = Thumbnails()
    found: Thumbnails = state.desktop_thumbnails
    return found


async def _desktop_entry(
    request: Request, recording_id: str
) -> tuple[str, CatalogEntry] | Response:
    context = await current_session(request)
    if context is None:
        await audit_refusal(request, "anonymous", 401, "desktop replay without a valid session")
        return Response("log in first", status_code=401, media_type="text/plain")
    await signed_in(request, SiteAction.READ_EVIDENCE)
    entry = await entry_or_refuse(request, context, recording_id)
    who = context.session.username
    if entry.kind != "desktop":
        await audit_refusal(request, who, 404, f"{entry.kind} recording has no desktop replay")
        raise NotPermitted(request.url.path)
    return who, entry


async def _read(request: Request, entry: CatalogEntry, use: Callable[[Any], _T]) -> _T:
    """``use(events)`` over the recording's authenticated events, in a worker thread."""
    recordings = services_of(request).recordings

    def read() -> _T:
        with recordings.store.open_read(entry.id) as stream:
            return use(recordings.reader(stream).events())

    return await asyncio.to_thread(read)


async def _viewed(request: Request, who: str, entry: CatalogEntry, via: str) -> None:
    if not passes_of(request).valid(request.query_params.get("pass", ""), who, entry.id):
        await audit_view(request, who, entry, via)


@router.get("/evidence/recordings/{recording_id}/desktop-index")
async def index(request: Request, recording_id: str) -> Response:
    found = await _desktop_entry(request, recording_id)
    if isinstance(found, Response):
        return found
    who, entry = found
    await _viewed(request, who, entry, "desktop-index")
    try:
        result = await _read(request, entry, desktop_index)
    except (RecordingNotFound, OSError):
        return Response("recording file missing", status_code=410, media_type="text/plain")
    return JSONResponse(result.as_json(), headers={"Cache-Control": "no-store"})


@router.get("/evidence/recordings/{recording_id}/rfb")
async def part(request: Request, recording_id: str) -> Response:
    found = await _desktop_entry(request, recording_id)
    if isinstance(found, Response):
        return found
    who, entry = found
    raw = request.query_params.get("from", "0")
    if not raw.isdigit() or len(raw) > 13 or int(raw) > MAX_EVENT_NUMBER:
        return Response("from: an event number", status_code=422, media_type="text/plain")
    await _viewed(request, who, entry, "rfb")
    first = int(raw)
    try:
        budget = services_of(request).settings.desktop.replay_part_bytes
        data, following = await _read(request, entry, lambda e: rfb_part(e, first, budget))
    except (RecordingNotFound, OSError):
        return Response("recording file missing", status_code=410, media_type="text/plain")
    headers = {
        "Cache-Control": "no-store",
        "X-Next-Event": "" if following is None else str(following),
    }
    return Response(data, media_type="application/octet-stream", headers=headers)


@router.get("/evidence/recordings/{recording_id}/thumbnail.png")
async def thumbnail(request: Request, recording_id: str) -> Response:
    found = await _desktop_entry(request, recording_id)
    if isinstance(found, Response):
        return found
    who, entry = found
    thumbnails = thumbnails_of(request)
    if thumbnails.first_look(who, entry.id):
        await _viewed(request, who, entry, "thumbnail")
    key = (entry.id, entry.size_bytes)
    live = entry.state == STATE_OPEN
    image = False if live else thumbnails.get(key)
    if image is False:
        async with thumbnails.decoding:
            try:
                image = await _read(request, entry, thumbnail_png)
            except (RecordingNotFound, OSError):
                return Response("recording file missing", status_code=410, media_type="text/plain")
            except (rfb.RFBError, ValueError):
                image = None  # updates that do not decode: no picture, said as 404
            if not live:
                thumbnails.put(key, image)
    if not isinstance(image, bytes):
        return Response("no frame to show", status_code=404, media_type="text/plain")
    return Response(image, media_type="image/png", headers={"Cache-Control": "no-store"})
