"""Watching a terminal session that another node relays: this node's side (decision 0024).

The watcher's portal socket landed here, the session's owner is another node (or another
worker of this one). Having decided the watch is allowed (``watch._watchable``), this node
stores a one-time grant (``watch_grants.issue``), opens the owner's internal watch socket
(``watch_owner``) at the address the owner published in ``nodes``, checks that the TLS peer's
leaf certificate is exactly the one published there (its SHA-256, before anything is sent),
and only then presents the grant in a header. An owner that publishes no certificate (a
portal without TLS) is refused: the grant never travels in clear text. The owner checks the
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
import hashlib
import hmac
import json
import logging
import math
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

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
# Workers share the owner's port, so a connection reaches the right one by chance: with W
# workers, W * ln(1000) tries miss with probability (1 - 1/W)^tries < e^-ln(1000) = 1/1000.
MISS_LOG = math.log(1000)
MAX_WORKERS = 64  # config: server.workers <= 64; a row count above that is not trusted
OPEN_TIMEOUT = 5.0
# The owner's largest frame: one desktop FramebufferUpdate (a terminal's batches are at most
# a watcher queue, 1 MiB). At most MAX_QUEUE frames wait here: a slow watcher holds the owner
# back (TCP), whose own bounded queue then drops it, as for a local watch.
MAX_FRAME = MAX_UPDATE_BYTES + (1 << 20)
MAX_QUEUE = 2
Recheck = Callable[[], Awaitable[str]]


def attempts_for(workers: int) -> int:
    """Connections to try so that one reaches the right one of ``workers`` sharing a port,
    missing with probability below 1/1000."""
    return math.ceil(min(max(workers, 1), MAX_WORKERS) * MISS_LOG)


class PinMismatch(InvalidHandshake):
    """The owner's TLS peer is not the certificate it published (or has none)."""


class _Pinned(ClientConnection):
    """A client connection that checks the TLS peer's leaf against ``pin`` after the TLS
    handshake and before its opening request (which carries the grant) is sent."""

    pin = b""

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        tls = self.transport.get_extra_info("ssl_object")
        peer = tls.getpeercert(binary_form=True) if isinstance(tls, ssl.SSLObject) else None
        if (
            not self.pin
            or not peer
            or not hmac.compare_digest(hashlib.sha256(peer).digest(), self.pin)
        ):
            raise PinMismatch("the owner's certificate is not the one it published")
        await super().handshake(*args, **kwargs)


def _pinned(pin: bytes) -> type[ClientConnection]:
    return type("PinnedConnection", (_Pinned,), {"pin": pin})


def _tls() -> ssl.SSLContext:
    """TLS without CA or host name checks: the pin (``_Pinned``) is the one check."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _open_owner(
    contact: watch_grants.Contact, session_id: str, token: str
) -> tuple[ClientConnection, str | bytes] | str:
    """The owner's internal watch socket and its first frame, or why not (the owner cannot
    be reached, is not the published certificate, or refused)."""
    if not contact.certificate:
        log.warning("refused to relay a watch from %s: it publishes no TLS", contact.address)
        return "it publishes no TLS certificate (its portal has no TLS)"
    try:
        pin = watch_grants.pin_of(contact.certificate)
    except ValueError:
        return "its published certificate cannot be read"
    url = f"wss://{contact.address}{OWNER_PATH}{session_id}"
    clock = asyncio.get_running_loop().time
    give_up = clock() + watch_grants.GRANT_SECONDS  # the grant is spent or expired by then
    for _ in range(attempts_for(contact.workers)):
        if clock() > give_up:
            break
        try:
            owner = await connect(
                url, ssl=_tls(), additional_headers={GRANT_HEADER: token},
                open_timeout=OPEN_TIMEOUT, max_size=MAX_FRAME, max_queue=MAX_QUEUE,
                compression=None, create_connection=_pinned(pin),
            )  # fmt: skip
        except PinMismatch:
            log.warning("refused to relay a watch: %s is not the published certificate",
                        contact.address)  # fmt: skip
            return "its certificate is not the one it published"
        except (OSError, TimeoutError, InvalidHandshake, InvalidStatus) as exc:
            log.warning("cannot reach %s to relay a watch: %s", contact.address, exc)
            return "it could not be reached"
        first = await _first_frame(owner)
        if first is None and owner.close_code == OTHER_WORKER:
            continue
        if first is None:
            return "it refused the watch"
        return owner, first
    return "its worker owning the session could not be reached"


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
        if contact is not None and contact.certificate:
            token = await watch_grants.issue(
                db, row, portal_session_id=context.session.session_id, watcher=user,
                source=source_of(ws), via_node=services.node, now=services.clock(),
            )  # fmt: skip
    opened: tuple[ClientConnection, str | bytes] | str = "it publishes no portal address"
    if contact is not None:
        opened = await _open_owner(contact, row.session_id, token)
    if isinstance(opened, str):
        await audit_refusal(
            ws, user, f"watch of {row.session_id}: owner node {row.node}: {opened}", NOT_FOUND
        )
        await _say(ws, f"conduit: this session is relayed by node {row.node}, and a watch "
                       f"cannot be relayed from it: {opened}; watch it there.\r\n")  # fmt: skip
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
