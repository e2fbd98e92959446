"""Enrolment pages: open a one-time link, set a password, enrol TOTP, get recovery codes.

The page shows the TOTP secret as text and as a QR code (segno SVG as a ``data:`` image,
which the CSP allows; no script). The form post carries a CSRF token derived from the
link. Unknown, used and expired links look the same (404). Does not decide the rules
(``gateway.identity.onboarding``).
"""

from __future__ import annotations

from typing import Annotated

import segno
from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from gateway.db.models import User
from gateway.identity import pending
from gateway.identity.enrollment import ADMIN_BOOTSTRAP
from gateway.identity.onboarding import (
    EnrolmentError,
    complete_enrolment,
    enrolment_totp_secret,
    link_purpose,
)
from gateway.identity.passwords import MAX_PASSWORD_LENGTH, PasswordPolicy
from gateway.identity.totp import provisioning_uri
from gateway.web.auth import authenticator, render, services_of, source_of

router = APIRouter(include_in_schema=False)
Password = Annotated[str, Form(max_length=MAX_PASSWORD_LENGTH)]


async def _form(
    request: Request, token: str, error: str = "", status_code: int = 200
) -> HTMLResponse:
    services = services_of(request)
    async with services.sessions() as db:
        row = await link_purpose(db, token, services.clock())
        invited = None
        if row is not None and row.user_id is not None:
            user = await db.get(User, row.user_id)
            invited = user.username if user is not None else None
    if row is None:
        return render(request, "enroll_invalid.html", {}, status_code=404)
    secret = enrolment_totp_secret(services.keys.master_key, row.token_sha256)
    label = invited or "new-admin"
    qr = segno.make(provisioning_uri(secret, label), error="m")
    context = {
        "purpose": row.purpose,
        "is_bootstrap": row.purpose == ADMIN_BOOTSTRAP,
        "username": invited or "",
        "expires_at": row.expires_at.strftime("%Y-%m-%d %H:%M UTC"),
        "secret": secret,
        "qr_data_uri": qr.svg_data_uri(scale=4),
        "csrf_token": pending.csrf_token(services.keys.master_key, "enrol", token),
        "error": error,
    }
    return render(request, "enroll.html", context, status_code)


@router.get("/enroll/{token}", response_class=HTMLResponse)
async def enroll_form(request: Request, token: str) -> HTMLResponse:
    return await _form(request, token)


@router.post("/enroll/{token}", response_class=HTMLResponse)
async def enroll_submit(
    request: Request,
    token: str,
    password: Password,
    password_confirm: Password,
    code: Annotated[str, Form(max_length=64)],
    username: Annotated[str, Form(max_length=64)] = "",
    csrf_token: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    services = services_of(request)
    if not pending.csrf_ok(services.keys.master_key, "enrol", token, csrf_token):
        raise HTTPException(status_code=403, detail="missing or invalid CSRF token")
    if password != password_confirm:
        return await _form(request, token, "the two passwords differ", 400)
    now = services.clock()
    try:
        async with services.sessions() as db, db.begin():
            enrolled = await complete_enrolment(
                db,
                token,
                password=password,
                code=code,
                now=now,
                master_key=services.keys.master_key,
                policy=PasswordPolicy.from_settings(services.settings.passwords),
                username=username,
            )
    except EnrolmentError as exc:
        return await _form(request, token, exc.message, 400)
    await authenticator(request).audit.record(
        actor=enrolled.username,
        action="user.enrol",
        result="success",
        target=enrolled.username,
        source=source_of(request),
        detail={"purpose": enrolled.purpose, "factor": "totp"},
    )
    return render(
        request,
        "enroll_done.html",
        {"username": enrolled.username, "recovery_codes": enrolled.recovery_codes},
    )
