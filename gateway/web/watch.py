"""Watching a live terminal session: ``/sessions/{id}/watch`` and ``/ws/watch/{id}``.

Allowed to whoever holds ``watch``, ``kill`` or ``admin`` on the session's asset, or the
any-asset capability (``api_sessions.may_watch``, the JSON API's own rule); anyone else,
and a session that does not exist, get the same 404 (the audit log gets the reason). The
websocket makes the same origin and cookie checks as every portal socket. Opening a watch
is audited ``session.watched`` once. The watcher first gets a reset terminal of the
session's current size and the session's recent output (its tap), then the live output and
resizes, and at the end the session's end line. What a watcher types is ignored: the view
is read-only. Every ``ws_guard.RECHECK_SECONDS`` the watch is allowed again from scratch
(the watcher's portal session still valid, their capability on the asset still held): a
grant revoked, a role removed or a sign-out mid-watch stops it, audited as
``portal.refused``. Watching is not the watcher's activity: it does not keep their portal
session from idling out. A session relayed by another node (or worker) is watched through
it: ``watch_relay`` asks its owner, which checks the watch again (``watch_owner``,
decision 0024). Does not end or change sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import HTMLResponse, Response
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocketDisconnect

from gateway.sessions import store as live_store
from gateway.sessions.broker import Broker
from gateway.sessions.store import LiveSessionRow
from gateway.sessions.tap import OutputTap, Watcher
from gateway.web import portal_forms, watch_relay
from gateway.web.api_access import Caller
from gateway.web.api_sessions import may_watch
from gateway.web.auth import PortalContext, services_of, source_of
from gateway.web.layout import page, sign_in_redirect
from gateway.web.portal_forms import NotPermitted, signed_in
from gateway.web.terminal import MAX_COLS, MAX_ROWS
from gateway.web.ws_guard import (
    NOT_FOUND,
    NOT_FOUND_TEXT,
    RECHECK_SECONDS,
    audit_refusal,
    checked_session,
    refuse,
    signed_in_again,
)

router = APIRouter(include_in_schema=False)
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,40}")
SIGNED_OUT = "your portal sign-in ended"
NO_LONGER = "you may no longer watch this session"
Recheck = Callable[[], Awaitable[str]]  # "" while the watch may go on, else the line shown


async def _watchable(
    conn: HTTPConnection, context: PortalContext, session_id: str
) -> tuple[LiveSessionRow | None, str]:
    """The live session if this user may watch it, else None and the reason (audit only)."""
    if not SESSION_ID.fullmatch(session_id):
        return None, "malformed session id"
    services = services_of(conn)
    async with services.sessions() as db:
        row = await live_store.get(db, session_id)
    if row is None:
        return None, f"no live session {session_id}"
    if not await may_watch(services, Caller.of_session(context.session), row.asset):
        return None, f"session {session_id} on {row.asset}: no watch capability"
    return row, ""


@router.get("/sessions/{session_id}/watch", response_class=HTMLResponse)
async def watch_page(request: Request, session_id: str) -> Response:
    context = await signed_in(request)
    if context is None:
        return sign_in_redirect(request)
    row, why = await _watchable(request, context, session_id[:64])
    if row is None:
        await portal_forms.audit_refusal(request, context.session.username, 404, why)
        raise NotPermitted(request.url.path)
    desktop = row.protocol in ("vnc", "rdp")
    values = {
        "mode": "watch",
        "session_id": row.session_id,
        "asset": row.asset,
        "watched_user": row.username,
        "protocol": row.protocol,
        "node": row.node,
    }
    template = "desktop.html" if desktop else "terminal.html"
    return await page(request, context, template, values, current="")


@router.websocket("/ws/watch/{session_id}")
async def watch_socket(ws: WebSocket, session_id: str) -> None:
    context = await checked_session(ws)
    if context is None:
        return
    user = context.session.username
    row, why = await _watchable(ws, context, session_id[:64])
    if row is None:
        await refuse(ws, user, why, code=NOT_FOUND, shown=NOT_FOUND_TEXT)
        return
    services = services_of(ws)
    await ws.accept()
    if (row.node, row.worker) != (services.node, services.worker):
        # Relayed by another node (or worker): its owner streams it to us (decision 0024).
        await watch_relay.relay_from_owner(ws, context, row, _rechecker(ws, context, row))
        return
    tap = terminal_tap(ws, row.session_id)
    if tap is None:
        await _say(ws, "conduit: this session has no terminal to watch.\r\n")
        await _close(ws, NOT_FOUND, "not watchable here")
        return
    await services.audit.record(
        actor=user, action="session.watched", result="success", target=row.asset,
        source=source_of(ws),
        detail={"session_id": row.session_id, "asset": row.asset, "user": row.username},
    )  # fmt: skip
    await stream_tap(ws, tap, _rechecker(ws, context, row))


def terminal_tap(ws: WebSocket, session_id: str) -> OutputTap | None:
    """The output tap of a terminal session this process relays, or None."""
    broker: Broker | None = getattr(ws.app.state, "broker", None)
    ticket = broker.live_ticket(session_id) if broker is not None else None
    return ticket.tap if ticket is not None else None


async def stream_tap(ws: WebSocket, tap: OutputTap, recheck: Recheck) -> None:
    """The watch itself on an accepted socket: the size, the recent output, then live
    output until the session ends, the watcher leaves or ``recheck`` stops it."""
    watcher, screen = tap.subscribe()
    try:
        cols, rows = min(max(tap.cols, 1), MAX_COLS), min(max(tap.rows, 1), MAX_ROWS)
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await ws.send_text(json.dumps({"type": "start", "cols": cols, "rows": rows}))
            await ws.send_bytes(screen)
            await _follow(ws, watcher, recheck)
    finally:
        watcher.close()


def _rechecker(ws: WebSocket, context: PortalContext, row: LiveSessionRow) -> Recheck:
    """Asks again whether this watch may go on; a stop is audited with the full reason."""

    async def recheck() -> str:
        user, watched = context.session.username, f"watch of {row.session_id} on {row.asset}"
        again = await signed_in_again(ws, context, touch=False)
        if again is None:
            await audit_refusal(ws, user, f"{watched} stopped: portal session over", NOT_FOUND)
            return SIGNED_OUT
        if not await may_watch(services_of(ws), Caller.of_session(again.session), row.asset):
            await audit_refusal(ws, user, f"{watched} stopped: no watch capability", NOT_FOUND)
            return NO_LONGER
        return ""

    return recheck


async def _follow(ws: WebSocket, watcher: Watcher, recheck: Recheck) -> None:
    """Live output and resizes until the session ends, the watcher leaves, falls behind or
    may no longer watch (asked every ``RECHECK_SECONDS``)."""
    loop = asyncio.get_running_loop()
    ignore_input = asyncio.create_task(_until_gone(ws), name="watch-in")
    next_check = loop.time() + RECHECK_SECONDS
    try:
        while True:
            wake = asyncio.create_task(watcher.wake.wait(), name="watch-wake")
            await asyncio.wait({wake, ignore_input}, timeout=max(0.0, next_check - loop.time()),
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            wake.cancel()
            if ignore_input.done():
                return
            stopped = ""
            if loop.time() >= next_check:
                stopped = await recheck()
                next_check = loop.time() + RECHECK_SECONDS
            if stopped:
                await _end(ws, f"watch stopped: {stopped}", stopped)
                return
            await _send_items(ws, watcher)
            if watcher.ended or watcher.dropped:
                line = f"session ended: {watcher.ended}" if watcher.ended else watcher.dropped
                await _end(ws, line, watcher.ended or watcher.dropped)
                return
    finally:
        ignore_input.cancel()
        await asyncio.gather(ignore_input, return_exceptions=True)


async def _end(ws: WebSocket, line: str, reason: str) -> None:
    """The last line on the screen, the reason for the page's status, then the close."""
    await _say(ws, f"\r\nconduit: {line}\r\n")
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await ws.send_text(json.dumps({"type": "end", "reason": reason}))
    await _close(ws, 1000, "watch ended")


async def _send_items(ws: WebSocket, watcher: Watcher) -> None:
    batch: list[bytes] = []
    for item in watcher.take():
        if isinstance(item, bytes):
            batch.append(item)
            continue
        if batch:
            await ws.send_bytes(b"".join(batch))
            batch = []
        cols, rows = min(max(item[0], 1), MAX_COLS), min(max(item[1], 1), MAX_ROWS)
        await ws.send_text(json.dumps({"type": "resize", "cols": cols, "rows": rows}))
    if batch:
        await ws.send_bytes(b"".join(batch))


async def _until_gone(ws: WebSocket) -> None:
    """Read and drop what the watcher sends (the view is read-only) until it leaves."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass


async def _say(ws: WebSocket, line: str) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await ws.send_bytes(line.encode())


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await ws.close(code=code, reason=reason)
