"""Admin pages for people (``/admin/users``): list with roles, organisation and status;
invite (a one-time enrolment link, shown once); disable / enable; reset MFA (a new link,
shown once); change roles.

The work is ``gateway.identity.onboarding``'s, as for ``conduit user ...``. Disabling ends
the person's portal sessions at once and their live sessions within a second (the policy
reload stops their watchdogs' grants): the page says so. An admin cannot disable
themselves or drop their own admin role (the site would lose its way back in). Every
change needs a fresh second factor and is audited with before and after; links never enter
the audit log. Does not decide access.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gateway.db.models import ROLES, User
from gateway.errors import ConduitError
from gateway.identity import onboarding
from gateway.identity.accounts import check_organisation, check_username, list_users
from gateway.web.admin_common import (
    NAME_MAX,
    Checked,
    admin_page,
    admin_post,
    admin_view,
    audit_change,
    missing,
    refused_input,
    step_up,
)
from gateway.web.auth import PortalContext, services_of
from gateway.web.layout import sign_in_redirect
from gateway.web.portal_forms import audit_refusal, list_field
from gateway.web.stepup import StepUp

router = APIRouter(include_in_schema=False)

ORG_MAX = 64
NO_STORE = {"Cache-Control": "no-store"}  # pages carrying a one-time link


def facts(user: User) -> dict[str, Any]:
    return {"roles": user.role_names, "organisation": user.organisation, "status": user.status}


def own_account_problem(
    actor: str,
    name: str,
    *,
    roles: list[str] | None = None,
    status: str = "",
    reset_mfa: bool = False,
) -> str:
    """Why ``actor`` may not make this change to their own account ("" when they may): the
    site must keep a way back in."""
    if actor != name:
        return ""
    if roles is not None and "admin" not in roles:
        return "You cannot drop your own admin role."
    if status == "disabled":
        return "You cannot disable your own account."
    if reset_mfa:
        return "Reset your own factors from another admin's account."
    return ""


def _roles(checked: Checked) -> list[str]:
    roles = list_field(checked.form, "roles", len(ROLES), item_limit=16)
    checked.values["roles"] = roles
    if not roles or any(r not in ROLES for r in roles):
        checked.fail("roles", "Choose at least one role from the list.")
    return roles


async def _users_page(
    request: Request,
    context: PortalContext,
    checked: Checked | None = None,
    *,
    status_code: int = 200,
    step: StepUp | None = None,
    link: str = "",
) -> HTMLResponse:
    services = services_of(request)
    async with services.sessions() as db:
        users = await list_users(db)
    values = {
        "users": users,
        "roles": ROLES,
        "draft": checked.values if checked and not link else {"roles": ["vendor"]},
        "errors": checked.errors if checked else {},
        "link": link,
        "invited": checked.values.get("username", "") if checked and link else "",
    }
    answer = await admin_view(
        request, context, "admin/users.html", values, step=step, status_code=status_code
    )
    if link:
        answer.headers.update(NO_STORE)
    return answer


@router.get("/admin/users", response_class=HTMLResponse)
async def users(request: Request) -> Response:
    context = await admin_page(request)
    if context is None:
        return sign_in_redirect(request)
    return await _users_page(request, context)


@router.post("/admin/users", response_class=HTMLResponse)
async def invite(request: Request) -> Response:
    context, form = await admin_post(request)
    services = services_of(request)
    checked = Checked(form)
    username = checked.text("username", NAME_MAX, what="user name")
    if username and "username" not in checked.errors:
        try:
            check_username(username)
        except ConduitError as exc:
            checked.fail("username", exc.message)
    organisation = checked.text("organisation", ORG_MAX, required=False)
    if organisation and "organisation" not in checked.errors:
        try:
            check_organisation(organisation)
        except ConduitError as exc:
            checked.fail("organisation", exc.message)
    roles = _roles(checked)
    if checked.errors:
        await refused_input(request, context, checked, "user invite")
        return await _users_page(request, context, checked, status_code=422)
    step = await step_up(request, context, form)
    if not step.ok:
        return await _users_page(request, context, checked, step=step)
    try:
        async with services.sessions() as db, db.begin():
            user, link = await onboarding.invite_user(
                db, username, roles, services.clock(), services.keys.master_key, organisation
            )
            after = facts(user)
    except ConduitError as exc:
        checked.fail("username", exc.message)
        await refused_input(request, context, checked, "user invite")
        return await _users_page(request, context, checked, status_code=422)
    await audit_change(request, context, "user", username, None, after)
    return await _users_page(request, context, checked, link=link.url(services.settings.portal_url))


async def _user(request: Request, context: PortalContext, name: str) -> User:
    async with services_of(request).sessions() as db:
        for user in await list_users(db):
            if user.username == name:
                return user
    raise await missing(request, context, f"no user {name[:80]}")


async def _user_page(
    request: Request,
    context: PortalContext,
    user: User,
    *,
    checked: Checked | None = None,
    problem: str = "",
    link: str = "",
    status_code: int = 200,
    step: StepUp | None = None,
    step_for: str = "",
) -> HTMLResponse:
    values = {
        "user": user,
        "roles": ROLES,
        "draft": checked.values if checked else {"roles": user.role_names},
        "errors": checked.errors if checked else {},
        "problem": problem,
        "link": link,
        "step_for": step_for,
        "me": context.session.username,
    }
    answer = await admin_view(
        request, context, "admin/user.html", values, step=step, status_code=status_code
    )
    if link:
        answer.headers.update(NO_STORE)
    return answer


@router.get("/admin/users/{name}", response_class=HTMLResponse)
async def user_page(request: Request, name: str) -> Response:
    context = await admin_page(request)
    if context is None:
        return sign_in_redirect(request)
    return await _user_page(request, context, await _user(request, context, name))


async def _refuse(
    request: Request, context: PortalContext, user: User, status: int, message: str
) -> Response:
    await audit_refusal(request, context.session.username, status, f"{user.username}: {message}")
    return await _user_page(request, context, user, problem=message, status_code=status)


@router.post("/admin/users/{name}/roles", response_class=HTMLResponse)
async def change_roles(request: Request, name: str) -> Response:
    context, form = await admin_post(request)
    services = services_of(request)
    user = await _user(request, context, name)
    checked = Checked(form)
    roles = _roles(checked)
    if checked.errors:
        await refused_input(request, context, checked, f"user {name} roles")
        return await _user_page(request, context, user, checked=checked, status_code=422)
    if problem := own_account_problem(context.session.username, name, roles=roles):
        return await _refuse(request, context, user, 409, problem)
    step = await step_up(request, context, form)
    if not step.ok:
        return await _user_page(
            request, context, user, checked=checked, step=step, step_for="roles"
        )
    async with services.sessions() as db, db.begin():
        before = facts(await onboarding.find_user(db, name))
        after = facts(await onboarding.set_roles(db, name, roles, services.clock()))
    await audit_change(request, context, "user", name, before, after)
    return RedirectResponse(f"/admin/users/{name}", status_code=303)


@router.post("/admin/users/{name}/status", response_class=HTMLResponse)
async def change_status(request: Request, name: str) -> Response:
    context, form = await admin_post(request)
    services = services_of(request)
    user = await _user(request, context, name)
    wanted = "disabled" if form.get("to") == "disabled" else "active"
    if problem := own_account_problem(context.session.username, name, status=wanted):
        return await _refuse(request, context, user, 409, problem)
    step = await step_up(request, context, form)
    if not step.ok:
        return await _user_page(request, context, user, step=step, step_for=f"status-{wanted}")
    before = facts(user)
    try:
        async with services.sessions() as db, db.begin():
            after = facts(await onboarding.set_status(db, name, wanted, services.clock()))
    except ConduitError as exc:
        return await _refuse(request, context, user, 409, exc.message)
    await audit_change(request, context, "user", name, before, after)
    return RedirectResponse(f"/admin/users/{name}", status_code=303)


@router.post("/admin/users/{name}/reset-mfa", response_class=HTMLResponse)
async def reset_mfa(request: Request, name: str) -> Response:
    context, form = await admin_post(request)
    services = services_of(request)
    user = await _user(request, context, name)
    if problem := own_account_problem(context.session.username, name, reset_mfa=True):
        return await _refuse(request, context, user, 409, problem)
    step = await step_up(request, context, form)
    if not step.ok:
        return await _user_page(request, context, user, step=step, step_for="reset")
    before = facts(user)
    async with services.sessions() as db, db.begin():
        changed, link = await onboarding.reset_mfa(db, name, services.clock())
        after = facts(changed)
    await audit_change(request, context, "user", name, before, {**after, "mfa": "reset"})
    return await _user_page(request, context, changed, link=link.url(services.settings.portal_url))
