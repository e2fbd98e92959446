"""The vendor's access pages: "My access", the request form, and "My requests" with cancel.

States on "My access" come from the authorizer (``AuthzService.access_overview``, the same
policy index that decides sessions); requests are the request service's. The form checks
everything from outside at this edge (assets, actions, start, duration, reason) and answers
with a message beside the field, keeping what was typed; what the services refuse besides is
shown above the form. Every refusal is audited (``portal.refused``). Another person's request
answers 404 exactly like a missing one. Does not decide access or approve anything.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import FormData

from gateway.authz.service import MAX_REQUEST_HOURS, AssetOverview, PolicyError
from gateway.errors import ConduitError
from gateway.web.auth import PortalContext, services_of, source_of
from gateway.web.layout import page, sign_in_redirect
from gateway.web.portal_forms import (
    NotPermitted,
    audit_refusal,
    form_of,
    list_field,
    require_capability,
    shown_instant,
    signed_in,
    signed_in_post,
    text_field,
)
from rbac import requests as rq
from rbac.availability import AccessState
from rbac.errors import RbacError, WindowError
from rbac.roles import SiteAction
from rbac.windows import check_instant

router = APIRouter(include_in_schema=False)

MAX_REASON = 2000  # as rbac.requests allows
MAX_ASSETS = 20
MAX_MINUTES = MAX_REQUEST_HOURS * 60
REQUEST_ID = re.compile(r"[a-z0-9-]{1,40}")
# What a request may ask for on an asset, by the asset's protocol.
ACTIONS_BY_PROTOCOL = {
    "ssh": ("ssh", "sftp-read", "sftp-write"),
    "vnc": ("vnc",),
    "rdp": ("rdp",),
}
STATE_TEXT = {
    AccessState.AVAILABLE: "available now",
    AccessState.PENDING: "request pending",
    AccessState.NEXT_WINDOW: "next window",
    AccessState.REQUESTABLE: "requestable",
}


# -- My access ----------------------------------------------------------------------------


async def overview(request: Request, username: str) -> list[dict[str, Any]]:
    """The rows of "My access" (also the home page's card)."""
    services = services_of(request)
    waiting = await services.requests.list_requests(state="pending", requester=username)
    pending = {asset for r in waiting for asset in r.assets}
    now = services.clock()
    return [_row(a, now) for a in await services.authz.access_overview(username, pending)]


def _row(item: AssetOverview, now: dt.datetime) -> dict[str, Any]:
    access = item.access
    return {
        "asset": item.name,
        "zones": ", ".join(item.zones) or "-",
        "protocol": item.protocol,
        "state": access.state.value,
        "state_text": STATE_TEXT[access.state],
        "actions": ", ".join(access.actions_now),
        "until": shown_instant(access.until, now),
        "next": shown_instant(access.next_window, now),
        "requestable": access.requestable,
    }


@router.get("/access", response_class=HTMLResponse)
async def my_access(request: Request) -> Response:
    context = await signed_in(request, SiteAction.USE_ASSETS)
    if context is None:
        return sign_in_redirect(request)
    rows = await overview(request, context.session.username)
    return await page(request, context, "access.html", {"rows": rows}, current="access")


# -- the request form ---------------------------------------------------------------------


@dataclass
class Draft:
    """What the vendor typed, kept across a refused post, and the messages per field."""

    assets: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    when: str = "now"
    start_date: str = ""
    start_time: str = ""
    duration: str = "60"
    reason: str = ""
    errors: dict[str, str] = field(default_factory=dict)


async def _requestable(request: Request, username: str) -> list[dict[str, Any]]:
    """Assets the vendor may ask for, each with its policy limits (the form shows them)."""
    services = services_of(request)
    found = []
    for item in await services.authz.access_overview(username):
        if not item.access.requestable:
            continue
        cap, approvals = await services.requests.limits([item.name])
        found.append(
            {
                "name": item.name,
                "zones": ", ".join(item.zones) or "-",
                "protocol": item.protocol,
                "actions": ACTIONS_BY_PROTOCOL.get(item.protocol, ()),
                "max_minutes": int(cap.total_seconds() // 60),
                "max_hours": _hours(cap),
                "approvals": approvals,
            }
        )
    return found


def _hours(span: dt.timedelta) -> str:
    hours = span.total_seconds() / 3600
    return f"{hours:g} hour{'s' if hours != 1 else ''}"


async def _form_page(
    request: Request,
    context: PortalContext,
    draft: Draft,
    choices: list[dict[str, Any]],
    status_code: int = 200,
    problem: str = "",
) -> Response:
    actions = sorted({a for c in choices for a in c["actions"]})
    values = {
        "draft": draft,
        "choices": choices,
        "action_choices": actions,
        "max_minutes": max((c["max_minutes"] for c in choices), default=0),
        "problem": problem,
        "today": services_of(request).clock().date().isoformat(),
    }
    return await page(
        request, context, "access_request.html", values, current="access", status_code=status_code
    )


@router.get("/access/request", response_class=HTMLResponse)
async def request_form(request: Request) -> Response:
    context = await signed_in(request, SiteAction.USE_ASSETS)
    if context is None:
        return sign_in_redirect(request)
    choices = await _requestable(request, context.session.username)
    draft = Draft()
    asked = request.query_params.get("asset", "")[:64]
    if any(c["name"] == asked for c in choices):
        draft.assets = [asked]
    return await _form_page(request, context, draft, choices)


def _draft_of(form: FormData) -> Draft:
    return Draft(
        assets=list_field(form, "assets", MAX_ASSETS),
        actions=list_field(form, "actions", 10, 32),
        when="later" if text_field(form, "when", 8) == "later" else "now",
        start_date=text_field(form, "start_date", 10),
        start_time=text_field(form, "start_time", 5),
        duration=text_field(form, "duration_minutes", 6),
        reason=text_field(form, "reason", MAX_REASON + 100),
    )


def _check_choice(draft: Draft, choices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_name = {c["name"]: c for c in choices}
    chosen = [by_name[a] for a in draft.assets if a in by_name]
    unknown = [a for a in draft.assets if a not in by_name]
    if not draft.assets:
        draft.errors["assets"] = "Choose at least one asset."
    elif unknown:
        draft.errors["assets"] = f"Not found or not permitted: {', '.join(unknown)}."
    if not draft.actions:
        draft.errors["actions"] = "Choose at least one action."
    else:
        for action in draft.actions:
            misfit = [c["name"] for c in chosen if action not in c["actions"]]
            if misfit:
                draft.errors["actions"] = f"{action} does not apply to {', '.join(misfit)}."
                break
    return chosen


def _check_start(draft: Draft, now: dt.datetime) -> dt.datetime | None:
    if draft.when == "now":
        return now
    try:
        day = dt.date.fromisoformat(draft.start_date)
        clock = dt.time.fromisoformat(draft.start_time)
        start = check_instant(dt.datetime.combine(day, clock, tzinfo=dt.UTC), "start")
    except ValueError as exc:  # WindowError is a ValueError too
        message = exc.message if isinstance(exc, WindowError) else ""
        draft.errors["start"] = message or "Give the start as a date and a time (UTC)."
        return None
    if start < now - dt.timedelta(minutes=1):
        draft.errors["start"] = "The start is in the past: choose now or a later time."
        return None
    return start


def _check_duration(draft: Draft, chosen: list[dict[str, Any]]) -> dt.timedelta | None:
    if not draft.duration.isdigit() or not 1 <= int(draft.duration) <= MAX_MINUTES:
        draft.errors["duration"] = f"Give the duration in minutes, 1 to {MAX_MINUTES}."
        return None
    minutes = int(draft.duration)
    cap = min((c["max_minutes"] for c in chosen), default=MAX_MINUTES)
    if minutes > cap:
        draft.errors["duration"] = (
            f"Longer than policy allows: at most {cap} minutes "
            f"({_hours(dt.timedelta(minutes=cap))}) for {', '.join(c['name'] for c in chosen)}."
        )
        return None
    return dt.timedelta(minutes=minutes)


def _check_reason(draft: Draft) -> None:
    if not draft.reason.strip():
        draft.errors["reason"] = "Say why you need access: approvers read it."
    elif len(draft.reason) > MAX_REASON:
        draft.errors["reason"] = f"At most {MAX_REASON} characters."


@router.post("/access/request", response_class=HTMLResponse)
async def file_request(request: Request) -> Response:
    context = await signed_in_post(request)
    await require_capability(request, context, SiteAction.USE_ASSETS)
    services = services_of(request)
    username = context.session.username
    draft = _draft_of(await form_of(request))
    choices = await _requestable(request, username)
    chosen = _check_choice(draft, choices)
    start = _check_start(draft, services.clock())
    duration = _check_duration(draft, chosen)
    _check_reason(draft)
    if draft.errors or start is None or duration is None:
        why = "; ".join(f"{k}: {v}" for k, v in sorted(draft.errors.items()))
        await audit_refusal(request, username, 422, f"request form: {why}")
        return await _form_page(request, context, draft, choices, 422)
    try:
        created = await services.requests.create(
            username, draft.assets, draft.actions, draft.reason, start, duration,
            source=source_of(request),
        )  # fmt: skip
    except (RbacError, ConduitError) as exc:
        await audit_refusal(request, username, 422, f"request refused: {exc.detail}")
        return await _form_page(request, context, draft, choices, 422, problem=exc.message)
    return RedirectResponse(f"/access/requests?filed={created.request_id}", status_code=303)


# -- My requests --------------------------------------------------------------------------


def request_row(r: rq.AccessRequest, now: dt.datetime) -> dict[str, Any]:
    """A request as the pages show it (here and on the approver's pages)."""
    comments = [{"who": a.approver, "what": "approved", "text": a.comment} for a in r.approvals] + [
        {"who": t.actor, "what": t.state.value, "text": t.comment}
        for t in r.history
        if t.state is not rq.RequestState.APPROVED
    ]
    return {
        "id": r.request_id,
        "requester": r.requester,
        "assets": list(r.assets),
        "actions": list(r.actions),
        "reason": r.reason,
        "start": shown_instant(r.start, now),
        "end": shown_instant(r.end, now),
        "minutes": int(r.duration.total_seconds() // 60),
        "state": r.state.value,
        "approvals": f"{len(r.approvers)} of {r.required_approvals}",
        "approvers": sorted(r.approvers),
        "comments": comments,
        "pending": r.state is rq.RequestState.PENDING,
    }


async def _my_requests_page(
    request: Request, context: PortalContext, problem: str = "", status_code: int = 200
) -> Response:
    services = services_of(request)
    now = services.clock()
    mine = await services.requests.list_requests(requester=context.session.username)
    # Only the person's own request is announced: a crafted link cannot make the page say
    # that some request was filed.
    filed = request.query_params.get("filed", "")[:64]
    values = {
        "rows": [request_row(r, now) for r in reversed(mine)],
        "filed": filed if any(r.request_id == filed for r in mine) else "",
        "problem": problem,
    }
    return await page(
        request, context, "my_requests.html", values, current="access", status_code=status_code
    )


@router.get("/access/requests", response_class=HTMLResponse)
async def my_requests(request: Request) -> Response:
    context = await signed_in(request, SiteAction.USE_ASSETS)
    if context is None:
        return sign_in_redirect(request)
    return await _my_requests_page(request, context)


@router.post("/access/requests/{request_id}/cancel", response_class=HTMLResponse)
async def cancel(request: Request, request_id: str) -> Response:
    context = await signed_in_post(request)
    await require_capability(request, context, SiteAction.USE_ASSETS)
    services = services_of(request)
    username = context.session.username
    found = await own_request(request, username, request_id)
    try:
        await services.requests.cancel(found.request_id, username, source=source_of(request))
    except (RbacError, ConduitError) as exc:
        await audit_refusal(request, username, 409, f"cancel refused: {exc.detail}")
        return await _my_requests_page(request, context, exc.message, 409)
    return RedirectResponse("/access/requests", status_code=303)


async def own_request(request: Request, username: str, request_id: str) -> rq.AccessRequest:
    """``username``'s request ``request_id``; another's or a missing one: "not found"."""
    why = ""
    found: rq.AccessRequest | None = None
    if not REQUEST_ID.fullmatch(request_id):
        why = "malformed request id"
    else:
        try:
            found = await services_of(request).requests.get(request_id)
        except PolicyError as exc:
            why = exc.detail
    if found is not None and found.requester != username:
        why, found = f"request {request_id} belongs to someone else", None
    if found is None:
        await audit_refusal(request, username, 404, why)
        raise NotPermitted(request.url.path)
    return found
