"""Signed-in portal pages: the home page per role, the pending-request
queue (and its count badge, refreshed by htmx), and what an auditor can do.

A page needs a valid session (else a redirect to the login form, coming back afterwards) and,
for a role's page, the site-wide capability ``rbac.roles`` gives that role (else 404, like a
page that does not exist). Reads only: approving, requesting and the live-session pages come
later. Does not decide access to assets (the authorizer computes "reachable now").
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from gateway.web.auth import (
    PortalContext,
    check_csrf,
    current_session,
    render,
    require_session,
    services_of,
    source_of,
)
from gateway.web.layout import page, pending_count, sign_in_redirect
from rbac.requests import RequestState
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


async def signed_in(request: Request, needs: SiteAction | None = None) -> PortalContext | None:
    """For the other page modules: the session or None, ``NotPermitted`` without ``needs``."""
    return await _signed_in(request, needs)


async def session_csrf_audited(request: Request) -> PortalContext:
    """Dependency for a page's form post: a session (else 401) and its CSRF token (else 403,
    audited as ``portal.refused`` like every other refusal of a page)."""
    context = await require_session(request)
    try:
        await check_csrf(request, context)
    except HTTPException:
        await services_of(request).audit.record(
            actor=context.session.username,
            action="portal.refused",
            result="denied",
            target=request.url.path[:200],
            source=source_of(request),
            detail={"status": 403, "reason": "missing or invalid CSRF token"},
        )
        raise
    return context


async def not_found_page(request: Request, exc: Exception) -> Response:
    """404 inside the layout when signed in; the same words either way."""
    context = await current_session(request)
    if context is None:
        return render(request, "not_found.html", {}, status_code=404)
    return await page(request, context, "not_found.html", {}, current="", status_code=404)


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
        "reachable": [],
    }
    if values["uses_assets"]:
        values["reachable"] = await _reachable(request, context.session.username)
    return await page(request, context, "home.html", values, current="home")


@router.get("/requests", response_class=HTMLResponse)
async def requests_queue(request: Request) -> Response:
    context = await _signed_in(request, SiteAction.DECIDE_REQUESTS)
    if context is None:
        return sign_in_redirect(request)
    waiting = await services_of(request).requests.list_requests(state=RequestState.PENDING)
    rows = [
        {
            "id": r.request_id,
            "requester": r.requester,
            "assets": ", ".join(r.assets),
            "actions": ", ".join(r.actions),
            "start": _shown(r.start),
            "minutes": int(r.duration.total_seconds() // 60),
            "reason": r.reason,
            "approvals": f"{len(r.approvals)} of {r.required_approvals}",
        }
        for r in waiting
    ]
    return await page(request, context, "requests.html", {"rows": rows}, current="requests")


@router.get("/requests/badge", response_class=HTMLResponse)
async def pending_badge(request: Request) -> Response:
    """The menu's pending count alone: htmx swaps it in place every 30 s."""
    context = await _signed_in(request, SiteAction.DECIDE_REQUESTS)
    if context is None:
        # htmx follows HX-Redirect; a plain 401 leaves the old badge in place.
        return Response(status_code=401, headers={"HX-Redirect": "/login"})
    return render(request, "pending_badge.html", {"pending_count": await pending_count(request)})


@router.get("/evidence", response_class=HTMLResponse)
async def evidence(request: Request) -> Response:
    context = await _signed_in(request, SiteAction.READ_EVIDENCE)
    if context is None:
        return sign_in_redirect(request)
    return await page(request, context, "evidence.html", {}, current="evidence")
