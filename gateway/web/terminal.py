"""The terminal in the browser: its page, its one-time ticket and its websocket.

``GET /connect/{asset}/terminal`` (``?account=NAME`` for a vaulted account other than the
default) shows an xterm.js terminal. Its script asks ``POST .../terminal/ticket`` (session
CSRF token) for a one-time ticket: random, single use, valid ``TICKET_SECONDS``, bound to
the portal session, asset and account, and kept in the database (``identity.socket_tickets``)
so the socket may reach another worker process or node than the POST.
``/ws/terminal?ticket=...&cols=..&rows=..`` checks origin and cookie (``ws_guard``), then
the ticket, which is spent whatever happens next, so a reconnect of the same URL (after a
kill, an expiry, a closed tab) is refused.

Then the session runs the one lifecycle: ``broker.open`` (decision, recording, live
registry, watchdog, ``session.start``), ``broker.connect_ssh`` (vaulted credential, pinned
host key), a PTY of the browser's size, recorded as the first event so the cast header has
it. Binary frames carry bytes both ways (UTF-8 is the browser's and the asset's business:
nothing here decodes); text frames carry small JSON controls (``resize``). Output waiting
for a slow browser pauses reading from the asset above ``SEND_HIGH``. Kill, expiry and
revoke reach ``BrowserTerminal.kill`` like any live session's kill handle: the terminal
shows the one line the SSH front end prints, then the socket closes; ``broker.close`` is
called once however it ends. The terminal belongs to the portal sign-in that opened it:
when that portal session ends (sign-out, expiry, ended from the account page, user
disabled) the session ends with reason ``signed_out`` within ``ws_guard.RECHECK_SECONDS``.
Does not decide access (the broker does).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from collections import deque
from typing import Annotated, Any

import asyncssh
from fastapi import APIRouter, HTTPException, Query, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocketDisconnect

from gateway.errors import ConduitError, NotFoundOrForbidden
from gateway.identity import socket_tickets
from gateway.services import Services
from gateway.sessions.broker import Broker
from gateway.sessions.ticket import Ticket
from gateway.ssh.flow import ReadGate, bound_receive_window, record_paced
from gateway.vault import DEFAULT_ACCOUNT
from gateway.web.auth import PortalContext, require_session_csrf, source_of
from gateway.web.layout import page, sign_in_redirect
from gateway.web.portal_forms import NotPermitted, audit_refusal, signed_in
from gateway.web.ws_guard import (
    NOT_FOUND,
    checked_session,
    close_quietly,
    end_socket,
    refuse,
    until_signed_out,
)
from rbac.names import NAME_RE
from rbac.roles import SiteAction, role_allows
from recordings.terminal import TerminalEvent, resize_payload

router = APIRouter(include_in_schema=False)
log = logging.getLogger(__name__)

TICKET_SECONDS = 30.0
MAX_PENDING = 4096  # tickets asked for and not used yet, in the whole cluster
# ... and per portal session, so one signed-in script cannot use up everyone's tickets
# (a page asks for one per terminal it opens; a few tabs opened at once stay well below).
MAX_PENDING_PER_SESSION = 8
MAX_COLS, MAX_ROWS = 1000, 500
SEND_HIGH = 256 * 1024  # output queued for the browser before the asset is paused
MAX_CONTROL_CHARS = 256  # a text frame is a small JSON control, nothing more
TERM_TYPE = "xterm-256color"
SIGNED_OUT = "signed_out"  # end reason: the portal session that opened the terminal ended
Name = Annotated[str, Query(max_length=64)]


PendingTerminal = socket_tickets.SocketGrant  # what a ticket opens (kept for its callers)


class TerminalTickets:
    """One-time terminal and desktop tickets, kept in the database
    (``identity.socket_tickets``): the POST that issues one and the websocket that presents
    it may reach different worker processes or nodes."""

    def __init__(self, services: Services) -> None:
        self._sessions = services.sessions

    async def issue(self, grant: PendingTerminal, now: dt.datetime) -> str:
        async with self._sessions() as db, db.begin():
            return await socket_tickets.issue(
                db, grant, now, max_pending=MAX_PENDING, per_session=MAX_PENDING_PER_SESSION
            )

    async def redeem(
        self, token: str, portal_session: int, now: dt.datetime
    ) -> tuple[PendingTerminal | None, str]:
        """The ticket's terminal, or None and why not. A ticket is gone once presented."""
        async with self._sessions() as db, db.begin():
            return await socket_tickets.redeem(db, token, portal_session, now)


