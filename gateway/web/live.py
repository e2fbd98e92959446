"""Live sessions in the portal (``/live``): a table that refreshes itself, and kill with a reason.

The page needs the site capability ``WATCH_SESSIONS`` (else 404 like a missing page, audited
as ``portal.refused``); each row still follows the JSON API's per-asset rules
(``api_sessions.Capabilities``: own sessions, ``SEE_ALL_SESSIONS``, or watch/kill/admin on
the asset), asked once per asset. ``/live/table`` returns only the ``<tbody>`` for htmx to
swap every 2 s. The table is one query (``live_store.listing_with_org``) however many rows;
``live_rows`` is what a benchmark times (with the template render) for 500 rows.

Kill is a form outside the refreshing table (``/live?kill=ID`` shows it), so typing a
reason is never wiped by a refresh. Its post checks CSRF, the capability, the reason (the
API's own rule: printable text up to the column's length, kept verbatim), then an inline
step-up (``stepup.confirm_inline``), then stores the kill exactly as the API does
(``api_sessions.store_kill``). Every refusal shows an inline message and is audited as
``portal.refused``. Does not end sessions itself (the owner node does) and does not decide
access beyond asking the authorizer.

A Modbus session's row offers "Arm writes" to whoever holds ``approve`` on its asset: the
same pattern (``/live?arm=ID`` shows a form with minutes and a reason; its post checks CSRF,
capability, bounds, inline step-up) stores a write window exactly as the API does
(``api_sessions.store_window``); the owner node applies it within a second.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import TypeAdapter, ValidationError

from gateway.services import Services
from gateway.sessions import store as live_store
from gateway.sessions import write_windows
from gateway.sessions.store import LiveSessionRow
from gateway.web.api_access import Caller, Refused
from gateway.web.api_sessions import (
    MAX_REASON,
    Capabilities,
    Reason,
    arm_target,
    kill_target,
    store_kill,
    store_window,
)
from gateway.web.auth import PortalContext, render, services_of, source_of
from gateway.web.layout import page, sign_in_redirect
from gateway.web.portal_forms import audit_refusal, signed_in, signed_in_post
from gateway.web.stepup import StepUp, confirm_inline
from rbac.roles import SiteAction

router = APIRouter(include_in_schema=False)
Session = Annotated[PortalContext, Depends(signed_in_post)]
SessionId = Annotated[str, Path(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_-]+$")]
KillParam = Annotated[str, Query(max_length=40, pattern=r"^[A-Za-z0-9_-]*$")]
REASON_CHECK: TypeAdapter[str] = TypeAdapter(Reason)
BAD_REASON = (
    f"Give a reason of 1 to {MAX_REASON} printable characters on one line "
    "(no line breaks or tabs). Nothing was changed."
)


@dataclass(frozen=True)
class LiveRow:
    session_id: str
    user: str
    org: str
    asset: str
    protocol: str
    node: str
    started: str
    until: str
    bytes_up: int
    bytes_down: int
    killing: bool  # a kill is requested and on its way
    may_kill: bool
    may_arm: bool = False  # a Modbus session this person may arm writes on


def _time(instant: dt.datetime | None) -> str:
    return instant.strftime("%Y-%m-%d %H:%M") if instant is not None else "no end"


async def live_rows(services: Services, caller: Caller) -> list[LiveRow]:
    """The rows ``caller`` may see, oldest first: one query, capabilities cached per asset."""
    async with services.sessions() as db:
        listed = await live_store.listing_with_org(db)
    caps = Capabilities(services, caller)
    out = []
    for row, org in listed:
        if not await caps.sees(row):
            continue
        out.append(
            LiveRow(
                session_id=row.session_id, user=row.username, org=org, asset=row.asset,
                protocol=row.protocol, node=row.node, started=_time(row.started_at),
                until=_time(row.valid_until), bytes_up=row.bytes_up, bytes_down=row.bytes_down,
                killing=row.kill_reason is not None, may_kill=await caps.kills(row),
                may_arm=await caps.arms(row),
            )
        )  # fmt: skip
    return out


async def _killable(services: Services, context: PortalContext, session_id: str) -> LiveSessionRow:
    """The live session this person may kill (``api_sessions.kill_target``), or ``Refused``."""
    caps = Capabilities(services, Caller.of_session(context.session))
    return await kill_target(services, caps, session_id)


async def _live_page(
    request: Request,
    context: PortalContext,
    form: dict[str, object] | None = None,
    status_code: int = 200,
    arm: dict[str, object] | None = None,
) -> HTMLResponse:
    """The page; ``form`` (session, reason, message, step-up values) shows the kill form,
    ``arm`` the write-window form."""
    rows = await live_rows(services_of(request), Caller.of_session(context.session))
    values: dict[str, object] = {"rows": rows, "kill": form, "arm": arm, "done": "",
                                 "max_minutes": write_windows.MAX_MINUTES}  # fmt: skip
    for key, shown in (("kill", form), ("arm", arm)):
        if shown is not None and shown.get("done"):
            values["done"], values[key] = shown["done"], None
    return await page(request, context, "live.html", values, current="live",
                      status_code=status_code)  # fmt: skip


@router.get("/live", response_class=HTMLResponse)
async def live(request: Request, kill: KillParam = "", arm: KillParam = "") -> Response:
    context = await signed_in(request, SiteAction.WATCH_SESSIONS)
    if context is None:
        return sign_in_redirect(request)
    form: dict[str, object] | None = None
    if kill:
        form = await _kill_form(request, context, kill)
    arm_form = await _arm_form(request, context, arm) if arm and not kill else None
    return await _live_page(request, context, form, arm=arm_form)


async def _armable(services: Services, context: PortalContext, session_id: str) -> LiveSessionRow:
    caps = Capabilities(services, Caller.of_session(context.session))
    return await arm_target(services, caps, session_id)


async def _arm_form(request: Request, context: PortalContext, session_id: str) -> dict[str, object]:
    """The write-window form for a Modbus session this user may arm, or why not."""
    try:
        row = await _armable(services_of(request), context, session_id)
    except Refused as exc:
        await audit_refusal(request, context.session.username, exc.status_code, exc.why)
        return {"session_id": session_id, "message": str(exc.detail), "closed": True}
    return {"session_id": session_id, "row": f"{row.username} on {row.asset}", "minutes": "15"}


@router.post("/live/{session_id}/write-window", response_class=HTMLResponse)
async def arm_from_page(
    request: Request,
    session_id: SessionId,
    context: Session,
    minutes: Annotated[str, Form(max_length=8)] = "",
    reason: Annotated[str, Form(max_length=4 * write_windows.MAX_REASON)] = "",
    code: Annotated[str | None, Form(max_length=64)] = None,
) -> Response:
    await signed_in(request, SiteAction.WATCH_SESSIONS)
    services = services_of(request)
    user = context.session.username
    form: dict[str, object] = {"session_id": session_id, "reason": reason, "minutes": minutes}
    try:
        row = await _armable(services, context, session_id)
    except Refused as exc:
        await audit_refusal(request, user, exc.status_code, exc.why)
        form.update(message=str(exc.detail), closed=True)
        return await _live_page(request, context, arm=form, status_code=exc.status_code)
    form["row"] = f"{row.username} on {row.asset}"
    try:
        count = write_windows.check_minutes(int(minutes)) if minutes.isdigit() else 0
        if not count:
            raise ValueError("minutes")
        write_windows.check_reason(reason)
    except ValueError:
        await audit_refusal(request, user, 422, "write window minutes or reason out of bounds")
        form["message"] = (
            f"Give 1 to {write_windows.MAX_MINUTES} minutes and a reason of 1 to "
            f"{write_windows.MAX_REASON} printable characters on one line. Nothing was changed."
        )
        return await _live_page(request, context, arm=form, status_code=422)
    step: StepUp = await confirm_inline(request, context, code)
    if not step.ok:
        form.update(step.values())
        return await _live_page(request, context, arm=form)
    try:
        armed = await store_window(services, row, count, reason, user, source_of(request))
    except Refused as exc:
        await audit_refusal(request, user, exc.status_code, exc.why)
        form.update(message=str(exc.detail), closed=True)
        return await _live_page(request, context, arm=form, status_code=exc.status_code)
    ends = armed.ends_at.strftime("%H:%M")
    form["done"] = f"Writes armed for {form['row']} until {ends} UTC: they apply within a second."
    return await _live_page(request, context, arm=form)


async def _kill_form(
    request: Request, context: PortalContext, session_id: str
) -> dict[str, object]:
    """The kill form for a session this user may kill, or a message saying it cannot be."""
    services = services_of(request)
    try:
        row = await _killable(services, context, session_id)
    except Refused as exc:
        await audit_refusal(request, context.session.username, exc.status_code, exc.why)
        return {"session_id": session_id, "message": str(exc.detail), "closed": True}
    return {"session_id": session_id, "row": f"{row.username} on {row.asset} ({row.protocol})"}


@router.get("/live/table", response_class=HTMLResponse)
async def live_table(request: Request) -> Response:
    """The ``<tbody>`` alone: htmx swaps it in place every 2 s."""
    context = await signed_in(request, SiteAction.WATCH_SESSIONS)
    if context is None:
        return Response(status_code=401, headers={"HX-Redirect": "/login"})
    rows = await live_rows(services_of(request), Caller.of_session(context.session))
    return render(request, "live_rows.html", {"rows": rows})


@router.post("/live/{session_id}/kill", response_class=HTMLResponse)
async def kill_from_page(
    request: Request,
    session_id: SessionId,
    context: Session,
    reason: Annotated[str, Form(max_length=4 * MAX_REASON)] = "",
    code: Annotated[str | None, Form(max_length=64)] = None,
) -> Response:
    await signed_in(request, SiteAction.WATCH_SESSIONS)
    services = services_of(request)
    form: dict[str, object] = {"session_id": session_id, "reason": reason}
    try:
        row = await _killable(services, context, session_id)
    except Refused as exc:
        await audit_refusal(request, context.session.username, exc.status_code, exc.why)
        form.update(message=str(exc.detail), closed=True)
        return await _live_page(request, context, form, status_code=exc.status_code)
    form["row"] = f"{row.username} on {row.asset} ({row.protocol})"
    try:
        REASON_CHECK.validate_python(reason)
    except ValidationError:
        why = "kill reason not printable text within bounds"
        await audit_refusal(request, context.session.username, 422, why)
        form["message"] = BAD_REASON
        return await _live_page(request, context, form, status_code=422)
    step: StepUp = await confirm_inline(request, context, code)
    if not step.ok:
        form.update(step.values())
        return await _live_page(request, context, form)
    try:
        await store_kill(services, row, reason, context.session.username, source_of(request))
    except Refused as exc:
        await audit_refusal(request, context.session.username, exc.status_code, exc.why)
        form.update(message=str(exc.detail), closed=True)
        return await _live_page(request, context, form, status_code=exc.status_code)
    form["done"] = f"Kill requested for {form['row']}: it ends within a second."
    return await _live_page(request, context, form)
