"""Signed-in portal pages: the home page per role and the pending-request count badge (refreshed
by htmx).

A page needs a valid session (else a redirect to the login form, coming back afterwards) and,
for a role's page, the site-wide capability ``rbac.roles`` gives that role (else 404, like a
page that does not exist). Reads only: requesting (``access_pages``), the request queue and
approving (``approvals``), connecting (``connect``) and the session pages (``my_sessions``,
``live``, ``terminal``) and the auditor's pages (``history``, ``player``, ``search_pages``)
live in their own modules. Does not decide access to assets.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from gateway.web.access_pages import overview
from gateway.web.auth import current_session, render
from gateway.web.layout import page, pending_count, sign_in_redirect
from gateway.web.portal_forms import signed_in
from rbac.roles import SiteAction, role_allows

router = APIRouter(include_in_schema=False)


async def not_found_page(request: Request, exc: Exception) -> Response:
    """404 inside the layout when signed in; the same words either way."""
    context = await current_session(request)
    if context is None:
        return render(request, "not_found.html", {}, status_code=404)
    return await page(request, context, "not_found.html", {}, current="", status_code=404)


@router.get("/home", response_class=HTMLResponse)
async def home(request: Request) -> Response:
    context = await signed_in(request)
    if context is None:
        return sign_in_redirect(request)
    roles = context.session.roles
    values: dict[str, Any] = {
        "uses_assets": role_allows(roles, SiteAction.USE_ASSETS),
        "decides_requests": role_allows(roles, SiteAction.DECIDE_REQUESTS),
        "reads_evidence": role_allows(roles, SiteAction.READ_EVIDENCE),
        "rows": [],
    }
    if values["uses_assets"]:
        values["rows"] = await overview(request, context.session.username)
    return await page(request, context, "home.html", values, current="home")


@router.get("/requests/badge", response_class=HTMLResponse)
async def pending_badge(request: Request) -> Response:
    """The menu's pending count alone: htmx swaps it in place every 30 s."""
    context = await signed_in(request, SiteAction.DECIDE_REQUESTS)
    if context is None:
        # htmx follows HX-Redirect; a plain 401 leaves the old badge in place.
        return Response(status_code=401, headers={"HX-Redirect": "/login"})
    return render(
        request, "pending_badge.html", {"pending_count": await pending_count(request, context)}
    )
