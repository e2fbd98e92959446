"""The owner's side of a cross-node watch: ``/ws/watch-owner/{id}`` (decision 0024).

Another node (or worker) that decided a portal user may watch a terminal session this process
relays opens this socket with a one-time grant in the ``X-Conduit-Watch-Grant`` header
(``watch_grants``). This process trusts nothing else the caller says: it spends the grant
(only for this session, only if this process owns it, only unexpired), then checks the watch
again itself: the watcher's portal session still valid, and ``watch``/``kill``/``admin`` on
the asset (``api_sessions.may_watch``). Every refusal is audited ``portal.refused`` with the
watcher's name and source when the grant names them; a refusal before any valid grant (a
malformed id, no valid grant, the database away: 1013, try again later) is audited one by one
only within the per-source and per-outage budget (``refusal_budget``), since anyone who
reaches the port can cause it, and summarised beyond. A grant for a sibling worker is not
spent: the socket closes with 4409 so the caller tries again (the workers share the port).
Then it serves exactly what a local watch gets (a terminal: ``watch.stream_tap``; a desktop:
``desktop.serve_watch``, the watcher's RFB frames arriving through the relay), audited as
``session.watched`` with the node the watcher came through, and asks again every
``RECHECK_SECONDS``. Does not relay other nodes' sessions and serves no browser.
"""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from gateway.identity import portal_sessions
from gateway.sessions import store as live_store
from gateway.sessions import watch_grants
from gateway.sessions.store import LiveSessionRow
from gateway.web.api_access import Caller
from gateway.web.api_sessions import may_watch
from gateway.web.auth import limits, services_of, source_of
from gateway.web.desktop import desktops_of, serve_watch
from gateway.web.refusal_budget import RefusalBudget
from gateway.web.watch import NO_LONGER, SESSION_ID, SIGNED_OUT, stream_tap, terminal_tap
from gateway.web.watch_relay import GRANT_HEADER, OTHER_WORKER
from gateway.web.ws_guard import NOT_FOUND, NOT_FOUND_TEXT

router = APIRouter(include_in_schema=False)
TRY_AGAIN_LATER = 1013  # RFC 6455


@router.websocket("/ws/watch-owner/{session_id}")
async def watch_owner_socket(ws: WebSocket, session_id: str) -> None:
    services = services_of(ws)
    token = ws.headers.get(GRANT_HEADER, "")
    session_id = session_id[:64]
    if not SESSION_ID.fullmatch(session_id):
        await _refuse(ws, None, "relayed watch: malformed session id")
        return
    if not services.db_health.up:  # websockets do not pass the outage middleware (outage.py)
        await _refuse(ws, None, "relayed watch: database unreachable", TRY_AGAIN_LATER)
        return
    async with services.sessions() as db, db.begin():
        grant = await watch_grants.redeem(
            db, token, session_id, services.node, services.worker, services.clock()
        )
        sibling = grant is None and await watch_grants.for_another_worker(
            db, token, services.node, services.worker
        )
        row = await live_store.get(db, session_id) if grant is not None else None
    if sibling:
        await ws.accept()
        await _close(ws, OTHER_WORKER, "owned by another worker")
        return
    if grant is None:
        await _refuse(ws, None, f"relayed watch of {session_id}: no valid grant")
        return
    why = await _not_allowed(ws, grant, row)
    if why or row is None:
        await _refuse(ws, grant, f"relayed watch of {session_id} via {grant.via_node}: {why}")
        return
    tap = terminal_tap(ws, session_id)
    desktop = desktops_of(ws).relays.get(session_id) if tap is None else None
    if tap is None and desktop is None:
        await _refuse(ws, grant, f"relayed watch of {session_id}: nothing to watch here")
        return
    await ws.accept()
    await services.audit.record(
        actor=grant.watcher, action="session.watched", result="success", target=row.asset,
        source=grant.source,
        detail={"session_id": session_id, "asset": row.asset, "user": row.username,
                "via_node": grant.via_node},
    )  # fmt: skip

    async def recheck() -> str:
        stopped = await _not_allowed(ws, grant, row)
        if stopped:
            await _audit(ws, grant, f"relayed watch of {session_id} stopped: {stopped}")
            return NO_LONGER if stopped != SIGNED_OUT else SIGNED_OUT
        return ""

    if tap is not None:
        await stream_tap(ws, tap, recheck)
    elif desktop is not None:
        await serve_watch(ws, desktop, grant.watcher, session_id, recheck)


async def _not_allowed(ws: WebSocket, grant: watch_grants.Grant, row: LiveSessionRow | None) -> str:
    """Why the grant's watcher may not watch ``row`` now, or "" when they may."""
    services = services_of(ws)
    if row is None or (row.node, row.worker) != (services.node, services.worker):
        return "not a live session of this process"
    async with services.sessions() as db:
        active = await portal_sessions.by_id(
            db, grant.portal_session_id, services.clock(), limits(services)
        )
    if active is None or active.username != grant.watcher:
        return SIGNED_OUT
    if not await may_watch(services, Caller.of_session(active), row.asset):
        return "no watch capability"
    return ""


async def _audit(ws: WebSocket, grant: watch_grants.Grant | None, reason: str) -> None:
    await services_of(ws).audit.record(
        actor=grant.watcher if grant is not None else "anonymous",
        action="portal.refused",
        result="denied",
        target=ws.url.path[:200],
        source=grant.source if grant is not None else source_of(ws),
        detail={"websocket": True, "status": NOT_FOUND, "reason": reason[:300],
                "peer": source_of(ws)},
    )  # fmt: skip


def _budget(ws: WebSocket) -> RefusalBudget:
    """This portal's budget for refusals of callers without a valid grant."""
    state = ws.app.state
    budget: RefusalBudget | None = getattr(state, "watch_owner_refusals", None)
    if budget is None:
        budget = state.watch_owner_refusals = RefusalBudget(services_of(ws), "watch-owner")
    return budget


async def _refuse(
    ws: WebSocket, grant: watch_grants.Grant | None, reason: str, code: int = NOT_FOUND
) -> None:
    # Without a valid grant the caller proved nothing: within the budget only.
    if grant is not None or _budget(ws).audited(source_of(ws)):
        await _audit(ws, grant, reason)
    await ws.accept()
    await _close(ws, code, NOT_FOUND_TEXT if code == NOT_FOUND else "try again later")


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await ws.close(code=code, reason=reason[:120])