def tickets_of(conn: HTTPConnection) -> TerminalTickets:
    tickets: TerminalTickets = conn.app.state.terminal_tickets
    return tickets


def _names_ok(asset: str, account: str) -> bool:
    return NAME_RE.fullmatch(asset) is not None and NAME_RE.fullmatch(account) is not None


@router.get("/connect/{asset}/terminal", response_class=HTMLResponse)
async def terminal_page(request: Request, asset: str, account: Name = DEFAULT_ACCOUNT) -> Response:
    """The page; whether the asset may be reached is decided when the terminal opens, and a
    refusal then reads "not found or not permitted" like a missing asset."""
    context = await signed_in(request, SiteAction.USE_ASSETS)
    if context is None:
        return sign_in_redirect(request)
    if not _names_ok(asset, account):
        raise NotPermitted(request.url.path)
    values = {"mode": "terminal", "asset": asset, "account": account}
    return await page(request, context, "terminal.html", values, current="connect")


async def _refused(request: Request, actor: str, status: int, reason: str) -> HTTPException:
    await audit_refusal(request, actor, status, reason)
    return HTTPException(status_code=status, detail=NOT_FOUND if status == 404 else reason)


@router.post("/connect/{asset}/terminal/ticket")
async def terminal_ticket(
    request: Request, asset: str, account: Name = DEFAULT_ACCOUNT
) -> Response:
    return await issue_ticket(request, asset, account, "terminal")


async def issue_ticket(request: Request, asset: str, account: str, purpose: str) -> Response:
    """A one-time ticket for a socket of ``purpose`` on ``asset`` as ``account`` (session CSRF
    token; a refusal is audited). Whether the asset may be reached is the broker's to say."""
    try:
        context = await require_session_csrf(request)
    except HTTPException as exc:
        raise await _refused(request, "", exc.status_code, str(exc.detail)) from None
    user = context.session.username
    if not role_allows(context.session.roles, SiteAction.USE_ASSETS):
        raise await _refused(request, user, 404, f"roles lack {SiteAction.USE_ASSETS.value}")
    if not _names_ok(asset, account):
        raise await _refused(request, user, 404, "invalid asset or account name")
    now = request.app.state.services.clock()
    expires = now + dt.timedelta(seconds=TICKET_SECONDS)
    grant = PendingTerminal(
        context.session.session_id, user, asset, account, expires, purpose=purpose
    )
    try:
        token = await tickets_of(request).issue(grant, now)
    except ConduitError as exc:
        raise await _refused(request, user, 503, exc.detail) from None
    return JSONResponse({"ticket": token, "expires_in": int(TICKET_SECONDS)})


async def redeem_ticket(
    ws: WebSocket, context: PortalContext, purpose: str
) -> PendingTerminal | None:
    """The socket's one-time ticket, spent now, if it was issued to this portal session for
    ``purpose`` ("terminal", "desktop"); else the socket is refused (audited) and None."""
    token = ws.query_params.get("ticket", "")[:100]
    now = ws.app.state.services.clock()
    grant, why = await tickets_of(ws).redeem(token, context.session.session_id, now)
    if grant is not None and grant.purpose != purpose:
        why = f"{grant.purpose} ticket presented to the {purpose} socket"
        grant = None
    if grant is None:
        shown = f"this {purpose} has ended or its link expired"
        await refuse(ws, context.session.username, why, shown=shown)
    return grant


def terminal_size(query: Any) -> tuple[int, int] | None:
    """``cols`` 1..1000 and ``rows`` 1..500 from the socket's query, else None."""
    cols, rows = query.get("cols", ""), query.get("rows", "")
    if not (cols.isdigit() and rows.isdigit() and len(cols) <= 4 and len(rows) <= 4):
        return None
    c, r = int(cols), int(rows)
    return (c, r) if 1 <= c <= MAX_COLS and 1 <= r <= MAX_ROWS else None


@router.websocket("/ws/terminal")
async def terminal_socket(ws: WebSocket) -> None:
    context = await checked_session(ws)
    if context is None:
        return
    user = context.session.username
    grant = await redeem_ticket(ws, context, "terminal")
    if grant is None:
        return
    size = terminal_size(ws.query_params)
    if size is None:
        await refuse(ws, user, "terminal size out of range", shown="bad terminal size")
        return
    broker: Broker | None = getattr(ws.app.state, "broker", None)
    await ws.accept()
    if broker is None:
        await ws.close(code=1011, reason="terminals are not served here")
        return
    await BrowserTerminal(ws, broker, grant, size, source_of(ws), context).run()


