"""The approver's pages: the queue of requests this person may decide, one request with the
policy's view of it, and approve / deny with a comment behind an inline step-up.

Who may decide is the policy's: ``approve`` on every asset of the request, and membership of
the approver group of every zone over them that names one (administrators see every pending
request; the request service still decides each answer). The requester
never gets the buttons, and the request service refuses their post too. A decision needs a
second factor within the step-up limit: the same page comes back with a code field
(``stepup.confirm_inline``) and nothing is decided until a good code is given. Every refusal
is audited (``portal.refused``). Does not decide access itself.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gateway.authz.service import PolicyError
from gateway.errors import ConduitError
from gateway.web.access_pages import REQUEST_ID, request_row
from gateway.web.auth import PortalContext, services_of, source_of
from gateway.web.layout import page, sign_in_redirect
from gateway.web.portal_forms import (
    NotPermitted,
    audit_refusal,
    form_of,
    require_capability,
    signed_in,
    signed_in_post,
    text_field,
)
from gateway.web.stepup import StepUp, confirm_inline
from rbac import requests as rq
from rbac.errors import RbacError
from rbac.roles import SiteAction, role_allows

router = APIRouter(include_in_schema=False)

MAX_COMMENT = 2000


async def decidable(request: Request, context: PortalContext) -> frozenset[str] | None:
    """The assets whose requests this person may decide; None: every asset (admins)."""
    if role_allows(context.session.roles, SiteAction.ANY_ASSET):
        return None
    return await services_of(request).authz.approvable_assets(context.session.username)


@router.get("/requests", response_class=HTMLResponse)
async def queue(request: Request) -> Response:
    context = await signed_in(request, SiteAction.DECIDE_REQUESTS)
    if context is None:
        return sign_in_redirect(request)
    services = services_of(request)
    me = context.session.username
    assets = await decidable(request, context)
    waiting = [
        r
        for r in await services.requests.list_requests(state="pending")
        if r.requester != me and (assets is None or set(r.assets) <= assets)
    ]
    now = services.clock()
    rows = [request_row(r, now) for r in waiting]
    return await page(request, context, "requests.html", {"rows": rows}, current="requests")


async def _visible(request: Request, context: PortalContext, request_id: str) -> rq.AccessRequest:
    """The request, for anyone who decides requests (they see every one); else "not found"."""
    why = "malformed request id"
    if REQUEST_ID.fullmatch(request_id):
        try:
            return await services_of(request).requests.get(request_id)
        except PolicyError as exc:
            why = exc.detail
    await audit_refusal(request, context.session.username, 404, why)
    raise NotPermitted(request.url.path)


async def _detail_page(
    request: Request,
    context: PortalContext,
    found: rq.AccessRequest,
    *,
    comment: str = "",
    step: StepUp | None = None,
    decision: str = "",
    problem: str = "",
    done: str = "",
    status_code: int = 200,
) -> Response:
    services = services_of(request)
    me = context.session.username
    eligible = await services.requests.deciders(found.assets)
    groups = await services.requests.approver_groups(found.assets)
    zones = {a.name: z for a, z in await services.authz.list_assets()}
    own = found.requester == me
    values: dict[str, Any] = {
        "r": request_row(found, services.clock()),
        "orgs": ", ".join(await services.authz.organisations_of(found.requester)) or "-",
        "zones": {a: ", ".join(zones.get(a, [])) or "-" for a in found.assets},
        "eligible": [p for p in eligible if p != found.requester],
        "groups": sorted(groups.items()),
        "own": own,
        "may_decide": found.state is rq.RequestState.PENDING and not own and me in eligible,
        "comment": comment,
        # Set while a code is asked for: the form then carries this decision only, so the
        # code's Enter key cannot take the form's first button (approve) instead.
        "decision": decision,
        "problem": problem,
        "done": done,
        **(step.values() if step is not None else {"stepup_needed": False}),
    }
    return await page(
        request, context, "request_detail.html", values, current="requests",
        status_code=status_code,
    )  # fmt: skip


# What the page says after a decision (the redirect's ?done=); anything else says nothing.
DONE = {"approved": "Approved.", "denied": "Denied."}


@router.get("/requests/{request_id}", response_class=HTMLResponse)
async def detail(request: Request, request_id: str) -> Response:
    context = await signed_in(request, SiteAction.DECIDE_REQUESTS)
    if context is None:
        return sign_in_redirect(request)
    found = await _visible(request, context, request_id)
    done = DONE.get(request.query_params.get("done", ""), "")
    return await _detail_page(request, context, found, done=done)


async def _answer(request: Request, request_id: str, *, approve: bool) -> Response:
    context = await signed_in_post(request)
    await require_capability(request, context, SiteAction.DECIDE_REQUESTS)
    services = services_of(request)
    me = context.session.username
    found = await _visible(request, context, request_id)
    form = await form_of(request)
    comment = text_field(form, "comment", MAX_COMMENT + 100)
    verb = "approve" if approve else "deny"
    if found.requester == me:
        await audit_refusal(request, me, 403, f"request {request_id}: own request ({verb})")
        return await _detail_page(
            request, context, found, problem=f"You cannot {verb} your own request.",
            status_code=403,
        )  # fmt: skip
    if len(comment) > MAX_COMMENT:
        await audit_refusal(request, me, 422, f"request {request_id}: comment too long")
        return await _detail_page(
            request, context, found, comment=comment,
            problem=f"The comment is longer than {MAX_COMMENT} characters.", status_code=422,
        )  # fmt: skip
    step = await confirm_inline(request, context, text_field(form, "code", 80))
    if not step.ok:
        return await _detail_page(
            request, context, found, comment=comment, step=step, decision=verb
        )
    answer = services.requests.approve if approve else services.requests.deny
    try:
        await answer(found.request_id, me, comment, source=source_of(request))
    except (RbacError, ConduitError) as exc:
        # The request service audits its own refusals; this records the portal's answer.
        await audit_refusal(request, me, 409, f"{verb} refused: {exc.detail}")
        fresh = await services.requests.get(found.request_id)
        return await _detail_page(
            request, context, fresh, comment=comment, problem=exc.message, status_code=409
        )
    outcome = "approved" if approve else "denied"
    return RedirectResponse(f"/requests/{found.request_id}?done={outcome}", status_code=303)


@router.post("/requests/{request_id}/approve", response_class=HTMLResponse)
async def approve(request: Request, request_id: str) -> Response:
    return await _answer(request, request_id, approve=True)


@router.post("/requests/{request_id}/deny", response_class=HTMLResponse)
async def deny(request: Request, request_id: str) -> Response:
    return await _answer(request, request_id, approve=False)
