"""JSON API for site administration shared pieces, zones, API tokens and security alerts.

What every admin route shares: ``require_site_admin`` (the admin pages' capability,
``SiteAction.ADMINISTER_SITE``; anyone else gets 403, audited ``api.refused``) and
``admin_change`` (that plus a second factor within the step-up limit, which only a portal
session can show, so an API token with the ``admin`` scope may read but never change), and
``audit_admin_change`` (``admin.changed`` with before and after, as the pages write it).
Routes here: ``/api/v1/zones`` (list, add, change approval rules), ``/api/v1/tokens``
(every user's tokens, revoke) and ``/api/v1/alerts``. Users live in ``api_users``, assets in
``api_assets``. Each route calls the services the admin pages and the CLI call; this module
only translates. Does not decide access.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import Field

from gateway.audit.alerts import recent_alerts
from gateway.authz.service import MAX_APPROVALS, MAX_REQUEST_HOURS, PolicyError
from gateway.authz.tables import Zone
from gateway.identity import tokens
from gateway.web.admin_common import record_change
from gateway.web.admin_tokens import token_facts
from gateway.web.api_access import (
    NOT_FOUND,
    Admin,
    AuditedRoute,
    Caller,
    Name,
    Out,
    Refused,
    Strict,
    require_step_up,
)
from gateway.web.auth import services_of
from rbac.errors import RbacError
from rbac.names import check_name
from rbac.roles import SiteAction

TOKEN_ID_MAX = 2**63 - 1
ALERTS_MAX = 200
DETAIL_MAX = 400

zones_router = APIRouter(prefix="/api/v1", tags=["zones"], route_class=AuditedRoute)
tokens_router = APIRouter(prefix="/api/v1", tags=["tokens"], route_class=AuditedRoute)
alerts_router = APIRouter(prefix="/api/v1", tags=["alerts"], route_class=AuditedRoute)
ZoneName = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


def require_site_admin(caller: Caller) -> None:
    """The admin pages' capability; everyone else is refused (403, audited)."""
    if not caller.may(SiteAction.ADMINISTER_SITE):
        raise Refused(403, "not permitted: admin role required", "caller is not a site admin")


def admin_change(request: Request, caller: Caller) -> None:
    """An admin change: the admin role and a recent second factor (portal sessions only)."""
    require_site_admin(caller)
    require_step_up(caller, services_of(request).clock())