class _Pausable:
    """Reading from the browser, as a gate can pause it: the receive loop waits on it."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()

    def pause_reading(self) -> None:
        self.open.clear()

    def resume_reading(self) -> None:
        self.open.set()


class _AssetSide(asyncssh.SSHClientSession[bytes]):
    def __init__(self, terminal: BrowserTerminal) -> None:
        self._terminal = terminal

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        bound_receive_window(chan)  # only output passed on re-opens the window (flow.py)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self._terminal.from_asset(data)

    def pause_writing(self) -> None:
        self._terminal.browser_reads.hold("asset")

    def resume_writing(self) -> None:
        self._terminal.browser_reads.release("asset")

    def connection_lost(self, exc: Exception | None) -> None:
        self._terminal.asset_closed()


class BrowserTerminal:
    """One browser terminal session: the websocket, the asset's channel, the ticket."""

    def __init__(
        self,
        ws: WebSocket,
        broker: Broker,
        grant: PendingTerminal,
        size: tuple[int, int],
        source: str,
        portal: PortalContext,
    ) -> None:
        self.ws, self.broker, self.grant, self.size, self.source = ws, broker, grant, size, source
        self.portal = portal
        self._typed = False  # input since the last portal-session check
        self.ticket: Ticket | None = None
        self.end_line = ""  # set by a kill: the reason the user sees
        self._conn: asyncssh.SSHClientConnection | None = None
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None
        self._out: deque[bytes] = deque()
        self._out_bytes = 0
        self._wake = asyncio.Event()
        self._asset_done = False
        self._browser_gate = _Pausable()
        self.browser_reads = ReadGate()
        self.browser_reads.bind(self._browser_gate)
        self._asset_reads = ReadGate()

    async def kill(self, line: str) -> None:
        """The kill handle in the live registry (kill, expiry, revoke, idle, shutdown)."""
        self.end_line = line
        if self._conn is not None:
            self._conn.close()
        self._wake.set()

    async def run(self) -> None:
        g = self.grant
        try:
            self.ticket = await self.broker.open(
                g.username, g.asset, "ssh", protocol="web-ssh", source=self.source,
                kill=self.kill, account=g.account,
            )  # fmt: skip
        except ConduitError as exc:
            code = 4404 if isinstance(exc, NotFoundOrForbidden) else 1011
            await self._say(f"conduit: {exc.message}\r\n")
            await close_quietly(self.ws, code, exc.message)
            return
        reason = "upstream_failed"
        try:
            reason = await self._relay(self.ticket)
        finally:
            if self._conn is not None:
                self._conn.close()
            await self.broker.close(self.ticket, reason)

    async def _relay(self, ticket: Ticket) -> str:
        """Connect and relay until one side ends; the end reason for ``broker.close``."""
        try:
            self._conn = await self.broker.connect_ssh(ticket)
            if not self.end_line:
                await self._open_channel(ticket)
        except (ConduitError, asyncssh.Error, OSError) as exc:
            message = exc.message if isinstance(exc, ConduitError) else "the asset is not reachable"
            if not self.end_line:
                await self._say(f"conduit: {message}\r\n")
                await close_quietly(self.ws, 1011, message)
                return "upstream_failed"
        reason = "client_closed"
        if not self.end_line:
            guard = asyncio.create_task(self._while_signed_in(ticket), name="terminal-portal")
            try:
                reason = await self._both_ways()
            finally:
                guard.cancel()
                await asyncio.gather(guard, return_exceptions=True)
        if self.end_line:
            await self._say(f"\r\nconduit: session ended: {self.end_line}\r\n")
            await end_socket(self.ws, self.end_line, 1000, "session ended")
        return reason

    async def _while_signed_in(self, ticket: Ticket) -> None:
        """End the session once the portal session that opened it is over. Typing counts as
        portal activity (keeps its idle timer); output alone does not."""
        name = f"terminal {ticket.session_id}"
        await until_signed_out(self.ws, self.portal, self._typed_since, name)
        await self.broker.kill(ticket.session_id, SIGNED_OUT)

    def _typed_since(self) -> bool:
        """Whether the person typed since the last portal-session check; forgets it."""
        typed, self._typed = self._typed, False
        return typed

    async def _open_channel(self, ticket: Ticket) -> None:
        cols, rows = self.size
        # First, before any output: the cast header and the search screen get this size.
        ticket.writer.record(TerminalEvent.RESIZE, resize_payload(cols, rows))
        if ticket.tap is not None:
            ticket.tap.resize(cols, rows)
        assert self._conn is not None  # noqa: S101 - connected just before
        chan, _ = await self._conn.create_session(
            lambda: _AssetSide(self), term_type=TERM_TYPE, term_size=(cols, rows, 0, 0),
            encoding=None,
        )  # fmt: skip
        self._chan = chan
        self._asset_reads.bind(chan)

    async def _both_ways(self) -> str:
        to_browser = asyncio.create_task(self._to_browser(), name="terminal-out")
        from_browser = asyncio.create_task(self._from_browser(), name="terminal-in")
        done, pending = await asyncio.wait(
            {to_browser, from_browser}, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if from_browser in done and not self.end_line:
            return "client_closed"
        if not self.end_line:
            await close_quietly(self.ws, 1000, "session closed")
        return "closed"

    # -- asset -> browser --------------------------------------------------------------------
    def from_asset(self, data: bytes) -> None:
        ticket = self.ticket
        if ticket is None:
            return
        ticket.live.bytes_down += len(data)
        self.broker.activity(ticket)
        record_paced(ticket.writer, TerminalEvent.OUTPUT, data, self._asset_reads,
                     self.broker.tasks)  # fmt: skip
        if ticket.tap is not None:
            ticket.tap.feed(data)
        self._out.append(data)
        self._out_bytes += len(data)
        if self._out_bytes > SEND_HIGH:
            self._asset_reads.hold("browser")
        self._wake.set()

    def asset_closed(self) -> None:
        self._asset_done = True
        self._wake.set()

    async def _to_browser(self) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):  # browser gone
            await self._send_output()

    async def _send_output(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._out:
                chunk = b"".join(self._out)
                self._out.clear()
                self._out_bytes = 0
                await self.ws.send_bytes(chunk)  # waits while the browser's socket is full
                self._asset_reads.release("browser")
            if (self.end_line or self._asset_done) and not self._out:
                return

    # -- browser -> asset --------------------------------------------------------------------
    async def _from_browser(self) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):  # browser gone
            await self._read_input()

    async def _read_input(self) -> None:
        while True:
            await self._browser_gate.open.wait()
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data, text = message.get("bytes"), message.get("text")
            if data:
                self._to_asset(data)
            elif text:
                await self._control(text)

    def _to_asset(self, data: bytes) -> None:
        ticket, chan = self.ticket, self._chan
        if ticket is None or chan is None:
            return
        ticket.live.bytes_up += len(data)
        self._typed = True
        self.broker.activity(ticket)
        if ticket.record_input:
            record_paced(ticket.writer, TerminalEvent.INPUT, data, self.browser_reads,
                         self.broker.tasks)  # fmt: skip
        chan.write(data)

    async def _control(self, text: str) -> None:
        """A JSON control frame from the page: only ``resize`` exists."""
        size = _resize_of(text)
        if size is None:
            await self.ws.send_text(json.dumps({"type": "error", "message": "bad control"}))
            return
        ticket, chan = self.ticket, self._chan
        if ticket is None or chan is None or size == self.size:
            return
        self.size = size
        ticket.writer.record(TerminalEvent.RESIZE, resize_payload(*size))
        if ticket.tap is not None:
            ticket.tap.resize(*size)
        chan.change_terminal_size(size[0], size[1])

    # -- helpers -----------------------------------------------------------------------------
    async def _say(self, line: str) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await self.ws.send_bytes(line.encode())


def _resize_of(text: str) -> tuple[int, int] | None:
    """``{"type": "resize", "cols": C, "rows": R}`` within bounds, else None."""
    if len(text) > MAX_CONTROL_CHARS:
        return None
    try:
        control = json.loads(text)
    except ValueError:
        return None
    if not isinstance(control, dict) or control.get("type") != "resize":
        return None
    cols, rows = control.get("cols"), control.get("rows")
    if type(cols) is not int or type(rows) is not int:
        return None
    return (cols, rows) if 1 <= cols <= MAX_COLS and 1 <= rows <= MAX_ROWS else None
