"""FastAPI app factory: wires routers, templates, static files and security headers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from gateway import __version__
from gateway.services import Services
from gateway.sessions.broker import Broker
from gateway.web import (
    access_pages,
    account,
    admin_alerts,
    admin_assets,
    admin_dashboard,
    admin_grants,
    admin_tokens,
    admin_users,
    admin_zones,
    api_access,
    api_admin,
    api_assets,
    api_evidence,
    api_nodes,
    api_sessions,
    api_users,
    approvals,
    assets,
    audit_pages,
    auth,
    connect,
    desktop,
    desktop_player,
    enrollment,
    evidence_bundle,
    health,
    history,
    live,
    my_sessions,
    outage,
    pages,
    player,
    portal,
    portal_forms,
    search_pages,
    terminal,
    transfers,
    watch,
    watch_owner,
)
from gateway.web.security import security_headers

HERE = Path(__file__).parent


def create_app(services: Services, broker: Broker | None = None) -> FastAPI:
    """The portal; ``broker`` (``conduit serve``'s) serves the terminal and watch sockets."""
    app = FastAPI(title="Conduit", version=__version__, docs_url=None, redoc_url=None)
    app.state.services = services
    app.state.broker = broker
    app.state.terminal_tickets = terminal.TerminalTickets(services)
    app.state.desktops = desktop.Desktops(services.settings.desktop.max_sessions)
    app.state.templates = Jinja2Templates(directory=HERE / "templates")
    # Innermost of the middlewares: its 503s get the security headers and are counted.
    outage.install(app, services)
    app.middleware("http")(security_headers)

    async def count(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        services.metrics.http_requests.labels(str(response.status_code)).inc()
        return response

    app.middleware("http")(count)
    app.include_router(health.router)
    app.include_router(pages.router)
    app.include_router(auth.router)
    app.include_router(enrollment.router)
    app.include_router(account.router)
    app.include_router(portal.router)
    app.include_router(connect.router)
    app.include_router(my_sessions.router)
    app.include_router(history.router)
    app.include_router(search_pages.router)
    app.include_router(player.router)
    app.include_router(desktop_player.router)
    app.include_router(live.router)
    app.include_router(access_pages.router)
    app.include_router(approvals.router)  # after portal: /requests/badge is portal's
    app.include_router(assets.router)
    app.include_router(admin_zones.router)
    app.include_router(admin_assets.router)
    app.include_router(admin_users.router)
    app.include_router(admin_grants.router)
    app.include_router(admin_dashboard.router)
    app.include_router(admin_tokens.router)
    app.include_router(admin_alerts.router)
    app.include_router(terminal.router)
    app.include_router(desktop.router)
    app.include_router(watch.router)
    app.include_router(watch_owner.router)
    app.include_router(evidence_bundle.router)
    app.include_router(audit_pages.router)
    app.include_router(transfers.router)
    app.add_exception_handler(portal_forms.NotPermitted, portal.not_found_page)
    app.include_router(api_access.router)
    app.include_router(api_sessions.router)
    for api_router in (
        api_users.router, api_assets.router, api_admin.zones_router, api_admin.tokens_router,
        api_admin.alerts_router, api_evidence.recordings_router, api_evidence.search_router,
        api_evidence.audit_router, api_evidence.transfers_router, api_nodes.router,
    ):  # fmt: skip
        app.include_router(api_router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    return app
