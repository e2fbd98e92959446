"""Portal pages that need no login: the landing page and enrolment-link landing.

User text reaches templates only as escaped values (autoescape on, templates from files).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from gateway.identity.enrollment import find_valid
from gateway.services import Services

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index(request: Request) -> HTMLResponse:
    services: Services = request.app.state.services
    return request.app.state.templates.TemplateResponse(  # type: ignore[no-any-return]
        request, "index.html", {"banner": services.settings.portal.banner}
    )


@router.get("/enroll/{token}", response_class=HTMLResponse, include_in_schema=False)
async def enroll(request: Request, token: str) -> HTMLResponse:
    services: Services = request.app.state.services
    async with services.sessions() as db:
        row = await find_valid(db, token, services.clock())
    templates = request.app.state.templates
    if row is None:
        # Unknown, used and expired links look the same.
        return templates.TemplateResponse(  # type: ignore[no-any-return]
            request, "enroll_invalid.html", {}, status_code=404
        )
    return templates.TemplateResponse(  # type: ignore[no-any-return]
        request,
        "enroll.html",
        {"purpose": row.purpose, "expires_at": row.expires_at.strftime("%Y-%m-%d %H:%M UTC")},
    )
