"""JSON API for people (``/api/v1/users``): list, invite, roles, disable / enable, reset MFA.

The work is ``gateway.identity.onboarding``'s, as for ``conduit user ...`` and the admin
page ``/admin/users``. An invitation and an MFA reset answer with the one-time enrolment
link, once (``Cache-Control: no-store``); it never enters the audit log and no later answer
shows it. Disabling ends the person's portal sessions at once and their live sessions
within a second. An admin cannot disable themselves, drop their own admin role or reset
their own factors (``admin_users.own_account_problem``). Reads need the admin role and an
``admin``-scoped token or a portal session; every change also needs a recent second factor
(portal sessions only) and is audited ``admin.changed`` with before and after. Does not
decide access.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request, Response
from pydantic import Field

from gateway.db.models import ROLES, User
from gateway.errors import ConduitError
from gateway.identity import onboarding
from gateway.identity.accounts import check_organisation, check_username, list_users
from gateway.web.admin_users import facts, own_account_problem
from gateway.web.api_access import NOT_FOUND, Admin, AuditedRoute, Name, Out, Refused, Strict
from gateway.web.api_admin import admin_change, audit_admin_change, require_site_admin
from gateway.web.auth import services_of

router = APIRouter(prefix="/api/v1", tags=["users"], route_class=AuditedRoute)
NO_STORE = "no-store"

UserName = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@+-]+$")]
Role = Literal["admin", "approver", "auditor", "vendor"]


class UserOut(Out):
    username: str
    roles: list[str]
    organisation: str
    status: str
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(
            username=user.username, roles=user.role_names, organisation=user.organisation,
            status=user.status, created_at=user.created_at, updated_at=user.updated_at,
        )  # fmt: skip


class LinkOut(Out):
    """The one-time enrolment link, shown in this answer only."""

    user: UserOut
    enrolment_url: str
    expires_at: dt.datetime


class InviteIn(Strict):
    username: Name
    roles: list[Role] = Field(min_length=1, max_length=len(ROLES))
    organisation: str = Field(default="", max_length=64)


class RolesIn(Strict):
    roles: list[Role] = Field(min_length=1, max_length=len(ROLES))


class StatusIn(Strict):
    status: Literal["active", "disabled"]


async def _user(request: Request, name: str) -> User:
    async with services_of(request).sessions() as db:
        for user in await list_users(db):
            if user.username == name:
                return user
    raise Refused(404, NOT_FOUND, f"no user {name}")


def _own(caller_name: str, name: str, problem: str) -> None:
    if problem:
        raise Refused(409, problem, f"{caller_name} on own account {name}: {problem}")


@router.get("/users", response_model=list[UserOut])
async def users(request: Request, caller: Admin) -> list[UserOut]:
    """Every account with roles, organisation and status (invited, active, disabled)."""
    require_site_admin(caller)
    async with services_of(request).sessions() as db:
        return [UserOut.of(u) for u in await list_users(db)]


@router.get("/users/{name}", response_model=UserOut)
async def user(request: Request, name: UserName, caller: Admin) -> UserOut:
    """One account."""
    require_site_admin(caller)
    return UserOut.of(await _user(request, name))


@router.post("/users", status_code=201, response_model=LinkOut)
async def invite(request: Request, body: InviteIn, caller: Admin, response: Response) -> LinkOut:
    """Invite a person: the answer carries their one-time enrolment link, once."""
    admin_change(request, caller)
    services = services_of(request)
    try:
        check_username(body.username)
        if body.organisation:
            check_organisation(body.organisation)
        async with services.sessions() as db, db.begin():
            made, link = await onboarding.invite_user(
                db, body.username, list(body.roles), services.clock(),
                services.keys.master_key, body.organisation,
            )  # fmt: skip
            out = UserOut.of(made)
            after = facts(made)
    except ConduitError as exc:
        raise Refused(422, exc.message, exc.detail) from None
    await audit_admin_change(request, caller, "user", body.username, None, after)
    response.headers["Cache-Control"] = NO_STORE
    url = link.url(services.settings.portal_url)
    return LinkOut(user=out, enrolment_url=url, expires_at=link.expires_at)


@router.put("/users/{name}/roles", response_model=UserOut)
async def change_roles(request: Request, name: UserName, body: RolesIn, caller: Admin) -> UserOut:
    """Replace a person's roles; the policy reloads everywhere."""
    admin_change(request, caller)
    await _user(request, name)
    _own(caller.username, name, own_account_problem(caller.username, name, roles=list(body.roles)))
    services = services_of(request)
    async with services.sessions() as db, db.begin():
        before = facts(await onboarding.find_user(db, name))
        changed = await onboarding.set_roles(db, name, list(body.roles), services.clock())
        after, out = facts(changed), UserOut.of(changed)
    await audit_admin_change(request, caller, "user", name, before, after)
    return out


@router.put("/users/{name}/status", response_model=UserOut)
async def change_status(request: Request, name: UserName, body: StatusIn, caller: Admin) -> UserOut:
    """Disable (ends their portal sessions now, live sessions within a second) or enable."""
    admin_change(request, caller)
    found = await _user(request, name)
    _own(caller.username, name, own_account_problem(caller.username, name, status=body.status))
    services = services_of(request)
    before = facts(found)
    try:
        async with services.sessions() as db, db.begin():
            changed = await onboarding.set_status(db, name, body.status, services.clock())
            after, out = facts(changed), UserOut.of(changed)
    except ConduitError as exc:
        raise Refused(409, exc.message, exc.detail) from None
    await audit_admin_change(request, caller, "user", name, before, after)
    return out


@router.post("/users/{name}/reset-mfa", response_model=LinkOut)
async def reset_mfa(request: Request, name: UserName, caller: Admin, response: Response) -> LinkOut:
    """Drop the person's factors and sessions; the answer carries a new one-time link."""
    admin_change(request, caller)
    found = await _user(request, name)
    _own(caller.username, name, own_account_problem(caller.username, name, reset_mfa=True))
    services = services_of(request)
    before = facts(found)
    async with services.sessions() as db, db.begin():
        changed, link = await onboarding.reset_mfa(db, name, services.clock())
        after, out = facts(changed), UserOut.of(changed)
    await audit_admin_change(request, caller, "user", name, before, {**after, "mfa": "reset"})
    response.headers["Cache-Control"] = NO_STORE
    url = link.url(services.settings.portal_url)
    return LinkOut(user=out, enrolment_url=url, expires_at=link.expires_at)
