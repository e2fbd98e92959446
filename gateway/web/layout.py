"""The signed-in page frame: which menu entries a user sees, and rendering a page inside it.

Every signed-in page renders through ``page()`` so the layout (``base.html``) gets the same
menu, use banner and sign-out form (with the session's CSRF token). Menu entries follow the
user's site-wide capabilities as ``rbac.roles`` decides them; no role name is compared here.
Does not check sessions or decide access to a page (``auth``, the page's own route).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse

from gateway.web.auth import PortalContext, render, services_of
from rbac.roles import SiteAction, role_allows


@dataclass(frozen=True)
class MenuEntry:
    """One link in the top navigation; ``badge`` names a live count the menu shows beside it."""

    key: str
    label: str
    href: str
    badge: str = ""


def menu_for(roles: tuple[str, ...]) -> list[MenuEntry]:
    entries = [MenuEntry("home", "Home", "/home")]
    if role_allows(roles, SiteAction.USE_ASSETS):
        entries.append(MenuEntry("access", "My access", "/access"))
        entries.append(MenuEntry("connect", "Connect", "/connect"))
        entries.append(MenuEntry("sessions", "Sessions", "/sessions"))
    if role_allows(roles, SiteAction.DECIDE_REQUESTS):
        entries.append(MenuEntry("requests", "Requests", "/requests", badge="pending"))
    if role_allows(roles, SiteAction.WATCH_SESSIONS):
        entries.append(MenuEntry("live", "Live sessions", "/live"))
    if role_allows(roles, SiteAction.READ_EVIDENCE):
        entries.append(MenuEntry("evidence", "Evidence", "/evidence"))
    if role_allows(roles, SiteAction.ADMINISTER_SITE):
        entries.append(MenuEntry("admin", "Admin", "/admin"))
    entries.append(MenuEntry("account", "Account", "/account"))
    return entries


def sign_in_redirect(request: Request) -> RedirectResponse:
    """Where an unauthenticated request for a page goes: the login form, then back here."""
    return RedirectResponse(f"/login?next={request.url.path}", status_code=303)


async def page(
    request: Request,
    context: PortalContext,
    template: str,
    values: dict[str, Any],
    *,
    current: str,
    status_code: int = 200,
) -> HTMLResponse:
    """``template`` inside the signed-in layout: menu, banner, sign-out, pending badge."""
    services = services_of(request)
    roles = context.session.roles
    pending: int | None = None
    if role_allows(roles, SiteAction.DECIDE_REQUESTS):
        pending = await pending_count(request, context)
    frame = {
        "banner": services.settings.portal.banner,
        "menu": menu_for(roles),
        "current": current,
        "signed_in_as": context.session.username,
        "csrf_token": context.csrf_token,
        "pending_count": pending,
    }
    return render(request, template, {**frame, **values}, status_code)


async def pending_count(request: Request, context: PortalContext) -> int:
    """How many pending requests this person may decide: ``approve`` on every asset (any
    asset for administrators), not their own; one COUNT query."""
    services = services_of(request)
    username = context.session.username
    approvable = None
    if not role_allows(context.session.roles, SiteAction.ANY_ASSET):
        approvable = await services.authz.approvable_assets(username)
    return await services.requests.count_decidable(username, approvable)
