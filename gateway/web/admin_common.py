"""What every admin page (``/admin/...``) shares: the guards, the change audit event, and
bounded reading of form fields with a message per field.

Only people whose roles carry ``SiteAction.ADMINISTER_SITE`` see these pages; everyone else
(auditors included) gets "not found" for every page and every post, audited as
``portal.refused``, before the CSRF token is even looked at. A change is audited as
``admin.changed`` with what it was before and after (secrets never enter either). Does not
change anything itself: each page module calls the services the CLI calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse
from starlette.datastructures import FormData

from gateway.web.auth import PortalContext, check_csrf, current_session, services_of, source_of
from gateway.web.layout import page
from gateway.web.portal_forms import (
    NotPermitted,
    audit_refusal,
    form_of,
    require_capability,
    signed_in,
    text_field,
)
from gateway.web.stepup import StepUp, confirm_inline
from rbac.roles import SiteAction

ADMIN = SiteAction.ADMINISTER_SITE
NAME_MAX = 64


async def admin_page(request: Request) -> PortalContext | None:
    """An admin page's session (None: redirect to login); "not found" for non-admins."""
    return await signed_in(request, ADMIN)


async def admin_post(request: Request) -> tuple[PortalContext, FormData]:
    """An admin form post: 401 without a session, "not found" (audited) without the
    capability, 403 (audited) without this session's CSRF token; then the form."""
    context = await current_session(request)
    if context is None:
        await audit_refusal(request, "anonymous", 401, "admin post without a valid session")
        raise HTTPException(status_code=401, detail="log in first")
    await require_capability(request, context, ADMIN)
    try:
        await check_csrf(request, context)
    except HTTPException:
        await audit_refusal(request, context.session.username, 403, "CSRF check failed")
        raise
    return context, await form_of(request)


@dataclass
class Checked:
    """A form read field by field: the values as typed (shown again) and the problems."""

    form: FormData
    values: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def text(self, name: str, limit: int, *, required: bool = True, what: str = "") -> str:
        raw = text_field(self.form, name, limit + 1)
        value = raw.strip()
        self.values[name] = value[:limit]
        label = what or name.replace("_", " ")
        if len(value) > limit:
            self.errors[name] = f"The {label} is longer than {limit} characters."
        elif required and not value:
            self.errors[name] = f"Give the {label}."
        return value[:limit]

    def number(self, name: str, low: int, high: int, *, what: str = "") -> int | None:
        """A whole number in [low, high]; empty gives None (callers say if that is fine)."""
        raw = text_field(self.form, name, 20).strip()
        self.values[name] = raw
        if not raw:
            return None
        label = what or name.replace("_", " ")
        if not raw.isdigit() or not low <= int(raw) <= high:
            self.errors[name] = f"The {label} must be a whole number from {low} to {high}."
            return None
        return int(raw)

    def checked(self, name: str) -> bool:
        value = self.form.get(name) == "on"
        self.values[name] = value
        return value

    def fail(self, name: str, message: str) -> None:
        self.errors.setdefault(name, message)


async def audit_change(
    request: Request,
    context: PortalContext,
    what: str,
    target: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    """``admin.changed``: who changed ``what`` (zone, asset, credential...), from, to."""
    await record_change(request, context.session.username, what, target, before, after)


async def record_change(
    request: Request,
    actor: str,
    what: str,
    target: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    """``admin.changed`` by ``actor`` (a page's session or an API caller)."""
    await services_of(request).audit.record(
        actor=actor,
        action="admin.changed",
        result="success",
        target=target[:200],
        source=source_of(request),
        detail={"what": what, "before": before or {}, "after": after or {}},
    )


async def step_up(request: Request, context: PortalContext, form: FormData) -> StepUp:
    return await confirm_inline(request, context, text_field(form, "code", 80))


async def admin_view(
    request: Request,
    context: PortalContext,
    template: str,
    values: dict[str, Any],
    *,
    step: StepUp | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    """``template`` in the frame, with the step-up field when ``step`` asks for a code."""
    shown = {"stepup_needed": False, **(step.values() if step is not None else {}), **values}
    return await page(request, context, template, shown, current="admin", status_code=status_code)


async def refused_input(
    request: Request, context: PortalContext, checked: Checked, what: str
) -> None:
    """Bad input is audited too (the form comes back with a message beside each field)."""
    fields = ", ".join(sorted(checked.errors))
    await audit_refusal(request, context.session.username, 422, f"{what}: invalid {fields}")


async def missing(request: Request, context: PortalContext, why: str) -> NotPermitted:
    """A named object that does not exist: "not found", like a page one may not see."""
    await audit_refusal(request, context.session.username, 404, why)
    return NotPermitted(request.url.path)
