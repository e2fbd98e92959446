"""The checks every portal websocket makes before it does anything, and how it refuses.

A websocket is accepted only from a page of this portal: its ``Origin`` must be the origin
the request itself names (scheme and ``Host``), so another site's page cannot open one with
the user's cookie; and it must carry a valid portal session cookie. A refusal is audited
(``portal.refused`` with the reason) and closes the socket with a policy-violation code
before any session opens. While a socket stays open its portal session is checked again
every ``RECHECK_SECONDS`` (``signed_in_again``, ``until_signed_out``): sign-out, expiry, an
ended session or a disabled user ends what the socket serves. A session's socket ends the
same way for every kind of session (``end_socket``): the one-line reason as a JSON text
frame for the page, then the close. A check the database cannot answer is asked again only
within the outage grace; any other failed check ends the socket (fail closed, audited). Does
not decide access to assets or sessions (the broker and the authorizer do), and does not end
the session itself (its caller asks the broker).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from gateway.db.health import is_unreachable
from gateway.web.auth import PortalContext, current_session, services_of, source_of

POLICY_VIOLATION = 1008  # RFC 6455: the message or request violates the server's policy
NOT_FOUND = 4404  # ARCHITECTURE.md: missing and forbidden alike
NOT_FOUND_TEXT = "not found or not permitted"
# How often an open socket asks whether its portal session is still valid: one indexed read
# per socket per interval (200 terminals: 40 reads a second), and sign-out binds within it.
RECHECK_SECONDS = 5.0
log = logging.getLogger(__name__)


def own_origin(ws: WebSocket) -> str:
    """The origin of a page of this portal, as the socket's own request names it."""
    scheme = "https" if ws.url.scheme == "wss" else "http"
    return f"{scheme}://{ws.headers.get('host', '').lower()}"


def origin_ok(ws: WebSocket) -> bool:
    origin = ws.headers.get("origin")
    return origin is not None and origin.lower() == own_origin(ws)


async def audit_refusal(ws: WebSocket, actor: str, reason: str, code: int) -> None:
    """``portal.refused`` for a socket refused or stopped, with the full reason."""
    await services_of(ws).audit.record(
        actor=actor or "anonymous",
        action="portal.refused",
        result="denied",
        target=ws.url.path[:200],
        source=source_of(ws),
        detail={"websocket": True, "status": code, "reason": reason[:300]},
    )


async def refuse(
    ws: WebSocket, actor: str, reason: str, code: int = POLICY_VIOLATION, shown: str = ""
) -> None:
    """Audit ``reason`` and close the socket with ``code`` (and the short ``shown`` text)."""
    await audit_refusal(ws, actor, reason, code)
    await ws.accept()
    await ws.close(code=code, reason=(shown or "refused")[:120])


async def checked_session(ws: WebSocket) -> PortalContext | None:
    """The socket's portal session when its origin and cookie pass; else refused, None."""
    context = await current_session(ws)
    actor = context.session.username if context is not None else ""
    if not origin_ok(ws):
        origin = (ws.headers.get("origin") or "none")[:100]
        await refuse(ws, actor, f"origin {origin} is not {own_origin(ws)}")
        return None
    if context is None:
        await refuse(ws, "", "no valid portal session cookie", shown="log in first")
        return None
    return context


async def signed_in_again(
    ws: WebSocket, context: PortalContext, *, touch: bool
) -> PortalContext | None:
    """The portal session that opened ``ws``, read again (its roles as they are now), or None
    when it is over: signed out, expired, ended from the account page, user disabled.
    ``touch``: count this as the person's activity (they typed since the last check)."""
    again = await current_session(ws, touch=touch)
    if again is None or again.session.session_id != context.session.session_id:
        return None
    return again


async def until_signed_out(
    ws: WebSocket, context: PortalContext, used: Callable[[], bool], name: str
) -> None:
    """Return once the portal session that opened ``ws`` is over, asking every
    ``RECHECK_SECONDS``. ``used()`` says (and forgets) whether the person typed since the last
    ask: that counts as portal activity (keeps its idle timer); output alone does not.
    ``name`` says which session in the log.

    A check that fails because the database is unreachable is asked again, for at most the
    outage grace (``database.outage_grace_seconds``, counted from this socket's first failed
    check); any other failure, or one that outlasts the grace, returns as if signed out
    (fail closed: a broken check must not outlive a sign-out or a disabled user), audited."""
    failing_since: float | None = None
    while True:
        await asyncio.sleep(RECHECK_SECONDS)
        touch = used()
        try:
            valid = await signed_in_again(ws, context, touch=touch)
        except Exception as error:
            health = services_of(ws).db_health
            now = time.monotonic()
            failing_since = now if failing_since is None else failing_since
            health.failed(error)  # an outage: the probe and the other edges learn it now
            if is_unreachable(error) and now - failing_since < health.grace_seconds:
                log.warning("%s: portal session check: database unreachable", name)
                continue
            log.exception("%s: portal session check failed; ending the socket", name)
            why = f"portal session check failed: {type(error).__name__}"
            await _audit_failed_check(ws, context, why)
            return
        failing_since = None
        if valid is None:
            return


async def _audit_failed_check(ws: WebSocket, context: PortalContext, reason: str) -> None:
    try:
        await services_of(ws).audit.record(
            actor=context.session.username, action="portal.refused", result="error",
            target=ws.url.path[:200], source=source_of(ws),
            detail={"websocket": True, "status": 1000, "reason": reason[:300]},
        )  # fmt: skip
    except Exception:  # the socket ends all the same; the log says why it was not audited
        log.exception("a failed portal session check was not audited")


async def close_quietly(ws: WebSocket, code: int, reason: str) -> None:
    """Close ``ws`` with ``code`` and ``reason`` (cut to fit a close frame); a socket the
    browser has already left is left as it is."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await ws.close(code=code, reason=reason[:120])


async def end_socket(ws: WebSocket, line: str, code: int, reason: str = "") -> None:
    """The end of a session's socket: ``line`` for the page (``{"type": "end"}``, which the
    page shows and screen readers announce), then the close with ``code`` and ``reason``
    (``line`` when empty)."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await ws.send_text(json.dumps({"type": "end", "reason": line}))
    await close_quietly(ws, code, reason or line)
