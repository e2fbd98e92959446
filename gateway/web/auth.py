"""Portal login and logout, and the request guards every other route uses.

Login is two posts bound to one pending-login cookie (``__Host-conduit_login``): username
and password, then the code. Both forms carry a CSRF token derived from that cookie. A
success sets a fresh ``__Host-conduit_session`` cookie and follows ``next`` only when it
is a local path. Guards: ``current_session`` (the cookie's row, checked on every request),
``check_csrf`` (header ``X-CSRF-Token`` or form field ``csrf_token``), ``require_scope``
(``Authorization: Bearer`` API tokens). Does not decide credentials (``gateway.identity``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.requests import HTTPConnection

from gateway.identity import pending, portal_sessions
from gateway.identity.login import FAILED, AuthenticationFailed, Authenticator
from gateway.identity.passwords import MAX_PASSWORD_LENGTH
from gateway.identity.portal_sessions import ActiveSession, SessionLimits
from gateway.identity.tokens import TokenIdentity, authenticate_token
from gateway.services import Services
from gateway.web import forwarded

router = APIRouter(include_in_schema=False)

LOGIN_COOKIE = "__Host-conduit_login"
SESSION_COOKIE = "__Host-conduit_session"
CSRF_HEADER = "x-csrf-token"
# A local path: one leading slash, then no slash or backslash right after it, no
# backslashes or control characters anywhere (browsers treat "/\\evil" like "//evil").
_LOCAL_PATH = re.compile(r"/(?![/\\])[\x21-\x5b\x5d-\x7e]*")
MAX_NEXT = 512

Text64 = Annotated[str, Form(max_length=64)]
CSRFField = Annotated[str, Form(max_length=128)]


def services_of(request: HTTPConnection) -> Services:
    services: Services = request.app.state.services
    return services


def authenticator(request: Request) -> Authenticator:
    """The process's one ``Authenticator``, shared with SSH (one argon2 concurrency limit)."""
    return services_of(request).authenticator


def limits(services: Services) -> SessionLimits:
    portal = services.settings.portal
    return SessionLimits(
        dt.timedelta(seconds=portal.session_idle_seconds),
        dt.timedelta(seconds=portal.session_absolute_seconds),
    )


def safe_next(value: str | None) -> str:
    """``value`` if it is a path on this site, else "/": never an absolute or // URL."""
    if value and len(value) <= MAX_NEXT and _LOCAL_PATH.fullmatch(value):
        return value
    return "/"


def source_of(request: HTTPConnection) -> str:
    """The client's address: the TCP peer, or behind a trusted proxy (``portal.
    trusted_proxies``) the hop it names in ``X-Forwarded-For`` (``forwarded``)."""
    peer = request.client.host if request.client is not None else ""
    trusted = services_of(request).settings.portal.trusted_proxies
    if not trusted:
        return peer
    headers = request.headers.getlist("x-forwarded-for")
    return forwarded.client_address(peer, headers, forwarded.networks(tuple(trusted)))


def set_private_cookie(response: Response, name: str, value: str, max_age: int) -> None:
    # __Host- requires Secure, Path=/ and no Domain; the browser then refuses to let a
    # subdomain or a plain-HTTP page plant or overwrite it.
    response.set_cookie(
        name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="strict"
    )


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path="/", secure=True, httponly=True, samesite="strict")


