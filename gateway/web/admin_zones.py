"""Admin pages for the site's overview (``/admin``) and zones (``/admin/zones``): the zones
as a tree (Purdue levels under their parents), add a zone with its approval rules (how many
approvals, the longest request, and optionally the role or organisation whose members may
approve there), and change a zone's rules.

Every change goes through ``AuthzService`` (as ``conduit zone add`` does), needs a fresh
second factor, and is audited with before and after. The parent is chosen when a zone is
made and stays (moving a zone moves every asset under it: not offered here). Does not
decide access.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gateway.authz.service import MAX_APPROVALS, MAX_REQUEST_HOURS, PolicyError
from gateway.authz.tables import Zone
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
from gateway.web.stepup import StepUp
from rbac.errors import RbacError
from rbac.names import check_name

router = APIRouter(include_in_schema=False)


@dataclass
class ZoneNode:
    zone: Zone
    children: list[ZoneNode] = field(default_factory=list)


def zone_tree(zones: list[Zone]) -> list[ZoneNode]:
    """Zones under their parents; a zone whose parent is missing is shown at the top."""
    nodes = {z.name: ZoneNode(z) for z in zones}
    roots: list[ZoneNode] = []
    for node in nodes.values():
        parent = nodes.get(node.zone.parent or "")
        (parent.children if parent is not None else roots).append(node)
    return roots


@router.get("/admin", response_class=HTMLResponse)
async def overview(request: Request) -> Response:
    context = await admin_page(request)
    if context is None:
        return sign_in_redirect(request)
    services = services_of(request)
    counts = {
        "zones": len(await services.authz.list_zones()),
        "assets": len(await services.authz.list_assets()),
        "grants": len(await services.authz.list_grants()),
    }
    return await admin_view(request, context, "admin/index.html", {"counts": counts})


async def _zones_page(
    request: Request,
    context: PortalContext,
    checked: Checked | None = None,
    status_code: int = 200,
    step: StepUp | None = None,
) -> HTMLResponse:
    zones = await services_of(request).authz.list_zones()
    values = {
        "tree": zone_tree(zones),
        "names": [z.name for z in zones],
        "groups": await services_of(request).authz.groups(),
        "draft": checked.values if checked else {"required_approvals": "1"},
        "errors": checked.errors if checked else {},
        "max_approvals": MAX_APPROVALS,
        "max_hours": MAX_REQUEST_HOURS,
    }
    return await admin_view(
        request, context, "admin/zones.html", values, step=step, status_code=status_code
    )


@router.get("/admin/zones", response_class=HTMLResponse)
async def zones(request: Request) -> Response:
    context = await admin_page(request)
    if context is None:
        return sign_in_redirect(request)
    return await _zones_page(request, context)


@dataclass(frozen=True)
class Rules:
    approvals: int
    hours: int | None
    approvers: str | None  # role:NAME / org:NAME, None: anyone holding approve


def _rules(checked: Checked, groups: list[str]) -> Rules:
    approvals = checked.number("required_approvals", 1, MAX_APPROVALS, what="number of approvals")
    if approvals is None:
        checked.fail("required_approvals", f"Give a number of approvals from 1 to {MAX_APPROVALS}.")
    hours = checked.number("max_request_hours", 1, MAX_REQUEST_HOURS, what="longest request")
    approvers = checked.text("approver_group", NAME_MAX + 8, required=False) or None
    if approvers is not None and approvers not in groups:
        checked.fail("approver_group", "Choose an approver group from the list.")
    return Rules(approvals or 1, hours, approvers)


@router.post("/admin/zones", response_class=HTMLResponse)
async def add_zone(request: Request) -> Response:
    context, form = await admin_post(request)
    services = services_of(request)
    checked = Checked(form)
    name = checked.text("name", NAME_MAX)
    if name and "name" not in checked.errors:
        try:
            check_name(name, "zone")
        except RbacError as exc:
            checked.fail("name", exc.message)
    parent = checked.text("parent", NAME_MAX, required=False) or None
    known = {z.name for z in await services.authz.list_zones()}
    if name in known:
        checked.fail("name", f"A zone named {name} already exists.")
    if parent is not None and parent not in known:
        checked.fail("parent", "Choose a parent from the list.")
    rules = _rules(checked, await services.authz.groups())
    if checked.errors:
        await refused_input(request, context, checked, "zone add")
        return await _zones_page(request, context, checked, status_code=422)
    step = await step_up(request, context, form)
    if not step.ok:
        return await _zones_page(request, context, checked, step=step)
    try:
        await services.authz.add_zone(
            name, actor=context.session.username, parent=parent,
            required_approvals=rules.approvals, max_request_hours=rules.hours,
            approvers=rules.approvers,
        )  # fmt: skip
    except (PolicyError, RbacError) as exc:
        checked.fail("name", exc.message)
        await refused_input(request, context, checked, "zone add")
        return await _zones_page(request, context, checked, status_code=422)
    after = {
        "parent": parent or "", "required_approvals": rules.approvals,
        "max_request_hours": rules.hours, "approver_group": rules.approvers or "",
    }  # fmt: skip
    await audit_change(request, context, "zone", name, None, after)
    return RedirectResponse("/admin/zones?added=" + name, status_code=303)


async def _zone(request: Request, context: PortalContext, name: str) -> Zone:
    for zone in await services_of(request).authz.list_zones():
        if zone.name == name:
            return zone
    raise await missing(request, context, f"no zone {name[:80]}")


async def _zone_page(
    request: Request, context: PortalContext, zone: Zone, checked: Checked | None = None,
    status_code: int = 200, step: StepUp | None = None,
) -> HTMLResponse:  # fmt: skip
    draft = checked.values if checked else {
        "required_approvals": str(zone.required_approvals),
        "max_request_hours": "" if zone.max_request_hours is None else str(zone.max_request_hours),
        "approver_group": zone.approver_group or "",
    }  # fmt: skip
    groups = await services_of(request).authz.groups()
    if zone.approver_group and zone.approver_group not in groups:
        groups.append(zone.approver_group)  # a group nobody is in now still shows as chosen
    values = {
        "zone": zone,
        "groups": groups,
        "draft": draft,
        "errors": checked.errors if checked else {},
        "max_approvals": MAX_APPROVALS,
        "max_hours": MAX_REQUEST_HOURS,
    }
    return await admin_view(
        request, context, "admin/zone.html", values, step=step, status_code=status_code
    )


@router.get("/admin/zones/{name}", response_class=HTMLResponse)
async def zone_form(request: Request, name: str) -> Response:
    context = await admin_page(request)
    if context is None:
        return sign_in_redirect(request)
    return await _zone_page(request, context, await _zone(request, context, name))


@router.post("/admin/zones/{name}", response_class=HTMLResponse)
async def change_zone(request: Request, name: str) -> Response:
    context, form = await admin_post(request)
    zone = await _zone(request, context, name)
    checked = Checked(form)
    known = await services_of(request).authz.groups()
    rules = _rules(checked, [*known, *([zone.approver_group] if zone.approver_group else [])])
    if checked.errors:
        await refused_input(request, context, checked, f"zone {name} change")
        return await _zone_page(request, context, zone, checked, status_code=422)
    step = await step_up(request, context, form)
    if not step.ok:
        return await _zone_page(request, context, zone, checked, step=step)
    before, after = await services_of(request).authz.update_zone(
        name, actor=context.session.username, required_approvals=rules.approvals,
        max_request_hours=rules.hours, approvers=rules.approvers,
    )  # fmt: skip
    await audit_change(request, context, "zone", name, before, after)
    return RedirectResponse("/admin/zones?changed=" + name, status_code=303)