async def audit_admin_change(
    request: Request,
    caller: Caller,
    what: str,
    target: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    """``admin.changed`` exactly as the page writes it (secrets never in either side)."""
    await record_change(request, caller.username, what, target, before, after)


# -- zones --------------------------------------------------------------------------------


class ZoneOut(Out):
    name: str
    parent: str | None
    required_approvals: int
    max_request_hours: int | None

    @classmethod
    def of(cls, zone: Zone) -> ZoneOut:
        return cls(
            name=zone.name,
            parent=zone.parent,
            required_approvals=zone.required_approvals,
            max_request_hours=zone.max_request_hours,
        )


class ZoneRulesIn(Strict):
    """Approval rules: how many approvals a request needs; its longest duration in hours
    (null: the assets' own limits)."""

    required_approvals: int = Field(ge=1, le=MAX_APPROVALS)
    max_request_hours: int | None = Field(default=None, ge=1, le=MAX_REQUEST_HOURS)


class ZoneIn(ZoneRulesIn):
    name: Name
    parent: Name | None = None


async def _zone(request: Request, name: str) -> Zone:
    for zone in await services_of(request).authz.list_zones():
        if zone.name == name:
            return zone
    raise Refused(404, NOT_FOUND, f"no zone {name}")


@zones_router.get("/zones", response_model=list[ZoneOut])
async def list_zones(request: Request, caller: Admin) -> list[ZoneOut]:
    """Every zone (Purdue level) with its parent and approval rules."""
    require_site_admin(caller)
    return [ZoneOut.of(z) for z in await services_of(request).authz.list_zones()]


@zones_router.post("/zones", status_code=201, response_model=ZoneOut)
async def add_zone(request: Request, body: ZoneIn, caller: Admin) -> ZoneOut:
    """Add a zone under ``parent`` (admin, recent second factor)."""
    admin_change(request, caller)
    services = services_of(request)
    try:
        check_name(body.name, "zone")
        if body.parent is not None and body.parent not in {
            z.name for z in await services.authz.list_zones()
        }:
            raise PolicyError(f"parent zone {body.parent} does not exist")
        await services.authz.add_zone(
            body.name, actor=caller.username, parent=body.parent,
            required_approvals=body.required_approvals, max_request_hours=body.max_request_hours,
        )  # fmt: skip
    except (PolicyError, RbacError) as exc:
        raise Refused(422, exc.message, exc.detail) from None
    after = {"parent": body.parent or "", "required_approvals": body.required_approvals,
             "max_request_hours": body.max_request_hours}  # fmt: skip
    await audit_admin_change(request, caller, "zone", body.name, None, after)
    return ZoneOut.of(await _zone(request, body.name))


@zones_router.put("/zones/{name}/rules", response_model=ZoneOut)
async def change_zone_rules(
    request: Request, name: ZoneName, body: ZoneRulesIn, caller: Admin
) -> ZoneOut:
    """Replace a zone's approval rules (admin, recent second factor)."""
    admin_change(request, caller)
    await _zone(request, name)
    before, after = await services_of(request).authz.update_zone(
        name, actor=caller.username, required_approvals=body.required_approvals,
        max_request_hours=body.max_request_hours,
    )  # fmt: skip
    await audit_admin_change(request, caller, "zone", name, before, after)
    return ZoneOut.of(await _zone(request, name))


# -- API tokens of every user -------------------------------------------------------------


class TokenOut(Out):
    """A token as an admin sees it: never the token itself (shown once, never stored)."""

    id: int
    owner: str
    scopes: list[str]
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    expires_at: dt.datetime
    revoked_at: dt.datetime | None

    @classmethod
    def of(cls, owned: tokens.OwnedToken) -> TokenOut:
        t = owned.token
        return cls(
            id=t.id, owner=owned.owner, scopes=t.scopes.split(), created_at=t.created_at,
            last_used_at=t.last_used_at, expires_at=t.expires_at, revoked_at=t.revoked_at,
        )  # fmt: skip


TokenId = Annotated[int, Path(ge=1, le=TOKEN_ID_MAX)]


@tokens_router.get("/tokens", response_model=list[TokenOut])
async def list_tokens(request: Request, caller: Admin) -> list[TokenOut]:
    """Every user's active API tokens with their last use."""
    require_site_admin(caller)
    services = services_of(request)
    async with services.sessions() as db:
        return [TokenOut.of(t) for t in await tokens.list_all_tokens(db)]


@tokens_router.post("/tokens/{token_id}/revoke", response_model=TokenOut)
async def revoke_token(request: Request, token_id: TokenId, caller: Admin) -> TokenOut:
    """Revoke anyone's token (admin, recent second factor)."""
    admin_change(request, caller)
    services = services_of(request)
    async with services.sessions() as db:
        found = await tokens.find_token(db, token_id)
    if found is None:
        raise Refused(404, NOT_FOUND, f"no active token {token_id}")
    now = services.clock()
    async with services.sessions() as db, db.begin():
        await tokens.revoke_token(db, token_id, now)
    before = token_facts(found)
    after = {**before, "revoked": True}
    await audit_admin_change(request, caller, "token", f"token:{token_id}", before, after)
    return TokenOut.of(found).model_copy(update={"revoked_at": now})


# -- security alerts ----------------------------------------------------------------------


class AlertOut(Out):
    kind: str
    at: dt.datetime
    actor: str
    target: str
    source: str
    event_id: int
    detail: str


@alerts_router.get("/alerts", response_model=list[AlertOut])
async def list_alerts(
    request: Request, caller: Admin, limit: Annotated[int, Query(ge=1, le=ALERTS_MAX)] = 50
) -> list[AlertOut]:
    """The newest security alerts (``conduit_security_alerts_total`` kinds), newest first."""
    require_site_admin(caller)
    found = await recent_alerts(services_of(request).sessions, limit)
    return [
        AlertOut(
            kind=a.kind, at=a.event.time, actor=a.event.actor, target=a.event.target,
            source=a.event.source, event_id=a.event.id,
            detail=json.dumps(a.detail, ensure_ascii=False, sort_keys=True)[:DETAIL_MAX],
        )
        for a in found
    ]  # fmt: skip
