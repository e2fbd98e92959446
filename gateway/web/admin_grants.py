"""Admin pages for grants (``/admin/grants``): every grant in force (standing, made by an
approved request, explicit denies), add a standing grant or a deny with an optional weekly
schedule, preview its next three open windows before saving, revoke.

The preview parses the schedule with ``rbac.windows`` and walks it with ``contains`` and
``next_change``, the functions the authorizer decides with; saving parses it again in
``AuthzService.add_grant``, as ``conduit grant add`` does. Saving and revoking need a fresh
second factor and are audited with before and after. Does not decide access.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gateway.authz.service import PolicyError
from gateway.authz.tables import Grant
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
from gateway.web.portal_forms import shown_instant
from gateway.web.stepup import StepUp
from rbac.errors import RbacError
from rbac.names import check_action, check_name
from rbac.windows import Schedule, parse_schedule, upcoming

router = APIRouter(include_in_schema=False)

SUBJECT_KINDS = ("user", "org", "role")
OBJECT_KINDS = ("asset", "zone")
ACTION_MAX = 32
SCHEDULE_MAX = 500
PREVIEW_COUNT = 3
GRANT_ID = re.compile(r"g-[0-9a-f]{16}")


def _facts(grant: Grant) -> dict[str, Any]:
    return {
        "subject": grant.subject, "object": grant.object, "action_granted": grant.action,
        "effect": grant.effect, "schedule": grant.schedule or "",
        "request": grant.request_id or "", "revoked": grant.revoked_at is not None,
    }  # fmt: skip


def _utc_span(start: dt.datetime, end: dt.datetime | None, local_day: dt.date) -> str:
    """The window in UTC: times alone when the day is the local one, else with the day
    (Berlin 00:00-23:59 is 23:00 the day before to 22:59 in UTC)."""
    start, day = start.astimezone(dt.UTC), "%a %Y-%m-%d "
    text = start.strftime(("" if start.date() == local_day else day) + "%H:%M")
    if end is not None:
        end = end.astimezone(dt.UTC)
        text += "-" + end.strftime(("" if end.date() == start.date() else day) + "%H:%M")
    return text + " UTC"


def preview_windows(schedule: Schedule, now: dt.datetime) -> list[dict[str, str]]:
    """The next windows in the schedule's own time zone, with UTC beside them."""
    tz = schedule.timezone
    rows = []
    for start, end in upcoming(schedule, now, PREVIEW_COUNT):
        local_start = start.astimezone(tz)
        rows.append(
            {
                "local": local_start.strftime("%a %Y-%m-%d %H:%M")
                + (f" - {end.astimezone(tz).strftime('%H:%M')}" if end else " onwards")
                + f" {tz.key}",
                "utc": _utc_span(start, end, local_start.date()),
                "now": "open now" if start == now else "",
            }
        )
    return rows


async def _grants_page(
    request: Request,
    context: PortalContext,
    checked: Checked | None = None,
    *,
    preview: list[dict[str, str]] | None = None,
    status_code: int = 200,
    step: StepUp | None = None,
    step_for: str = "add",
) -> HTMLResponse:
    """The list and the add form; ``step_for`` names the form that asks for a code (``add``
    or the id of the grant being revoked)."""
    services = services_of(request)
    now = services.clock()
    grants = await services.authz.list_grants()
    values = {
        "grants": [(g, shown_instant(g.created_at, now)) for g in grants],
        "subject_kinds": SUBJECT_KINDS,
        "object_kinds": OBJECT_KINDS,
        "draft": checked.values if checked else {"subject_kind": "user", "object_kind": "asset",
                                                  "effect": "allow", "action": "ssh"},
        "errors": checked.errors if checked else {},
        "preview": preview,
        "step_for": step_for,
        "asset_names": [a.name for a, _ in await services.authz.list_assets()],
        "zone_names": [z.name for z in await services.authz.list_zones()],
    }  # fmt: skip
    return await admin_view(
        request, context, "admin/grants.html", values, step=step, status_code=status_code
    )


@router.get("/admin/grants", response_class=HTMLResponse)
async def grants(request: Request) -> Response:
    context = await admin_page(request)
    if context is None:
        return sign_in_redirect(request)
    return await _grants_page(request, context)


def _choice(checked: Checked, name: str, options: tuple[str, ...]) -> str:
    value = checked.text(name, 16)
    if value not in options:
        checked.fail(name, f"Choose one of {', '.join(options)}.")
    return value


def _read(checked: Checked) -> tuple[dict[str, Any], Schedule | None]:
    subject_kind = _choice(checked, "subject_kind", SUBJECT_KINDS)
    subject = checked.text("subject", NAME_MAX, what="name of who it is for")
    object_kind = _choice(checked, "object_kind", OBJECT_KINDS)
    obj = checked.text("object", NAME_MAX, what="asset or zone")
    action = checked.text("action", ACTION_MAX)
    effect = _choice(checked, "effect", ("allow", "deny"))
    text = checked.text("schedule", SCHEDULE_MAX, required=False)
    for name, value, check in (
        ("subject", subject, lambda v: check_name(v, "name")),
        ("object", obj, lambda v: check_name(v, "name")),
        ("action", action, check_action),
    ):
        if value and name not in checked.errors:
            try:
                check(value)
            except RbacError as exc:
                checked.fail(name, exc.message)
    schedule = None
    if text:
        try:
            schedule = parse_schedule(text)
        except RbacError as exc:
            checked.fail("schedule", exc.message)
    fields = {
        "subject_kind": subject_kind, "subject": subject, "object_kind": object_kind,
        "obj": obj, "action": action, "effect": effect, "schedule": text or None,
    }  # fmt: skip
    return fields, schedule


@router.post("/admin/grants", response_class=HTMLResponse)
async def add_grant(request: Request) -> Response:
    context, form = await admin_post(request)
    services = services_of(request)
    checked = Checked(form)
    fields, schedule = _read(checked)
    if checked.errors:
        await refused_input(request, context, checked, "grant add")
        return await _grants_page(request, context, checked, status_code=422)
    preview = preview_windows(schedule, services.clock()) if schedule is not None else None
    if form.get("preview") is not None:
        return await _grants_page(request, context, checked, preview=preview)
    step = await step_up(request, context, form)
    if not step.ok:
        return await _grants_page(request, context, checked, preview=preview, step=step)
    try:
        grant = await services.authz.add_grant(actor=context.session.username, **fields)
    except (PolicyError, RbacError) as exc:
        checked.fail("object", exc.message)
        await refused_input(request, context, checked, "grant add")
        return await _grants_page(request, context, checked, status_code=422)
    await audit_change(request, context, "grant", grant.id, None, _facts(grant))
    return RedirectResponse("/admin/grants", status_code=303)


@router.post("/admin/grants/{grant_id}/revoke", response_class=HTMLResponse)
async def revoke(request: Request, grant_id: str) -> Response:
    context, form = await admin_post(request)
    services = services_of(request)
    found = None
    if GRANT_ID.fullmatch(grant_id):
        found = next((g for g in await services.authz.list_grants() if g.id == grant_id), None)
    if found is None:
        raise await missing(request, context, f"no active grant {grant_id[:60]}")
    step = await step_up(request, context, form)
    if not step.ok:
        return await _grants_page(request, context, step=step, step_for=grant_id)
    before = _facts(found)
    revoked = await services.authz.revoke_grant(grant_id, actor=context.session.username)
    await audit_change(request, context, "grant", grant_id, before, _facts(revoked))
    return RedirectResponse("/admin/grants", status_code=303)