def render(
    request: Request, template: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    return request.app.state.templates.TemplateResponse(  # type: ignore[no-any-return]
        request, template, context, status_code=status_code
    )


def forbidden() -> HTTPException:
    return HTTPException(status_code=403, detail="missing or invalid CSRF token")


async def _login_page(
    request: Request, next_path: str, error: str = "", status_code: int = 200
) -> HTMLResponse:
    """A login form with a brand-new pending state (and cookie)."""
    services = services_of(request)
    async with services.sessions() as db, db.begin():
        raw = await pending.start(db, services.clock(), safe_next(next_path))
    context = {
        "banner": services.settings.portal.banner,
        "csrf_token": pending.csrf_token(services.keys.master_key, "login", raw),
        "error": error,
    }
    response = render(request, "login.html", context, status_code)
    set_private_cookie(response, LOGIN_COOKIE, raw, int(pending.PENDING_LIFETIME.total_seconds()))
    return response


def _check_login_csrf(request: Request, csrf_token: str) -> str:
    raw = request.cookies.get(LOGIN_COOKIE)
    services = services_of(request)
    if raw is None or not pending.csrf_ok(services.keys.master_key, "login", raw, csrf_token):
        raise forbidden()
    return raw


@router.get("/login", response_class=HTMLResponse)
async def login_form(
    request: Request, next_path: Annotated[str, Query(alias="next", max_length=2048)] = "/"
) -> HTMLResponse:
    return await _login_page(request, next_path)


@router.post("/login")
async def login_password(
    request: Request,
    username: Text64,
    password: Annotated[str, Form(max_length=MAX_PASSWORD_LENGTH)],
    csrf_token: CSRFField = "",
) -> Response:
    raw = _check_login_csrf(request, csrf_token)
    services = services_of(request)
    ok = await authenticator(request).password_step(
        raw, username, password, services.clock(), source_of(request)
    )
    if not ok:
        return await _login_page(request, "/", FAILED, status_code=401)
    return RedirectResponse("/login/code", status_code=303)


@router.get("/login/code", response_class=HTMLResponse)
async def login_code_form(request: Request) -> Response:
    services = services_of(request)
    raw = request.cookies.get(LOGIN_COOKIE)
    async with services.sessions() as db:
        state = await pending.find(db, raw, services.clock())
    if raw is None or state is None or not state.username:
        return RedirectResponse("/login", status_code=303)
    context = {
        "banner": services.settings.portal.banner,
        "csrf_token": pending.csrf_token(services.keys.master_key, "login", raw),
    }
    return render(request, "login_code.html", context)


@router.post("/login/code")
async def login_code(
    request: Request, code: Annotated[str, Form(max_length=64)], csrf_token: CSRFField = ""
) -> Response:
    raw = _check_login_csrf(request, csrf_token)
    services = services_of(request)
    now = services.clock()
    try:
        identity, next_path = await authenticator(request).code_step(
            raw, code, now, source_of(request)
        )
    except AuthenticationFailed:
        return await _login_page(request, "/", FAILED, status_code=401)
    async with services.sessions() as db, db.begin():
        previous = request.cookies.get(SESSION_COOKIE)
        if previous is not None:
            # The browser's earlier session ends: one browser, one live session id.
            await portal_sessions.revoke_raw(db, previous, now)
        session_id = await portal_sessions.create(
            db,
            identity.user_id,
            now,
            identity.mfa_at,
            source_of(request),
            request.headers.get("user-agent", ""),
        )
    response = RedirectResponse(safe_next(next_path), status_code=303)
    clear_cookie(response, LOGIN_COOKIE)
    set_private_cookie(
        response, SESSION_COOKIE, session_id, services.settings.portal.session_absolute_seconds
    )
    return response


@dataclass(frozen=True)
class PortalContext:
    """A request's valid session, its raw cookie id and its CSRF token."""

    session: ActiveSession
    raw_id: str
    csrf_token: str


async def current_session(request: HTTPConnection, *, touch: bool = True) -> PortalContext | None:
    """The valid portal session of a request or websocket (its cookie), else None. ``touch``
    False checks without counting as the person's activity (an open websocket's recheck)."""
    services = services_of(request)
    raw = request.cookies.get(SESSION_COOKIE)
    if raw is None:
        return None
    async with services.sessions() as db, db.begin():
        session = await portal_sessions.lookup(
            db, raw, services.clock(), limits(services), touch=touch
        )
    if session is None:
        return None
    token = pending.csrf_token(services.keys.master_key, "session", raw)
    return PortalContext(session, raw, token)


async def require_session(request: Request) -> PortalContext:
    """Dependency: a valid session or 401 (pages redirect to /login themselves)."""
    context = await current_session(request)
    if context is None:
        raise HTTPException(status_code=401, detail="log in first")
    return context


async def check_csrf(request: Request, context: PortalContext) -> None:
    """403 unless the request carries this session's CSRF token."""
    presented = request.headers.get(CSRF_HEADER)
    if presented is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        value = (await request.form()).get("csrf_token")
        presented = value if isinstance(value, str) else None
    services = services_of(request)
    if not pending.csrf_ok(services.keys.master_key, "session", context.raw_id, presented):
        raise forbidden()


async def require_session_csrf(request: Request) -> PortalContext:
    """Dependency for every state-changing portal route: session, then CSRF."""
    context = await require_session(request)
    await check_csrf(request, context)
    return context


@router.post("/logout")
async def logout(request: Request) -> Response:
    context = await require_session_csrf(request)
    services = services_of(request)
    async with services.sessions() as db, db.begin():
        await portal_sessions.revoke(db, services.clock(), session_id=context.session.session_id)
    await authenticator(request).audit.record(
        actor=context.session.username,
        action="logout",
        result="success",
        target=f"portal-session:{context.session.session_id}",
        source=source_of(request),
    )
    response = RedirectResponse("/login", status_code=303)
    clear_cookie(response, SESSION_COOKIE)
    return response


def require_scope(scope: str) -> Callable[[Request], Awaitable[TokenIdentity]]:
    """Dependency factory: a Bearer API token that carries ``scope`` (401 / 403)."""

    async def dependency(request: Request) -> TokenIdentity:
        header = request.headers.get("authorization", "")
        kind, _, token = header.partition(" ")
        services = services_of(request)
        found: TokenIdentity | None = None
        if kind.lower() == "bearer" and token:
            async with services.sessions() as db, db.begin():  # it notes the use
                found = await authenticate_token(db, token.strip(), services.clock())
        if found is None:
            raise HTTPException(
                status_code=401, detail="invalid token", headers={"WWW-Authenticate": "Bearer"}
            )
        if scope not in found.scopes:
            raise HTTPException(status_code=403, detail="token lacks scope")
        return found

    return dependency
