"""The desktop in the browser: its page, its one-time ticket, its websocket and live watch.

``GET /connect/{asset}/desktop`` shows noVNC (``static/desktop.js``). Its script asks
``POST .../desktop/ticket`` (session CSRF token) for a one-time ticket (the terminal's:
``terminal.TerminalTickets``, purpose ``desktop``), then opens ``/ws/desktop?ticket=...``,
which checks origin and cookie (``ws_guard``) and spends the ticket. The session then runs
the one lifecycle: ``broker.open_desktop`` (decision on ``vnc``/``rdp`` from the asset's
protocol, the clipboard and file-transfer grants, recording, live registry, watchdog),
``broker.connect_desktop`` (vaulted password, pinned certificate; an RDP asset gets its own
renderer), then ``bridge.DesktopRelay`` between the browser and the target. At most
``[desktop] max_sessions`` desktops run on this process at once; one more is refused with
a message and audited.

Kill, expiry, revoke and idle reach ``BrowserDesktop.kill`` like any session's kill handle:
the page gets the one-line reason (a JSON text frame, drawn over the desktop), then the
socket closes. The desktop belongs to the portal sign-in that opened it (``signed_out``).

``/ws/watch-desktop/{id}`` is the watch view of a live desktop relayed here: same rule as a
terminal's watch (``watch.py``), a handshake with the desktop's current size, a fresh full
update, then the session's updates; nothing the watcher sends is forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import HTMLResponse, Response
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocketDisconnect

from gateway.desktop import rfb
from gateway.desktop.bridge import DesktopRelay, ViewerRefused, watch
from gateway.desktop.renderer import RendererEnd
from gateway.desktop.upstream import renderer_end_words
from gateway.errors import ConduitError, NotFoundOrForbidden, UpstreamError
from gateway.sessions.broker import Broker
from gateway.sessions.ticket import Ticket
from gateway.vault import DEFAULT_ACCOUNT
from gateway.web import watch as watch_pages
from gateway.web import watch_relay
from gateway.web.auth import PortalContext, services_of, source_of
from gateway.web.layout import page, sign_in_redirect
from gateway.web.portal_forms import NotPermitted, signed_in
from gateway.web.terminal import (
    SIGNED_OUT,
    PendingTerminal,
    _names_ok,
    issue_ticket,
    redeem_ticket,
)
from gateway.web.ws_guard import (
    NOT_FOUND,
    NOT_FOUND_TEXT,
    RECHECK_SECONDS,
    checked_session,
    end_socket,
    refuse,
    until_signed_out,
)
from rbac.roles import SiteAction

router = APIRouter(include_in_schema=False)
log = logging.getLogger(__name__)

MIN_SIDE, MAX_WIDTH, MAX_HEIGHT = 64, 3840, 2160  # the browser's screen, as the page sends it
DESKTOP_PROTOCOLS = ("vnc", "rdp")


class Desktops:
    """The desktops this process relays: the per-node cap and the watch view's lookup."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0  # sockets past the cap, from the ticket to the session's end
        self.relays: dict[str, DesktopRelay] = {}  # session id -> relay, once relaying

    def reserve(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1


def desktops_of(conn: HTTPConnection) -> Desktops:
    desktops: Desktops = conn.app.state.desktops
    return desktops


@router.get("/connect/{asset}/desktop", response_class=HTMLResponse)
async def desktop_page(request: Request, asset: str) -> Response:
    """The page; whether the asset may be reached is decided when the desktop opens."""
    context = await signed_in(request, SiteAction.USE_ASSETS)
    if context is None:
        return sign_in_redirect(request)
    if not _names_ok(asset, DEFAULT_ACCOUNT):
        raise NotPermitted(request.url.path)
    values = {"mode": "desktop", "asset": asset, "account": DEFAULT_ACCOUNT}
    return await page(request, context, "desktop.html", values, current="connect")


@router.post("/connect/{asset}/desktop/ticket")
async def desktop_ticket(request: Request, asset: str) -> Response:
    return await issue_ticket(request, asset, DEFAULT_ACCOUNT, "desktop")


def screen_size(query: Any) -> tuple[int, int] | None:
    """``width`` 64..3840 and ``height`` 64..2160 from the socket's query, else None."""
    width, height = query.get("width", ""), query.get("height", "")
    if not (width.isdigit() and height.isdigit() and len(width) <= 5 and len(height) <= 5):
        return None
    w, h = int(width), int(height)
    return (w, h) if MIN_SIDE <= w <= MAX_WIDTH and MIN_SIDE <= h <= MAX_HEIGHT else None


@router.websocket("/ws/desktop")
async def desktop_socket(ws: WebSocket) -> None:
    context = await checked_session(ws)
    if context is None:
        return
    user = context.session.username
    grant = await redeem_ticket(ws, context, "desktop")
    if grant is None:
        return
    size = screen_size(ws.query_params)
    if size is None:
        await refuse(ws, user, "desktop size out of range", shown="bad screen size")
        return
    broker: Broker | None = getattr(ws.app.state, "broker", None)
    desktops = desktops_of(ws)
    if broker is None:
        await ws.accept()
        await ws.close(code=1011, reason="desktops are not served here")
        return
    if not desktops.reserve():
        reason = f"desktop session limit of this node ({desktops.limit}) reached"
        # Audited before the close: once the page sees the refusal, the audit holds it.
        await services_of(ws).audit.record(
            actor=user, action="session.denied", result="denied", target=grant.asset,
            source=source_of(ws), detail={"protocol": "desktop", "reason": reason},
        )  # fmt: skip
        await refuse(ws, user, reason, code=1013, shown="too many desktops open here; try later")
        return
    try:
        await ws.accept()
        await BrowserDesktop(ws, broker, grant, size, source_of(ws), context, desktops).run()
    finally:
        desktops.release()


class _Socket:
    """The browser as ``bridge.Viewer``: binary frames; text frames are dropped here."""

    def __init__(self, ws: WebSocket, on_input: Any = None) -> None:
        self.ws = ws
        self.on_input = on_input

    async def send(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def receive(self) -> bytes | None:
        while True:
            try:
                message = await self.ws.receive()
            except (WebSocketDisconnect, RuntimeError, OSError):
                return None
            if message["type"] == "websocket.disconnect":
                return None
            data = message.get("bytes")
            if data:
                if self.on_input is not None:
                    self.on_input()
                return bytes(data)


class BrowserDesktop:
    """One browser desktop session: the websocket, the target, the ticket."""

    def __init__(
        self,
        ws: WebSocket,
        broker: Broker,
        grant: PendingTerminal,
        size: tuple[int, int],
        source: str,
        portal: PortalContext,
        desktops: Desktops,
    ) -> None:
        self.ws, self.broker, self.grant, self.size = ws, broker, grant, size
        self.source, self.portal, self.desktops = source, portal, desktops
        self.ticket: Ticket | None = None
        self.end_line = ""
        self.upstream: Any = None
        self._used = False  # input since the last portal-session check
        self._ended = asyncio.Event()

    async def kill(self, line: str) -> None:
        """The kill handle in the live registry (kill, expiry, revoke, idle, shutdown)."""
        self.end_line = line
        self._ended.set()

    async def run(self) -> None:
        g = self.grant
        try:
            self.ticket, grants = await self.broker.open_desktop(
                g.username, g.asset, source=self.source, kill=self.kill
            )
        except ConduitError as exc:
            code = 4404 if isinstance(exc, NotFoundOrForbidden) else 1011
            await self._end_page(exc.message, code)
            return
        ticket = self.ticket
        reason = "upstream_failed"
        try:
            reason = await self._session(ticket, grants)
        finally:
            if self.upstream is not None:
                with contextlib.suppress(Exception):
                    await self.upstream.close()
            self.desktops.relays.pop(ticket.session_id, None)
            await self.broker.close(ticket, reason)

    async def _session(self, ticket: Ticket, grants: frozenset[str]) -> str:
        try:
            self.upstream = await self.broker.connect_desktop(ticket, grants, self.size)
        except (ConduitError, OSError) as exc:
            message = exc.message if isinstance(exc, ConduitError) else "the asset is not reachable"
            if not self.end_line:
                await self._end_page(message, 1011)
            return "upstream_failed"
        if self.end_line:
            await self._end_page(self.end_line, 1000)
            return "closed"
        relay = DesktopRelay(
            self.upstream.connection,
            ticket.writer,
            name=ticket.asset,
            record_input=ticket.record_input,
            grants=grants,
            on_activity=lambda: self._activity(ticket),
            keyframe_seconds=services_of(self.ws).settings.desktop.keyframe_seconds,
        )
        viewer = _Socket(self.ws)
        greeting = asyncio.create_task(relay.greet(viewer), name="desktop-greet")
        killed = asyncio.create_task(self._ended.wait(), name="desktop-killed")
        await asyncio.wait({greeting, killed}, return_when=asyncio.FIRST_COMPLETED)
        killed.cancel()
        if not greeting.done():
            greeting.cancel()
            await asyncio.gather(greeting, return_exceptions=True)
            await self._end_page(self.end_line, 1000)
            return "closed"
        error = greeting.exception()
        if error is not None:
            if not isinstance(error, (rfb.RFBError, TimeoutError, ConnectionError)):
                raise error
            log.info("desktop %s: viewer handshake failed: %s", ticket.session_id, error)
            return "client_closed"
        self.desktops.relays[ticket.session_id] = relay
        return await self._run_relay(ticket, relay, viewer, greeting.result())

    def _activity(self, ticket: Ticket) -> None:
        self._used = True
        self.broker.activity(ticket)

    async def _run_relay(
        self, ticket: Ticket, relay: DesktopRelay, viewer: _Socket, parser: rfb.ClientStreamParser
    ) -> str:
        tasks = {
            asyncio.create_task(relay.run(viewer, parser), name="desktop-relay"): "relay",
            asyncio.create_task(self._ended.wait(), name="desktop-killed"): "killed",
            asyncio.create_task(self._while_signed_in(ticket), name="desktop-portal"): "portal",
        }
        renderer_end = getattr(self.upstream, "renderer_end", None)
        if renderer_end is not None:  # an RDP renderer: its end is the session's
            tasks[renderer_end] = "renderer"
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            if tasks[task] != "renderer":
                task.cancel()
        await asyncio.gather(
            *(t for t in pending if tasks[t] != "renderer"), return_exceptions=True
        )
        first = next(iter(done))
        what = tasks[first]
        if what == "renderer" and not self.end_line:
            end = first.result()
            assert isinstance(end, RendererEnd)  # noqa: S101 - the renderer's future holds one
            reason, shown = renderer_end_words(end)
            await self._end_page(shown, 1000)
            return reason
        if what == "relay" and first.exception() is None and not self.end_line:
            reason = str(first.result())
            shown = {
                "client_closed": "",
                "closed": "the desktop closed the connection",
                "protocol_error": "the desktop sent something malformed; session ended",
            }.get(reason, reason)
            if shown:
                await self._end_page(shown, 1000)
            return reason
        if self.end_line:
            await self._end_page(self.end_line, 1000)
        return "closed" if what != "relay" else "upstream_failed"

    async def _while_signed_in(self, ticket: Ticket) -> None:
        """End the session once the portal sign-in that opened it is over; returns when the
        kill has reached this desktop."""
        name = f"desktop {ticket.session_id}"
        await until_signed_out(self.ws, self.portal, self._used_since, name)
        await self.broker.kill(ticket.session_id, SIGNED_OUT)
        await self._ended.wait()

    def _used_since(self) -> bool:
        """Whether the person used the desktop since the last portal-session check; forgets it."""
        used, self._used = self._used, False
        return used

    async def _end_page(self, line: str, code: int) -> None:
        """The reason for the page (drawn over the desktop), then the close."""
        await end_socket(self.ws, line, code)


# -- watch -----------------------------------------------------------------------------------
@router.websocket("/ws/watch-desktop/{session_id}")
async def watch_desktop_socket(ws: WebSocket, session_id: str) -> None:
    context = await checked_session(ws)
    if context is None:
        return
    user = context.session.username
    row, why = await watch_pages._watchable(ws, context, session_id[:64])
    if row is None:
        await refuse(ws, user, why, code=NOT_FOUND, shown=NOT_FOUND_TEXT)
        return
    services = services_of(ws)
    await ws.accept()
    recheck = watch_pages._rechecker(ws, context, row)
    if (row.node, row.worker) != (services.node, services.worker):
        # Relayed by another node (or worker): its owner serves the watch (decision 0024).
        await watch_relay.relay_from_owner(ws, context, row, recheck, two_way=True)
        return
    relay = desktops_of(ws).relays.get(row.session_id)
    if relay is None:
        await _close(ws, NOT_FOUND, "this session has no desktop to watch")
        return
    await services.audit.record(
        actor=user, action="session.watched", result="success", target=row.asset,
        source=source_of(ws),
        detail={"session_id": row.session_id, "asset": row.asset, "user": row.username},
    )  # fmt: skip
    await serve_watch(ws, relay, user, row.session_id, recheck)


async def serve_watch(
    ws: WebSocket, relay: DesktopRelay, user: str, session_id: str, recheck: watch_pages.Recheck
) -> None:
    """The watch itself on an accepted socket: the watcher's RFB handshake, then the
    session's updates until it ends, the watcher leaves or ``recheck`` stops it."""
    viewer = _Socket(ws)
    watching = asyncio.create_task(watch(relay, viewer, user), name="desktop-watch")

    async def allowed() -> str:
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            stopped = await recheck()
            if stopped:
                return stopped

    checking = asyncio.create_task(allowed(), name="desktop-watch-check")
    done, pending = await asyncio.wait({watching, checking}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    line = "the session ended"
    if checking in done and checking.exception() is None:
        line = f"watch stopped: {checking.result()}"
    elif watching in done and watching.exception() is None and watching.result() == "left":
        return
    elif watching in done and watching.exception() is not None:
        error = watching.exception()
        if isinstance(error, (ViewerRefused, UpstreamError)):
            line = f"watch refused: {error}"
        elif isinstance(error, (rfb.RFBError, TimeoutError, ConnectionError)):
            line = "the watch ended: the viewer broke off"
        else:
            log.error("desktop watch of %s failed", session_id, exc_info=error)
            line = "the watch failed; see the gateway's log"
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await ws.send_text(json.dumps({"type": "end", "reason": line}))
    await _close(ws, 1000, "watch ended")


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await ws.close(code=code, reason=reason[:120])
