"""Step-up inside a form: a page that changes something sensitive asks for a fresh code in
the same form when the session's last second factor is older than the limit, never a detour.

A route handling such a form calls ``confirm_inline`` first. ``Needed.NO`` means go on;
otherwise it re-renders its form with the code field (``templates/_stepup.html``) and the
message, and nothing is changed. A code passed here counts as the session's new second
factor (``portal_sessions.mark_mfa``), as ``POST /account/step-up`` does; a bad code is
audited and counts toward lockout by the authenticator, like every other code. Does not
decide access: the route checks the capability before asking for a code.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from fastapi import Request

from gateway.identity import portal_sessions
from gateway.identity.login import AuthenticationFailed
from gateway.identity.portal_sessions import StepUpRequired, require_recent_mfa
from gateway.web.auth import PortalContext, authenticator, services_of, source_of

CODE_MAX = 64  # the form field's bound; a TOTP code is 6 digits


class Needed(enum.Enum):
    NO = "no"  # the second factor is recent, or the code given just now was good
    CODE = "code"  # ask for a code (none was given)
    BAD_CODE = "bad_code"  # a code was given and refused


@dataclass(frozen=True)
class StepUp:
    needed: Needed
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.needed is Needed.NO

    def values(self) -> dict[str, object]:
        """What ``_stepup.html`` reads: whether to show the field, and the message."""
        return {
            "stepup_needed": not self.ok,
            "stepup_message": self.message,
            "stepup_refused": self.needed is Needed.BAD_CODE,  # shown as an error, not a prompt
        }


ASK = "This needs a fresh code from your authenticator app: enter it and submit again."
BAD = "That code was not accepted. Wait for the next code and try again."


async def confirm_inline(request: Request, context: PortalContext, code: str | None) -> StepUp:
    """``Needed.NO`` when the session may make the change now (after a good ``code``)."""
    services = services_of(request)
    now = services.clock()
    try:
        require_recent_mfa(context.session, now)
        return StepUp(Needed.NO)
    except StepUpRequired:
        pass
    code = (code or "").strip()
    if not code:
        return StepUp(Needed.CODE, ASK)
    if len(code) > CODE_MAX:
        return StepUp(Needed.BAD_CODE, BAD)
    try:
        await authenticator(request).confirm_code(
            context.session.user_id, context.session.username, code, "portal",
            source_of(request), now,
        )  # fmt: skip
    except AuthenticationFailed:
        return StepUp(Needed.BAD_CODE, BAD)
    async with services.sessions() as db, db.begin():
        await portal_sessions.mark_mfa(db, context.session.session_id, now)
    return StepUp(Needed.NO)
