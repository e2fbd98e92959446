"""Watching a terminal session that another node relays: this node's side (decision 0024).

The watcher's portal socket landed here, the session's owner is another node (or another
worker of this one). Having decided the watch is allowed (``watch._watchable``), this node
stores a one-time grant (``watch_grants.issue``), opens the owner's internal watch socket
(``watch_owner``) at the address the owner published in ``nodes``, trusting exactly the
certificate it published there, and presents the grant in a header. The owner checks the
watch again and streams what a local watch would send; this node forwards every frame to the
watcher unchanged, keeps asking whether the watch may go on (``recheck``), and ends it when
the owner's socket ends (the session ended, or the owner went away). What a terminal watcher
sends is dropped here; a desktop watcher's frames (its RFB handshake and update requests) go
to the owner, which drops its input as for a local watch. Does not decide who may watch and
reads no tap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import Awaitable, Callable

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from gateway.desktop.rfb_messages import MAX_UPDATE_BYTES
from gateway.sessions import watch_grants
from gateway.sessions.store import LiveSessionRow
from gateway.web.auth import PortalContext, services_of, source_of
from gateway.web.ws_guard import NOT_FOUND, NOT_FOUND_TEXT, RECHECK_SECONDS, audit_refusal

log = logging.getLogger(__name__)
GRANT_HEADER = "X-Conduit-Watch-Grant"
OWNER_PATH = "/ws/watch-owner/"
OTHER_WORKER = 4409  # the owner's port reached a sibling worker: try again
# Workers share the owner's port, so a connection reaches the right one by chance; this many
# tries miss one of 8 workers with probability (7/8)^64 < 2e-4.
MAX_ATTEMPTS = 64
OPEN_TIMEOUT = 5.0
# The owner's largest frame: one desktop FramebufferUpdate (a terminal's batches are at most
# a watcher queue, 1 MiB). At most MAX_QUEUE frames wait here: a slow watcher holds the owner
# back (TCP), whose own bounded queue then drops it, as for a local watch.
MAX_FRAME = MAX_UPDATE_BYTES + (1 << 20)
MAX_QUEUE = 2
Recheck = Callable[[], Awaitable[str]]


def _tls(contact: watch_grants.Contact) -> ssl.SSLContext | None:
    """Trust exactly the owner's published certificate (no CA, no host name)."""
    if not contact.certificate:
        return None
    context = ssl.create_default_context(cadata=contact.certificate)
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


async def _open_owner(
    contact: watch_grants.Contact, session_id: str, token: str
) -> tuple[ClientConnection, str | bytes] | None:
    """The owner's internal watch socket and its first frame, or None when the owner cannot
    be reached or refused."""
    tls = _tls(contact)
    url = f"{'wss' if tls else 'ws'}://{contact.address}{OWNER_PATH}{session_id}"
    for _ in range(MAX_ATTEMPTS):
        try:
            owner = await connect(
                url, ssl=tls, additional_headers={GRANT_HEADER: token},
                open_timeout=OPEN_TIMEOUT, max_size=MAX_FRAME, max_queue=MAX_QUEUE,
                compression=None,
            )  # fmt: skip
        except (OSError, TimeoutError, InvalidHandshake, InvalidStatus) as exc:
            log.warning("cannot reach %s to relay a watch: %s", contact.address, exc)
            return None
        first = await _first_frame(owner)
        if first is None and owner.close_code == OTHER_WORKER:
            continue
        if first is None:
            return None
        return owner, first
    return None


async def _first_frame(owner: ClientConnection) -> str | bytes | None:
    """The owner's first frame (its ``start``), None if it closed instead (a refusal)."""
    try:
        return await asyncio.wait_for(owner.recv(), OPEN_TIMEOUT)
    except (ConnectionClosed, TimeoutError):
        await owner.close()
        return None


