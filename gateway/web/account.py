"""A user's own account in the portal: sessions, API tokens, SSH keys, connect codes, step-up.

Every state-changing route requires the session's CSRF token; secrets made here (tokens,
connect codes) are shown once in the response and never again. Admin routes, and SSH user
certificates (a download per registered key, or ``POST /api/v1/ssh/certificate``), need a
second factor passed within the last five minutes. Does not authenticate (``auth``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import ConduitError
from gateway.identity import portal_sessions, ssh_access, tokens
from gateway.identity.login import AuthenticationFailed
from gateway.identity.onboarding import find_user
from gateway.identity.portal_sessions import StepUpRequired, require_recent_mfa
from gateway.identity.ssh_access import MAX_KEY_LINE
from gateway.identity.ssh_certs import IssuedCertificate, issue_audited
from gateway.identity.tokens import TokenIdentity
from gateway.web import layout
from gateway.web.auth import (
    PortalContext,
    authenticator,
    current_session,
    limits,
    require_scope,
    require_session_csrf,
    services_of,
    source_of,
)
from gateway.web.connect import make_connect_code
from rbac.roles import SiteAction, role_allows

router = APIRouter(include_in_schema=False)
Session = Annotated[PortalContext, Depends(require_session_csrf)]


def _back() -> RedirectResponse:
    return RedirectResponse("/account", status_code=303)


async def _account_page(
    request: Request,
    context: PortalContext,
    extra: dict[str, object] | None = None,
    status_code: int = 200,
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
        "certificate_hours": services.settings.ssh.certificate_hours,
        "error": "",
        "new_secret": "",
        "new_secret_label": "",
    }
    page.update(extra or {})
    return await layout.page(
        request, context, "account.html", page, current="account", status_code=status_code
    )


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
        fingerprint = await ssh_access.remove_public_key(db, context.session.user_id, key_id)
    if fingerprint is not None:  # its certificates no longer log in from now on
        await authenticator(request).audit.record(
            actor=context.session.username,
            action="sshkey.remove",
            result="success",
            source=source_of(request),
            detail={"fingerprint": fingerprint},
        )
    return _back()


# What OpenSSH calls a key's certificate file, so a download can be saved as is.
_CERT_FILE = {"ssh-ed25519": "id_ed25519", "ssh-rsa": "id_rsa", "ecdsa-sha2-nistp256": "id_ecdsa"}
_CERT_FILE |= {
    "sk-ssh-ed25519@openssh.com": "id_ed25519_sk",
    "sk-ecdsa-sha2-nistp256@openssh.com": "id_ecdsa_sk",
}


async def _issue_certificate(
    request: Request, context: PortalContext, via: str, *, key_row_id: int | None, public_key: str
) -> IssuedCertificate:
    """Step-up within five minutes, then ``issue_audited``; every refusal is audited."""
    services = services_of(request)
    now = services.clock()
    try:
        require_recent_mfa(context.session, now)
    except StepUpRequired as exc:
        await services.audit.record(
            actor=context.session.username,
            action="ssh.certificate.refused",
            result="denied",
            source=source_of(request),
            detail={"via": via, "reason": exc.detail},
        )
        raise
    return await issue_audited(
        services.sessions,
        services.audit,
        services.keys.ssh_user_ca,
        context.session.user_id,
        context.session.username,
        key_row_id=key_row_id,
        public_key=public_key,
        now=now,
        hours=services.settings.ssh.certificate_hours,
        via=via,
        source=source_of(request),
    )


@router.post("/account/ssh-keys/{key_id}/certificate", response_class=HTMLResponse)
async def download_certificate(request: Request, key_id: int, context: Session) -> Response:
    try:
        issued = await _issue_certificate(
            request, context, "portal", key_row_id=key_id, public_key=""
        )
    except StepUpRequired:
        error = "confirm a second factor on this page first (a certificate needs one in 5 min)"
        return await _account_page(request, context, {"error": error})
    except ConduitError as exc:
        return await _account_page(request, context, {"error": exc.message})
    algorithm = issued.text.split(maxsplit=1)[0].removesuffix("-cert-v01@openssh.com")
    name = _CERT_FILE.get(algorithm, "id")
    return Response(
        issued.text,
        media_type="text/plain; charset=us-ascii",
        headers={
            "Content-Disposition": f'attachment; filename="{name}-cert.pub"',
            "Cache-Control": "no-store",
        },
    )


class CertificateRequest(BaseModel):
    """Which registered key to certify: its public key line, or its id on the account page."""

    model_config = ConfigDict(extra="forbid", strict=True)
    public_key: str = Field(default="", max_length=MAX_KEY_LINE)
    ssh_key_id: int | None = Field(default=None, ge=1)


@router.post("/api/v1/ssh/certificate")
async def api_ssh_certificate(
    request: Request, body: CertificateRequest, context: Session
) -> dict[str, object]:
    """A certificate for a registered key: portal session, CSRF header and a recent MFA."""
    if (body.ssh_key_id is None) == (not body.public_key):
        raise HTTPException(status_code=422, detail="give exactly one of public_key, ssh_key_id")
    try:
        issued = await _issue_certificate(
            request, context, "api", key_row_id=body.ssh_key_id, public_key=body.public_key
        )
    except StepUpRequired:
        raise HTTPException(
            status_code=403,
            detail="step-up required: confirm with a fresh code (POST /account/step-up) and retry",
        ) from None
    except ConduitError as exc:
        raise HTTPException(status_code=400, detail=exc.message) from None
    return {
        "certificate": issued.text,
        "certificate_id": issued.key_id,
        "serial": str(issued.serial),
        "fingerprint": issued.fingerprint,
        "valid_after": issued.valid_after.isoformat(),
        "valid_before": issued.valid_before.isoformat(),
    }


@router.post("/account/connect-codes", response_class=HTMLResponse)
async def connect_code(
    request: Request, context: Session, asset: Annotated[str, Form(max_length=128)]
) -> Response:
    """A code only for an asset the user may reach over SSH now; a missing asset and a
    forbidden one get the same 404, and the audit event says which it was."""
    code = await make_connect_code(request, context, asset)
    if code is None:
        extra: dict[str, object] = {"error": "not found or not permitted"}
        return await _account_page(request, context, extra, status_code=404)
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
    if not role_allows(context.session.roles, SiteAction.MANAGE_USERS):
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
