"""JSON API for access: requests, approvals, grants and "what may I reach now" (``/api/v1``).

Callers authenticate with a portal session cookie (state-changing calls also need the
session's ``X-CSRF-Token`` header, as everywhere in the portal) or an ``Authorization:
Bearer`` API token carrying the route's scope: ``read`` for reads, ``requests`` to create or
cancel requests, ``approve`` to approve or deny, ``admin`` for grants. Approving, denying and
changing grants also need a second factor within the step-up limit, which only a portal
session can show: an API token is refused those changes. Vendors see only their own
requests; approvers, admins and auditors see all. Every refusal (authentication, validation,
permission, state) is audited as ``api.refused``. Decisions are the services' own
(``AuthzService``, ``RequestService``); this module translates them to HTTP.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

from gateway.authz.access_requests import RequestConflict
from gateway.authz.service import PolicyError
from gateway.authz.tables import Grant
from gateway.errors import ConduitError
from gateway.identity.portal_sessions import ActiveSession, StepUpRequired, require_recent_mfa
from gateway.identity.tokens import authenticate_token
from gateway.web.admin_grants import preview_windows
from gateway.web.auth import check_csrf, current_session, services_of, source_of
from rbac import requests as rq
from rbac.errors import ApprovalError, RbacError, TransitionError, WindowError
from rbac.roles import SiteAction, role_allows
from rbac.windows import check_instant, parse_schedule

NOT_FOUND = "not found or not permitted"
MAX_BODY = 64 * 1024  # the largest valid body is a few kB; refuse bigger before parsing
MAX_TEXT = 2000  # reason and comment, as rbac.requests allows
MAX_ITEMS = 50
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
STATES = Literal["pending", "approved", "denied", "cancelled", "expired", "revoked"]

Name = Annotated[str, StringConstraints(min_length=1, max_length=64)]
ActionName = Annotated[str, StringConstraints(min_length=1, max_length=96)]
RequestId = Annotated[str, Path(min_length=1, max_length=40, pattern=r"^[a-z0-9-]+$")]
GrantId = Annotated[str, Path(min_length=1, max_length=40, pattern=r"^[a-z0-9-]+$")]


# Strict models refuse a string where a number belongs; instants arrive as JSON text, so
# they alone are parsed leniently (and must carry an offset).
def _text_instant(value: object) -> object:
    if not isinstance(value, str) or len(value) > 40:
        raise ValueError("an ISO 8601 date and time with a UTC offset is required")
    return value


def _in_range(value: dt.datetime) -> dt.datetime:
    # The documented range (rbac.windows.check_instant): nothing outside it is ever stored.
    try:
        return check_instant(value, "instant")
    except WindowError as exc:
        raise ValueError(exc.message) from None


Instant = Annotated[
    AwareDatetime,
    Field(
        strict=False,
        description="ISO 8601 with a UTC offset, from 2000-01-01 to before 2200-01-01 (UTC)",
    ),
    BeforeValidator(_text_instant),
    AfterValidator(_in_range),
]


class Refused(HTTPException):
    """An HTTP refusal with what the audit log should say (never shown to the caller)."""

    def __init__(
        self, status: int, message: str, why: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)
        self.why = why


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


async def _audit_refusal(request: Request, status: int, why: str) -> None:
    services = services_of(request)
    await services.audit.record(
        actor=getattr(request.state, "api_actor", "anonymous"),
        action="api.refused",
        result="denied",
        target=_clip(request.url.path, 200),
        source=source_of(request),
        detail={"method": request.method, "status": status, "reason": _clip(why)},
    )


def _validation_summary(exc: RequestValidationError) -> str:
    # Locations and error types only: the offending input may be huge or sensitive.
    parts = []
    for error in exc.errors()[:10]:
        loc = ".".join(str(p) for p in error.get("loc", ()))
        parts.append(f"{loc}: {error.get('type', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


class AuditedRoute(APIRoute):
    """A route whose every refusal is audited, and whose oversized bodies are refused."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def audited(request: Request) -> Response:
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
                await _audit_refusal(request, 413, f"body of {_clip(length, 20)} bytes")
                return JSONResponse({"detail": "request body too large"}, status_code=413)
            try:
                return await handler(request)
            except RequestValidationError as exc:
                await _audit_refusal(request, 422, _validation_summary(exc))
                raise
            except Refused as exc:
                await _audit_refusal(request, exc.status_code, exc.why)
                raise
            except HTTPException as exc:
                await _audit_refusal(request, exc.status_code, str(exc.detail))
                raise

        return audited


