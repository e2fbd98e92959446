"""Signed-in portal pages: the home page per role, connect instructions, the pending-request
count badge (refreshed by htmx), and what an auditor can do.

A page needs a valid session (else a redirect to the login form, coming back afterwards) and,
for a role's page, the site-wide capability ``rbac.roles`` gives that role (else 404, like a
page that does not exist). Reads only: requesting (``access_pages``), the request queue and
approving (``approvals``) and the live-session pages live elsewhere. Does not decide access
to assets (the authorizer computes "reachable now").
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from gateway.web.auth import PortalContext, current_session, render, services_of, source_of
from gateway.web.layout import page, pending_count, sign_in_redirect
from rbac.roles import SiteAction, role_allows

router = APIRouter(include_in_schema=False)


class NotPermitted(Exception):
    """A role's page asked for by someone without the role: answered like a missing page."""


async def _signed_in(request: Request, needs: SiteAction | None = None) -> PortalContext | None:
    """The session, or None (the caller redirects); ``NotPermitted`` without ``needs``."""
    context = await current_session(request)
    if context is not None and needs is not None:
        if not role_allows(context.session.roles, needs):
            # The user sees "not found"; the audit log gets who asked for what, and why not.
            await services_of(request).audit.record(
                actor=context.session.username,
                action="portal.refused",
                result="denied",
                target=request.url.path[:200],
                source=source_of(request),
                detail={"status": 404, "reason": f"roles lack {needs.value}"},
            )
            raise NotPermitted(request.url.path)
    return context


async def not_found_page(request: Request, exc: Exception) -> Response:
    """404 inside the layout when signed in; the same words either way."""
    context = await current_session(request)
    if context is None:
        return render(request, "not_found.html", {}, status_code=404)
    return await page(request, context, "not_found.html", {}, current="", status_code=404)


def _ssh_target(request: Request) -> tuple[str, int]:
    """The host the user reached the portal by, and the gateway's SSH port."""
    services = services_of(request)
    return request.url.hostname or "gateway", services.settings.ssh_listen.port


async def _reachable(request: Request, username: str) -> list[dict[str, Any]]:
    found = await services_of(request).authz.reachable_now(username)
    return [
        {"asset": asset, "action": action, "until": _shown(decision.valid_until)}
        for asset, action, decision in found
    ]


def _shown(instant: dt.datetime | None) -> str:
    return instant.strftime("%Y-%m-%d %H:%M UTC") if instant is not None else "no end"


@router.get("/home", response_class=HTMLResponse)
async def home(request: Request) -> Response:
    context = await _signed_in(request)
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
        # Imported here: access_pages answers "not found" with this module's NotPermitted.
        from gateway.web.access_pages import overview

        values["rows"] = await overview(request, context.session.username)
    return await page(request, context, "home.html", values, current="home")


@router.get("/connect", response_class=HTMLResponse)
async def connect(request: Request) -> Response:
    context = await _signed_in(request, SiteAction.USE_ASSETS)
    if context is None:
        return sign_in_redirect(request)
    host, port = _ssh_target(request)
    values = {
        "reachable": await _reachable(request, context.session.username),
        "ssh_host": host,
        "ssh_port": port,
        "username": context.session.username,
    }
    return await page(request, context, "connect.html", values, current="connect")


@router.get("/requests/badge", response_class=HTMLResponse)
async def pending_badge(request: Request) -> Response:
    """The menu's pending count alone: htmx swaps it in place every 30 s."""
    context = await _signed_in(request, SiteAction.DECIDE_REQUESTS)
    if context is None:
        # htmx follows HX-Redirect; a plain 401 leaves the old badge in place.
        return Response(status_code=401, headers={"HX-Redirect": "/login"})
    return render(
        request, "pending_badge.html", {"pending_count": await pending_count(request, context)}
    )


@router.get("/evidence", response_class=HTMLResponse)
async def evidence(request: Request) -> Response:
    context = await _signed_in(request, SiteAction.READ_EVIDENCE)
    if context is None:
        return sign_in_redirect(request)
    return await page(request, context, "evidence.html", {}, current="evidence")
