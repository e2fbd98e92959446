"""The portal while the database is unreachable: HTTP 503 with a clear page or JSON.

A middleware answers 503 at once while ``db_health`` is down (probes, metrics and static
files still answer; ``/readyz`` itself says 503 so a load balancer takes the node out), and
an exception handler turns a connection lost in the middle of a request into the same 503
instead of a 500 traceback. Each refusal is audited (into the audit spool, up to the
per-outage limit in ``gateway.db.health``), within a bound. Does not decide when the
database is down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from gateway.db.health import UNREACHABLE_ERRORS, UNREACHABLE_TEXT, is_unreachable
from gateway.services import Services
from gateway.web.auth import render, source_of

log = logging.getLogger(__name__)
# Answer whatever the database: liveness, readiness (which checks it), metrics, assets.
ALWAYS_SERVED = ("/healthz", "/readyz", "/metrics", "/static/")
RETRY_AFTER_SECONDS = "5"
# The refusal's audit is awaited inline, so it is bounded: while the database is down it goes
# straight to the spool (milliseconds), but it may queue behind an append still waiting for
# a silent database. Past this the 503 is sent anyway, the loss logged.
REFUSAL_AUDIT_SECONDS = 2.0


async def unavailable(request: Request, services: Services) -> Response:
    """The 503: JSON for the API, a page otherwise; audited."""
    if services.db_health.audit_refusal():
        try:
            async with asyncio.timeout(REFUSAL_AUDIT_SECONDS):
                await services.audit.record(
                    actor="anonymous", action="portal.refused", result="error",
                    source=source_of(request), target=request.url.path,
                    detail={"method": request.method, "reason": "database unreachable"},
                )  # fmt: skip
        except Exception:  # spool full, or too slow: the refusal stands, counted in the log
            log.exception("portal refusal not audited")
    headers = {"Retry-After": RETRY_AFTER_SECONDS}
    if request.url.path.startswith("/api/"):
        return JSONResponse(
            {"detail": UNREACHABLE_TEXT, "code": "database_unreachable"},
            status_code=503, headers=headers,
        )  # fmt: skip
    response = render(request, "unavailable.html", {}, status_code=503)
    response.headers.update(headers)
    return response


def install(app: FastAPI, services: Services) -> None:
    async def refuse_while_down(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if services.db_health.up or request.url.path.startswith(ALWAYS_SERVED):
            return await call_next(request)
        return await unavailable(request, services)

    async def lost_midway(request: Request, error: Exception) -> Response:
        # An OSError may come from a file as well: the probe says whether it was the database.
        if not is_unreachable(error) or await services.db_health.probe():
            raise error  # not an outage: the ordinary 500 path
        return await unavailable(request, services)

    app.middleware("http")(refuse_while_down)
    for kind in UNREACHABLE_ERRORS:
        app.add_exception_handler(kind, lost_midway)
