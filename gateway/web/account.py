"""A user's own account in the portal: sessions, API tokens, SSH keys, connect codes, step-up.

Every state-changing route requires the session's CSRF token; secrets made here (tokens,
connect codes) are shown once in the response and never again. Admin routes need a
second factor passed within the last five minutes. Does not authenticate (``auth``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gateway.errors import ConduitError
from gateway.identity import portal_sessions, ssh_access, tokens
from gateway.identity.login import AuthenticationFailed
from gateway.identity.onboarding import find_user
from gateway.identity.portal_sessions import StepUpRequired, require_recent_mfa
from gateway.identity.tokens import TokenIdentity
from gateway.web.auth import (
    PortalContext,
    authenticator,
    current_session,
    limits,
    render,
    require_scope,
    require_session_csrf,
    services_of,
    source_of,
)

router = APIRouter(include_in_schema=False)
Session = Annotated[PortalContext, Depends(require_session_csrf)]


def _back() -> RedirectResponse:
    return RedirectResponse("/account", status_code=303)


async def _account_page(
    request: Request, context: PortalContext, extra: dict[str, object] | None = None
) -> HTMLResponse:
    services = services_of(request)
    user_id = context.session.user_id
    async with services.sessions() as db:
        sessions = await portal_sessions.list_for_user(
            db, user_id, services.clock(), limits(services)
        )
        user_tokens = await tokens.list_tokens(db, user_id)
        keys = await ssh_access.list_public_keys(db, user_id)
    page = {
        "username": context.session.username,
        "csrf_token": context.csrf_token,
        "sessions": sessions,
        "current_session_id": context.session.session_id,
        "tokens": [t for t in user_tokens if t.revoked_at is None],
        "keys": keys,
        "error": "",
        "new_secret": "",
        "new_secret_label": "",
    }
    page.update(extra or {})
    return render(request, "account.html", page)


@router.get("/account", response_class=HTMLResponse)
async def account(request: Request) -> Response:
    context = await current_session(request)
    if context is None:
        return RedirectResponse("/login?next=/account", status_code=303)
    return await _account_page(request, context)


@router.post("/account/sessions/{session_id}/end")
async def end_session(request: Request, session_id: int, context: Session) -> Response:
    services = services_of(request)
    async with services.sessions() as db, db.begin():
        await portal_sessions.revoke(
            db, services.clock(), session_id=session_id, user_id=context.session.user_id
        )
    return _back()


@router.post("/account/tokens", response_class=HTMLResponse)
async def create_token(
    request: Request,
    context: Session,
    scopes: Annotated[str, Form(max_length=500)],
    days: Annotated[int, Form(ge=1, le=tokens.MAX_LIFETIME_DAYS)],
) -> Response:
    services = services_of(request)
    now = services.clock()
    try:
        async with services.sessions() as db, db.begin():
            new = await tokens.create_token(db, context.session.user_id, scopes.split(), days, now)
    except ConduitError as exc:
        return await _account_page(request, context, {"error": exc.message})
    await authenticator(request).audit.record(
        actor=context.session.username,
        action="token.create",
        result="success",
        target=f"token:{new.token_id}",
        source=source_of(request),
        detail={"scopes": scopes.split(), "days": days},
    )
    return await _account_page(
        request, context, {"new_secret": new.token, "new_secret_label": "API token"}
    )


@router.post("/account/tokens/{token_id}/revoke")
async def revoke_token(request: Request, token_id: int, context: Session) -> Response:
    services = services_of(request)
    async with services.sessions() as db, db.begin():
        done = await tokens.revoke_token(db, token_id, services.clock(), context.session.user_id)
    if done:
        await authenticator(request).audit.record(
            actor=context.session.username,
            action="token.revoke",
            result="success",
            target=f"token:{token_id}",
            source=source_of(request),
        )
    return _back()


@router.post("/account/ssh-keys", response_class=HTMLResponse)
async def add_key(
    request: Request, context: Session, public_key: Annotated[str, Form(max_length=16384)]
) -> Response:
    services = services_of(request)
    try:
        async with services.sessions() as db, db.begin():
            row = await ssh_access.add_public_key(
                db, context.session.user_id, public_key, services.clock()
            )
    except ConduitError as exc:
        return await _account_page(request, context, {"error": exc.message})
    await authenticator(request).audit.record(
        actor=context.session.username,
        action="sshkey.add",
        result="success",
        source=source_of(request),
        detail={"fingerprint": row.fingerprint},
    )
    return _back()


@router.post("/account/ssh-keys/{key_id}/delete")
async def delete_key(request: Request, key_id: int, context: Session) -> Response:
    services = services_of(request)
    async with services.sessions() as db, db.begin():
        await ssh_access.remove_public_key(db, context.session.user_id, key_id)
    return _back()


@router.post("/account/connect-codes", response_class=HTMLResponse)
async def connect_code(
    request: Request, context: Session, asset: Annotated[str, Form(max_length=128)]
) -> Response:
    services = services_of(request)
    try:
        async with services.sessions() as db, db.begin():
            code, _expires = await ssh_access.issue_connect_code(
                db, context.session.user_id, asset, services.clock()
            )
    except ConduitError as exc:
        return await _account_page(request, context, {"error": exc.message})
    label = f"connect code for {asset} (valid 5 minutes, once)"
    return await _account_page(request, context, {"new_secret": code, "new_secret_label": label})


@router.post("/account/step-up")
async def step_up(
    request: Request, context: Session, code: Annotated[str, Form(max_length=64)]
) -> Response:
    services = services_of(request)
    now = services.clock()
    try:
        await authenticator(request).confirm_code(
            context.session.user_id, context.session.username, code, "portal",
            source_of(request), now,
        )  # fmt: skip
    except AuthenticationFailed:
        return await _account_page(request, context, {"error": "invalid code"})
    async with services.sessions() as db, db.begin():
        await portal_sessions.mark_mfa(db, context.session.session_id, now)
    return _back()


@router.post("/admin/users/{username}/sessions/revoke")
async def admin_revoke_sessions(request: Request, username: str, context: Session) -> Response:
    """Admin: end every portal session of ``username`` now (needs a recent second factor)."""
    services = services_of(request)
    now = services.clock()
    if "admin" not in context.session.roles:
        raise HTTPException(status_code=404, detail="not found or not permitted")
    try:
        require_recent_mfa(context.session, now)
    except StepUpRequired as exc:
        raise HTTPException(status_code=403, detail=exc.message) from None
    try:
        async with services.sessions() as db, db.begin():
            user = await find_user(db, username)
            count = await portal_sessions.revoke_all(db, user.id, now)
    except ConduitError:
        raise HTTPException(status_code=404, detail="not found or not permitted") from None
    await authenticator(request).audit.record(
        actor=context.session.username,
        action="session.revoke",
        result="success",
        target=username,
        source=source_of(request),
        detail={"sessions": count},
    )
    return _back()


@router.get("/api/v1/me")
async def api_me(
    identity: Annotated[TokenIdentity, Depends(require_scope("read"))],
) -> dict[str, object]:
    return {"username": identity.username, "roles": list(identity.roles)}
