"""Portal pages that need no login: the landing page (enrolment is ``enrollment.py``).

``/`` shows a sign-in link when signed out and sends a signed-in user to their home page.

User text reaches templates only as escaped values (autoescape on, templates from files).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gateway.services import Services
from gateway.web.auth import current_session

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index(request: Request) -> Response:
    if await current_session(request) is not None:
        return RedirectResponse("/home", status_code=303)
    services: Services = request.app.state.services
    return request.app.state.templates.TemplateResponse(  # type: ignore[no-any-return]
        request, "index.html", {"banner": services.settings.portal.banner}
    )