router = APIRouter(prefix="/api/v1", tags=["access"], route_class=AuditedRoute)


# -- authentication -----------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """Who is asking: a portal session (``session`` set) or an API token (``session`` None)."""

    username: str
    roles: frozenset[str]
    session: ActiveSession | None

    @classmethod
    def of_session(cls, session: ActiveSession) -> Caller:
        """A portal session as the caller (pages and websockets ask as the API does)."""
        return cls(session.username, frozenset(session.roles), session)

    def may(self, action: SiteAction) -> bool:
        """A site-wide capability of the caller's roles, as ``rbac.roles`` decides it."""
        return role_allows(self.roles, action)

    @property
    def sees_all(self) -> bool:
        return self.may(SiteAction.SEE_ALL_REQUESTS)


def authenticated(scope: str) -> Callable[[Request], Awaitable[Caller]]:
    """Dependency factory: a Bearer token with ``scope``, or a portal session (+ CSRF)."""

    async def dependency(request: Request) -> Caller:
        services = services_of(request)
        header = request.headers.get("authorization")
        if header is not None:
            kind, _, token = header.partition(" ")
            found = None
            if kind.lower() == "bearer" and token.strip():
                async with services.sessions() as db, db.begin():  # it notes the use
                    found = await authenticate_token(db, token.strip(), services.clock())
            if found is None:
                raise Refused(
                    401, "invalid token", "unusable API token", {"WWW-Authenticate": "Bearer"}
                )
            request.state.api_actor = found.username
            if scope not in found.scopes:
                raise Refused(403, "token lacks scope", f"token {found.token_id} lacks {scope}")
            return Caller(found.username, frozenset(found.roles), None)
        context = await current_session(request)
        if context is None:
            raise Refused(401, "log in first", "no valid session or token")
        request.state.api_actor = context.session.username
        if request.method not in SAFE_METHODS:
            try:
                await check_csrf(request, context)
            except HTTPException:
                raise Refused(403, "missing or invalid CSRF token", "CSRF check failed") from None
        return Caller.of_session(context.session)

    return dependency


Reader = Annotated[Caller, Depends(authenticated("read"))]
Requester = Annotated[Caller, Depends(authenticated("requests"))]
Approver = Annotated[Caller, Depends(authenticated("approve"))]
Admin = Annotated[Caller, Depends(authenticated("admin"))]


def require_step_up(caller: Caller, now: dt.datetime) -> None:
    if caller.session is None:
        raise Refused(
            403,
            "this change needs a portal session with a recent second factor; "
            "API tokens cannot confirm one",
            "step-up refused for an API token",
        )
    try:
        require_recent_mfa(caller.session, now)
    except StepUpRequired as exc:
        raise Refused(
            403,
            "step-up required: confirm with a fresh code (POST /account/step-up) and retry",
            exc.detail,
        ) from None


def require_admin(caller: Caller) -> None:
    if not caller.may(SiteAction.MANAGE_GRANTS):
        raise Refused(403, "not permitted: admin role required", "caller is not an admin")


# -- models -------------------------------------------------------------------------------