async def relay_from_owner(
    ws: WebSocket,
    context: PortalContext,
    row: LiveSessionRow,
    recheck: Recheck,
    *,
    two_way: bool = False,
) -> None:
    """Relay the owner's watch of ``row`` to the accepted socket ``ws`` until it ends.
    ``two_way``: the watcher's binary frames go to the owner too (a desktop watcher's RFB
    handshake and update requests; the owner drops its input, as for a local watch)."""
    services = services_of(ws)
    user = context.session.username
    async with services.sessions() as db, db.begin():
        contact = await watch_grants.contact_of(db, row.node, row.worker)
        token = ""
        if contact is not None:
            token = await watch_grants.issue(
                db, row, portal_session_id=context.session.session_id, watcher=user,
                source=source_of(ws), via_node=services.node, now=services.clock(),
            )  # fmt: skip
    opened = await _open_owner(contact, row.session_id, token) if contact is not None else None
    if opened is None:
        why = f"watch of {row.session_id}: its owner node {row.node} could not be reached"
        if contact is None:
            why = f"watch of {row.session_id}: owner node {row.node} publishes no portal address"
        await audit_refusal(ws, user, why, NOT_FOUND)
        await _say(ws, f"conduit: this session is relayed by node {row.node}, which could not "
                       "be reached for a watch; watch it there.\r\n")  # fmt: skip
        await _close(ws, NOT_FOUND, NOT_FOUND_TEXT)
        return
    owner, first = opened
    try:
        await _forward(ws, first)
        await _relay(ws, owner, recheck, two_way)
    finally:
        await owner.close()


async def _relay(ws: WebSocket, owner: ClientConnection, recheck: Recheck, two_way: bool) -> None:
    pump = asyncio.create_task(_pump(ws, owner), name="watch-relay-pump")
    gone = asyncio.create_task(_until_gone(ws, owner if two_way else None), name="watch-relay-in")
    checks = asyncio.create_task(_until_stopped(recheck), name="watch-relay-check")
    done, pending = await asyncio.wait({pump, gone, checks}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if checks in done and checks.exception() is None:
        stopped = checks.result()
        await _end(ws, f"watch stopped: {stopped}", stopped)
    elif pump in done and (pump.exception() is not None or not pump.result()):
        # The owner went away without ending the watch: its node stopped or died.
        await _end(ws, "the watch ended: the session's node went away", "owner node gone")
    else:
        await _close(ws, 1000, "watch ended")


async def _pump(ws: WebSocket, owner: ClientConnection) -> bool:
    """Forward the owner's frames; True when the owner ended the watch itself (it sent an
    ``end`` or closed normally), False when its socket broke."""
    try:
        async for frame in owner:
            await _forward(ws, frame)
    except ConnectionClosed:
        return False
    return owner.close_code == 1000


async def _forward(ws: WebSocket, frame: str | bytes) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        if isinstance(frame, bytes):
            await ws.send_bytes(frame)
        else:
            await ws.send_text(frame)


async def _until_stopped(recheck: Recheck) -> str:
    while True:
        await asyncio.sleep(RECHECK_SECONDS)
        stopped = await recheck()
        if stopped:
            return stopped


async def _until_gone(ws: WebSocket, owner: ClientConnection | None) -> None:
    """Until the watcher leaves: its binary frames go to ``owner`` if given, else nowhere."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError, ConnectionClosed):
        while (message := await ws.receive())["type"] != "websocket.disconnect":
            data = message.get("bytes")
            if owner is not None and data:
                await owner.send(bytes(data))


async def _end(ws: WebSocket, line: str, reason: str) -> None:
    await _say(ws, f"\r\nconduit: {line}\r\n")
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await ws.send_text(json.dumps({"type": "end", "reason": reason}))
    await _close(ws, 1000, "watch ended")


async def _say(ws: WebSocket, line: str) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await ws.send_bytes(line.encode())


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await ws.close(code=code, reason=reason[:120])
