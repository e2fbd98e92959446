"""Routes for probes and monitoring: /healthz, /readyz, /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.health import readiness
from gateway.services import Services

router = APIRouter()


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> JSONResponse:
    results = await readiness(_services(request))
    failing = [r.name for r in results if not r.ok]
    body = {
        "status": "not ready" if failing else "ready",
        "checks": {r.name: "ok" if r.ok else "failing" for r in results},
        "failing": failing,
    }
    return JSONResponse(body, status_code=503 if failing else 200)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    services = _services(request)
    if not services.settings.portal.metrics:
        return Response(status_code=404)
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
