"""The checks every portal websocket makes before it does anything, and how it refuses.

A websocket is accepted only from a page of this portal: its ``Origin`` must be the origin
the request itself names (scheme and ``Host``), so another site's page cannot open one with
the user's cookie; and it must carry a valid portal session cookie. A refusal is audited
(``portal.refused`` with the reason) and closes the socket with a policy-violation code
before any session opens. Does not decide access to assets or sessions (the broker and the
authorizer do).
"""

from __future__ import annotations

from fastapi import WebSocket

from gateway.web.auth import PortalContext, current_session, services_of, source_of

POLICY_VIOLATION = 1008  # RFC 6455: the message or request violates the server's policy
NOT_FOUND = 4404  # ARCHITECTURE.md: missing and forbidden alike
NOT_FOUND_TEXT = "not found or not permitted"


def own_origin(ws: WebSocket) -> str:
    """The origin of a page of this portal, as the socket's own request names it."""
    scheme = "https" if ws.url.scheme == "wss" else "http"
    return f"{scheme}://{ws.headers.get('host', '').lower()}"


def origin_ok(ws: WebSocket) -> bool:
    origin = ws.headers.get("origin")
    return origin is not None and origin.lower() == own_origin(ws)


async def refuse(
    ws: WebSocket, actor: str, reason: str, code: int = POLICY_VIOLATION, shown: str = ""
) -> None:
    """Audit ``reason`` and close the socket with ``code`` (and the short ``shown`` text)."""
    await services_of(ws).audit.record(
        actor=actor or "anonymous",
        action="portal.refused",
        result="denied",
        target=ws.url.path[:200],
        source=source_of(ws),
        detail={"websocket": True, "status": code, "reason": reason[:300]},
    )
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
