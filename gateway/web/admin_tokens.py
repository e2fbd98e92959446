"""Admin page for the API tokens of every user (``/admin/tokens``): owner, scopes, created,
last used and expiry of each token not yet revoked, and revoke.

The tokens themselves are ``gateway.identity.tokens``'s, as for ``conduit token ...`` and the
account page; a token's secret exists only as a digest, so nothing here can show one.
Revoking needs a fresh second factor and is audited with before and after. An unknown or
already revoked token answers "not found", audited. Does not create tokens (each person
makes their own on the account page) and does not decide access.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gateway.identity import tokens
from gateway.web.admin_common import (
    admin_page,
    admin_post,
    admin_view,
    audit_change,
    missing,
    step_up,
)
from gateway.web.auth import PortalContext, services_of
from gateway.web.layout import sign_in_redirect
from gateway.web.portal_forms import shown_instant
from gateway.web.stepup import StepUp

router = APIRouter(include_in_schema=False)

TOKEN_ID_MAX = 2**63 - 1


def token_facts(owned: tokens.OwnedToken) -> dict[str, Any]:
    t = owned.token
    return {
        "owner": owned.owner, "scopes": t.scopes.split(),
        "expires_at": t.expires_at.isoformat(), "revoked": t.revoked_at is not None,
    }  # fmt: skip


def _row(owned: tokens.OwnedToken, now: dt.datetime) -> dict[str, Any]:
    t = owned.token
    return {
        "id": t.id, "owner": owned.owner, "scopes": t.scopes.split(),
        "created": shown_instant(t.created_at, now),
        "last_used": shown_instant(t.last_used_at, now),
        "expires": shown_instant(t.expires_at, now), "expired": t.expires_at <= now,
    }  # fmt: skip


async def _tokens_page(
    request: Request,
    context: PortalContext,
    *,
    step: StepUp | None = None,
    step_for: int | None = None,
) -> HTMLResponse:
    services = services_of(request)
    now = services.clock()
    async with services.sessions() as db:
        listed = await tokens.list_all_tokens(db)
    values = {"tokens": [_row(t, now) for t in listed], "step_for": step_for}
    return await admin_view(request, context, "admin/tokens.html", values, step=step)


@router.get("/admin/tokens", response_class=HTMLResponse)
async def all_tokens(request: Request) -> Response:
    context = await admin_page(request)
    if context is None:
        return sign_in_redirect(request)
    return await _tokens_page(request, context)


@router.post("/admin/tokens/{token_id}/revoke", response_class=HTMLResponse)
async def revoke(request: Request, token_id: str) -> Response:
    context, form = await admin_post(request)
    services = services_of(request)
    found = None
    if token_id.isascii() and token_id.isdigit() and int(token_id) <= TOKEN_ID_MAX:
        async with services.sessions() as db:
            found = await tokens.find_token(db, int(token_id))
    if found is None:
        raise await missing(request, context, f"no active token {token_id[:40]}")
    step = await step_up(request, context, form)
    if not step.ok:
        return await _tokens_page(request, context, step=step, step_for=found.token.id)
    before = token_facts(found)
    async with services.sessions() as db, db.begin():
        await tokens.revoke_token(db, found.token.id, services.clock())
    after = {**before, "revoked": True}
    await audit_change(request, context, "token", f"token:{found.token.id}", before, after)
    return RedirectResponse("/admin/tokens", status_code=303)