class Strict(BaseModel):
    """Request bodies: unknown fields and loosely typed values are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Reachable(Out):
    asset: str
    action: str
    grant_id: str | None
    valid_until: dt.datetime | None


class RequestIn(Strict):
    assets: list[Name] = Field(min_length=1, max_length=MAX_ITEMS)
    actions: list[ActionName] = Field(min_length=1, max_length=MAX_ITEMS)
    reason: str = Field(min_length=1, max_length=MAX_TEXT)
    start: Instant
    duration_minutes: int = Field(ge=1, le=7 * 24 * 60)


class CommentIn(Strict):
    comment: str = Field(default="", max_length=MAX_TEXT)


class ApprovalOut(Out):
    approver: str
    at: dt.datetime
    comment: str


class TransitionOut(Out):
    state: str
    at: dt.datetime
    actor: str
    comment: str


class RequestOut(Out):
    id: str
    requester: str
    assets: list[str]
    actions: list[str]
    reason: str
    start: dt.datetime
    end: dt.datetime
    duration_minutes: int
    state: str
    required_approvals: int
    created_at: dt.datetime
    approvals: list[ApprovalOut]
    history: list[TransitionOut]

    @classmethod
    def of(cls, r: rq.AccessRequest) -> RequestOut:
        return cls(
            id=r.request_id,
            requester=r.requester,
            assets=list(r.assets),
            actions=list(r.actions),
            reason=r.reason,
            start=r.start,
            end=r.end,
            duration_minutes=int(r.duration.total_seconds()) // 60,
            state=r.state.value,
            required_approvals=r.required_approvals,
            created_at=r.created_at,
            approvals=[ApprovalOut(approver=a.approver, at=a.at, comment=a.comment)
                       for a in r.approvals],
            history=[TransitionOut(state=t.state.value, at=t.at, actor=t.actor,
                                   comment=t.comment) for t in r.history],
        )  # fmt: skip


class GrantIn(Strict):
    subject_kind: Literal["user", "role", "org"]
    subject: Name
    object_kind: Literal["asset", "zone"]
    object: Name
    action: ActionName
    effect: Literal["allow", "deny"] = "allow"
    schedule: str | None = Field(default=None, min_length=1, max_length=500)
    valid_from: Instant | None = None
    valid_until: Instant | None = None


class GrantOut(Out):
    id: str
    subject: str
    object: str
    action: str
    effect: str
    schedule: str | None
    valid_from: dt.datetime | None
    valid_until: dt.datetime | None
    request_id: str | None
    created_by: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    revoked_by: str | None

    @classmethod
    def of(cls, g: Grant) -> GrantOut:
        return cls(
            id=g.id, subject=g.subject, object=g.object, action=g.action, effect=g.effect,
            schedule=g.schedule, valid_from=g.valid_from, valid_until=g.valid_until,
            request_id=g.request_id, created_by=g.created_by, created_at=g.created_at,
            revoked_at=g.revoked_at, revoked_by=g.revoked_by,
        )  # fmt: skip


# -- error translation --------------------------------------------------------------------


def _refusal(exc: Exception) -> Refused:
    """The HTTP answer for a service error: messages are the user-safe ones."""
    if isinstance(exc, ApprovalError):
        return Refused(403, exc.message, exc.detail)
    if isinstance(exc, TransitionError):
        return Refused(409, exc.message, exc.detail)
    if isinstance(exc, RequestConflict):
        return Refused(409, exc.message, exc.detail)
    if isinstance(exc, RbacError):
        return Refused(422, exc.message, exc.detail)
    if isinstance(exc, ConduitError):
        status = 404 if exc.message == NOT_FOUND else 422
        return Refused(status, exc.message, exc.detail)
    raise exc


async def _visible(request: Request, caller: Caller, request_id: str) -> rq.AccessRequest:
    """The request if ``caller`` may see it; a missing and a forbidden one look the same."""
    try:
        found = await services_of(request).requests.get(request_id)
    except PolicyError as exc:
        raise Refused(404, NOT_FOUND, exc.detail) from None
    if not caller.sees_all and found.requester != caller.username:
        raise Refused(404, NOT_FOUND, f"request {request_id} belongs to someone else")
    return found


_ERRORS = (RbacError, ConduitError)


# -- routes -------------------------------------------------------------------------------


@router.get("/access/now", response_model=list[Reachable])
async def access_now(request: Request, caller: Reader) -> list[Reachable]:
    """Every (asset, action) the caller may use right now, and until when."""
    reachable = await services_of(request).authz.reachable_now(caller.username)
    return [
        Reachable(
            asset=asset,
            action=action,
            grant_id=decision.grant_id,
            valid_until=decision.valid_until,
        )
        for asset, action, decision in reachable
    ]


@router.post("/requests", status_code=201, response_model=RequestOut)
async def create_request(request: Request, body: RequestIn, caller: Requester) -> RequestOut:
    services = services_of(request)
    try:
        created = await services.requests.create(
            caller.username,
            body.assets,
            body.actions,
            body.reason,
            body.start,
            dt.timedelta(minutes=body.duration_minutes),
            source=source_of(request),
        )
    except _ERRORS as exc:
        raise _refusal(exc) from None
    return RequestOut.of(created)


@router.get("/requests", response_model=list[RequestOut])
async def list_requests(
    request: Request, caller: Reader, state: Annotated[STATES | None, Query()] = None
) -> list[RequestOut]:
    """The caller's own requests; approvers, admins and auditors see everyone's."""
    services = services_of(request)
    requester = None if caller.sees_all else caller.username
    found = await services.requests.list_requests(state=state, requester=requester)
    return [RequestOut.of(r) for r in found]


@router.get("/requests/{request_id}", response_model=RequestOut)
async def get_request(request: Request, request_id: RequestId, caller: Reader) -> RequestOut:
    return RequestOut.of(await _visible(request, caller, request_id))


async def _answer(
    request: Request, request_id: str, body: CommentIn, caller: Caller, *, approve: bool
) -> RequestOut:
    """Approve or deny: needs ``approve`` on every asset and a recent second factor."""
    services = services_of(request)
    await _visible(request, caller, request_id)
    require_step_up(caller, services.clock())
    answer = services.requests.approve if approve else services.requests.deny
    try:
        done = await answer(request_id, caller.username, body.comment, source=source_of(request))
    except _ERRORS as exc:
        raise _refusal(exc) from None
    return RequestOut.of(done)


@router.post("/requests/{request_id}/approve", response_model=RequestOut)
async def approve_request(
    request: Request, request_id: RequestId, body: CommentIn, caller: Approver
) -> RequestOut:
    return await _answer(request, request_id, body, caller, approve=True)


@router.post("/requests/{request_id}/deny", response_model=RequestOut)
async def deny_request(
    request: Request, request_id: RequestId, body: CommentIn, caller: Approver
) -> RequestOut:
    return await _answer(request, request_id, body, caller, approve=False)


@router.post("/requests/{request_id}/cancel", response_model=RequestOut)
async def cancel_request(request: Request, request_id: RequestId, caller: Requester) -> RequestOut:
    """The requester withdraws a pending request."""
    services = services_of(request)
    await _visible(request, caller, request_id)
    try:
        done = await services.requests.cancel(
            request_id, caller.username, source=source_of(request)
        )
    except _ERRORS as exc:
        raise _refusal(exc) from None
    return RequestOut.of(done)


@router.get("/grants", response_model=list[GrantOut])
async def list_grants(
    request: Request, caller: Admin, include_revoked: Annotated[bool, Query()] = False
) -> list[GrantOut]:
    require_admin(caller)
    grants = await services_of(request).authz.list_grants(include_revoked=include_revoked)
    return [GrantOut.of(g) for g in grants]


class PreviewIn(Strict):
    schedule: str = Field(min_length=1, max_length=500)


class WindowOut(Out):
    local: str
    utc: str
    open_now: bool


@router.post("/grants/preview", response_model=list[WindowOut])
async def preview_grant_windows(
    request: Request, body: PreviewIn, caller: Admin
) -> list[WindowOut]:
    """The next three windows of a schedule (``Mon-Fri 07:00-17:00 Europe/Berlin``) in its own
    time zone and in UTC, as the authorizer will apply it; stores nothing."""
    require_admin(caller)
    try:
        schedule = parse_schedule(body.schedule)
    except RbacError as exc:
        raise Refused(422, exc.message, f"schedule preview: {exc.detail}") from None
    return [
        WindowOut(local=w["local"], utc=w["utc"], open_now=bool(w["now"]))
        for w in preview_windows(schedule, services_of(request).clock())
    ]


@router.post("/grants", status_code=201, response_model=GrantOut)
async def add_grant(request: Request, body: GrantIn, caller: Admin) -> GrantOut:
    """Standing access or an explicit deny (admin, recent second factor)."""
    services = services_of(request)
    require_admin(caller)
    require_step_up(caller, services.clock())
    try:
        grant = await services.authz.add_grant(
            subject_kind=body.subject_kind,
            subject=body.subject,
            object_kind=body.object_kind,
            obj=body.object,
            action=body.action,
            actor=caller.username,
            schedule=body.schedule,
            valid_from=body.valid_from,
            valid_until=body.valid_until,
            effect=body.effect,
        )
    except _ERRORS as exc:
        raise _refusal(exc) from None
    return GrantOut.of(grant)


@router.post("/grants/{grant_id}/revoke", response_model=GrantOut)
async def revoke_grant(request: Request, grant_id: GrantId, caller: Admin) -> GrantOut:
    services = services_of(request)
    require_admin(caller)
    require_step_up(caller, services.clock())
    try:
        grant = await services.authz.revoke_grant(grant_id, actor=caller.username)
    except PolicyError as exc:
        raise Refused(404, NOT_FOUND, exc.detail) from None
    return GrantOut.of(grant)
