"""What the signed-in portal's pages and forms share: the session and capability guards
(``signed_in`` for a page, ``signed_in_post`` for a form post: CSRF, refusals audited), the
refusal audit event itself, bounded reads of form fields, and instants shown as ``<time>``.

A refused form answers the user with a short message (or "not found"); the audit log gets
``portal.refused`` with the path, status and the full reason. Does not decide access (the
services do) and renders no page (each page module does).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import HTTPException, Request
from starlette.datastructures import FormData

from gateway.web.auth import PortalContext, check_csrf, current_session, services_of, source_of
from rbac.roles import SiteAction, role_allows

FORM_MAX_FIELDS = 200  # the largest form here has a few dozen fields


class NotPermitted(Exception):
    """A role's page asked for by someone without the role: answered like a missing page."""


async def audit_refusal(request: Request, actor: str, status: int, why: str) -> None:
    await services_of(request).audit.record(
        actor=actor or "anonymous",
        action="portal.refused",
        result="denied",
        target=request.url.path[:200],
        source=source_of(request),
        detail={"method": request.method, "status": status, "reason": why[:300]},
    )


async def require_capability(request: Request, context: PortalContext, needs: SiteAction) -> None:
    """``NotPermitted`` (answered as "not found", audited) unless the roles carry ``needs``."""
    if not role_allows(context.session.roles, needs):
        await audit_refusal(request, context.session.username, 404, f"roles lack {needs.value}")
        raise NotPermitted(request.url.path)


async def signed_in(request: Request, needs: SiteAction | None = None) -> PortalContext | None:
    """A page's session (None: the caller redirects to the login form), with ``needs`` if
    given (else ``NotPermitted``: the user sees "not found", the audit log says why)."""
    context = await current_session(request)
    if context is not None and needs is not None:
        await require_capability(request, context, needs)
    return context


async def signed_in_post(request: Request) -> PortalContext:
    """The session of a state-changing form post: 401 without one, 403 (audited) without
    this session's CSRF token."""
    context = await current_session(request)
    if context is None:
        await audit_refusal(request, "anonymous", 401, "form post without a valid session")
        raise HTTPException(status_code=401, detail="log in first")
    try:
        await check_csrf(request, context)
    except HTTPException:
        await audit_refusal(request, context.session.username, 403, "CSRF check failed")
        raise
    return context


async def form_of(request: Request) -> FormData:
    return await request.form(max_files=0, max_fields=FORM_MAX_FIELDS)


def text_field(form: FormData, name: str, limit: int) -> str:
    """One text field, cut at ``limit`` characters (callers check the length they allow)."""
    value = form.get(name)
    return value[:limit] if isinstance(value, str) else ""


def list_field(form: FormData, name: str, limit: int, item_limit: int = 64) -> list[str]:
    """Up to ``limit`` distinct text values of a repeated field, each cut at ``item_limit``."""
    out: list[str] = []
    for value in form.getlist(name):
        if isinstance(value, str) and value[:item_limit] not in out:
            out.append(value[:item_limit])
        if len(out) >= limit:
            break
    return out


def shown_instant(instant: dt.datetime | None, now: dt.datetime | None = None) -> dict[str, Any]:
    """What ``_time.html`` renders: ISO for the browser's local time, UTC text for everyone.
    Today's instants show the time only; others the day as well."""
    if instant is None:
        return {"iso": "", "utc": ""}
    at = instant.astimezone(dt.UTC)
    if now is not None and at.date() == now.astimezone(dt.UTC).date():
        text = at.strftime("%H:%M UTC")
    elif now is not None and dt.timedelta(0) < at - now < dt.timedelta(days=6):
        text = at.strftime("%a %H:%M UTC")
    else:
        text = at.strftime("%a %Y-%m-%d %H:%M UTC")
    return {"iso": at.isoformat().replace("+00:00", "Z"), "utc": text}
