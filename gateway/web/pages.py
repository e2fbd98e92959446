"""Portal pages that need no login: the landing page (enrolment is ``enrollment.py``).

User text reaches templates only as escaped values (autoescape on, templates from files).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from gateway.services import Services

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index(request: Request) -> HTMLResponse:
    services: Services = request.app.state.services
    return request.app.state.templates.TemplateResponse(  # type: ignore[no-any-return]
        request, "index.html", {"banner": services.settings.portal.banner}
    )
