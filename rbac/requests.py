"""Access requests: the just-in-time request state machine, as immutable data.

An ``AccessRequest`` is a frozen value; every operation (``approve``, ``deny``, ``cancel``,
``expire``, ``revoke``) checks the rules and returns a new value with the transition recorded
(state, time, actor, comment) in ``history``. The states and the only allowed moves:

    pending  -> approved | denied | cancelled | expired
    approved -> revoked | expired

Approval is N-of-M: ``required_approvals`` distinct eligible approvers, never the requester.
A pending request that nobody answers expires at ``created_at + pending_ttl`` (default 24 h)
or when its requested window ends, whichever is first; an approved one expires when its
window ends.

It does not read the clock (``now`` is passed in), decide who is eligible (the caller passes
the approvers holding ``approve`` on every asset), store requests, emit events or create the
grant (``grant_window`` says which window the grant covers).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType

from rbac.errors import ApprovalError, RequestError, TransitionError, WindowError
from rbac.windows import AbsoluteWindow, check_instant

__all__ = [
    "ALLOWED_TRANSITIONS",
    "DEFAULT_PENDING_TTL",
    "SYSTEM_ACTOR",
    "AccessRequest",
    "Approval",
    "RequestState",
    "Transition",
    "approve",
    "cancel",
    "deny",
    "expire",
    "expires_at",
    "grant_window",
    "new_request",
    "revoke",
]

DEFAULT_PENDING_TTL = timedelta(hours=24)
SYSTEM_ACTOR = "system"  # the actor recorded for expiry; no person did it
_MAX_TEXT = 2000  # reason and comment limit: enough to explain, small enough to store/audit


class RequestState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    REVOKED = "revoked"


ALLOWED_TRANSITIONS = MappingProxyType(
    {
        RequestState.PENDING: frozenset(
            {
                RequestState.APPROVED,
                RequestState.DENIED,
                RequestState.CANCELLED,
                RequestState.EXPIRED,
            }
        ),
        RequestState.APPROVED: frozenset({RequestState.REVOKED, RequestState.EXPIRED}),
        RequestState.DENIED: frozenset[RequestState](),
        RequestState.CANCELLED: frozenset[RequestState](),
        RequestState.EXPIRED: frozenset[RequestState](),
        RequestState.REVOKED: frozenset[RequestState](),
    }
)


@dataclass(frozen=True, slots=True)
class Transition:
    """The request entered ``state`` at ``at`` because of ``actor``."""

    state: RequestState
    at: datetime
    actor: str
    comment: str = ""


@dataclass(frozen=True, slots=True)
class Approval:
    """One approver's yes; a request is approved once it has enough distinct ones."""

    approver: str
    at: datetime
    comment: str = ""


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """A vendor's request for ``actions`` on ``assets`` during ``[start, start + duration)``."""

    request_id: str
    requester: str
    assets: tuple[str, ...]
    actions: tuple[str, ...]
    reason: str
    start: datetime
    duration: timedelta
    created_at: datetime
    required_approvals: int = 1
    pending_ttl: timedelta = DEFAULT_PENDING_TTL
    state: RequestState = RequestState.PENDING
    approvals: tuple[Approval, ...] = ()
    history: tuple[Transition, ...] = ()

    def __post_init__(self) -> None:
        for name in ("request_id", "requester", "reason"):
            if not getattr(self, name).strip():
                raise RequestError(f"{name.replace('_', ' ')} is required")
        if not self.assets or not all(a.strip() for a in self.assets):
            raise RequestError("at least one asset is required")
        if not self.actions or not all(a.strip() for a in self.actions):
            raise RequestError("at least one action is required")
        if len(self.reason) > _MAX_TEXT:
            raise RequestError(f"reason is longer than {_MAX_TEXT} characters")
        if self.duration <= timedelta(0):
            raise RequestError("duration must be positive")
        if self.pending_ttl <= timedelta(0):
            raise RequestError("pending time-to-live must be positive")
        if self.required_approvals < 1:
            raise RequestError("at least one approval must be required")
        object.__setattr__(self, "start", _aware(self.start, "start"))
        object.__setattr__(self, "created_at", _aware(self.created_at, "created_at"))

    @property
    def end(self) -> datetime:
        # ``new_request`` keeps starts far from the calendar's end; a row stored before it
        # did may still overflow here, and must read as "never" rather than break a list.
        return _plus(self.start, self.duration)

    @property
    def approvers(self) -> frozenset[str]:
        return frozenset(a.approver for a in self.approvals)


def new_request(
    request_id: str,
    requester: str,
    assets: Iterable[str],
    actions: Iterable[str],
    reason: str,
    start: datetime,
    duration: timedelta,
    now: datetime,
    *,
    duration_cap: timedelta,
    required_approvals: int = 1,
    pending_ttl: timedelta = DEFAULT_PENDING_TTL,
) -> AccessRequest:
    """A new pending request; refuses a duration above ``duration_cap`` rather than trimming.

    ``start`` and the window's end must lie in the documented range
    (``rbac.windows.check_instant``).

    Refusing keeps what the vendor asked for and what approvers see identical. ``assets`` and
    ``actions`` are de-duplicated and sorted so equal requests compare equal.
    """
    if duration > duration_cap:
        raise RequestError(
            f"duration {duration} exceeds the cap of {duration_cap} for these assets",
            f"request {request_id}: duration {duration} > cap {duration_cap}",
        )
    try:  # the whole window, so that the grant an approval makes is in range too
        start = check_instant(start, "start")
        check_instant(_plus(start, duration), "end (start + duration)")
    except WindowError as exc:
        raise RequestError(exc.message, f"request {request_id}: {exc.detail}") from None
    return AccessRequest(
        request_id=request_id,
        requester=requester,
        assets=tuple(sorted(set(assets))),
        actions=tuple(sorted(set(actions))),
        reason=reason.strip(),
        start=start,
        duration=duration,
        created_at=_aware(now, "now"),
        required_approvals=required_approvals,
        pending_ttl=pending_ttl,
    )


def approve(
    request: AccessRequest,
    approver: str,
    now: datetime,
    *,
    eligible: Collection[str],
    comment: str = "",
    ineligible_reason: str = "",
) -> AccessRequest:
    """Record ``approver``'s approval; the request becomes approved at the N-th distinct one.

    ``eligible`` are the people holding ``approve`` on every asset of the request (and in
    the approver group of each of its zones, when a zone names one). Raises
    ``ApprovalError`` for the requester, someone not eligible (with ``ineligible_reason`` as
    its message when given), or a second approval by the same person (each person counts
    once); ``TransitionError`` unless pending and not due to expire.
    """
    _check_answerable(request, approver, now, eligible, "approve", ineligible_reason)
    if approver in request.approvers:
        raise ApprovalError("you have already approved this request", _who(request, approver))
    approvals = (*request.approvals, Approval(approver, _aware(now, "now"), _comment(comment)))
    updated = replace(request, approvals=approvals)
    if len(updated.approvers) < request.required_approvals:
        return updated
    return _move(updated, RequestState.APPROVED, now, approver, comment)


def deny(
    request: AccessRequest,
    approver: str,
    now: datetime,
    *,
    eligible: Collection[str],
    comment: str = "",
    ineligible_reason: str = "",
) -> AccessRequest:
    """Deny the request; one eligible approver's no is enough, whatever N is."""
    _check_answerable(request, approver, now, eligible, "deny", ineligible_reason)
    return _move(request, RequestState.DENIED, now, approver, comment)


def cancel(
    request: AccessRequest, actor: str, now: datetime, *, comment: str = ""
) -> AccessRequest:
    """The requester withdraws a pending request; nobody else may (approvers deny instead)."""
    if actor != request.requester:
        raise ApprovalError("only the requester may cancel a request", _who(request, actor))
    return _move(request, RequestState.CANCELLED, now, actor, comment)


def expire(request: AccessRequest, now: datetime) -> AccessRequest:
    """Mark a pending or approved request expired once ``expires_at`` has been reached."""
    due = expires_at(request)
    if due is not None and _aware(now, "now") < due:
        raise TransitionError(
            "request has not expired yet", f"request {request.request_id}: due at {due}"
        )
    return _move(request, RequestState.EXPIRED, now, SYSTEM_ACTOR, "")


def revoke(
    request: AccessRequest, actor: str, now: datetime, *, comment: str = ""
) -> AccessRequest:
    """End an approved request before its window ends.

    Who may revoke (an approver, an admin, the requester giving access back) is decided by the
    caller's authorization, not here.
    """
    if request.state is RequestState.APPROVED and _aware(now, "now") >= request.end:
        raise TransitionError(
            "access has already ended", f"request {request.request_id}: ended at {request.end}"
        )
    return _move(request, RequestState.REVOKED, now, actor, comment)


def expires_at(request: AccessRequest) -> datetime | None:
    """When ``expire`` becomes applicable: pending until the TTL or window end, approved until
    the window end; ``None`` in final states."""
    if request.state is RequestState.PENDING:
        return min(_plus(request.created_at, request.pending_ttl), request.end)
    if request.state is RequestState.APPROVED:
        return request.end
    return None


def grant_window(request: AccessRequest) -> AbsoluteWindow | None:
    """The window an approved request grants, ``[start, start + duration)``; else ``None``."""
    if request.state is not RequestState.APPROVED:
        return None
    return AbsoluteWindow(request.start, request.end)


def _check_answerable(
    request: AccessRequest,
    approver: str,
    now: datetime,
    eligible: Collection[str],
    verb: str,
    ineligible_reason: str = "",
) -> None:
    # State first, so that answering a closed request says so rather than "not eligible".
    _check_allowed(request, RequestState.DENIED if verb == "deny" else RequestState.APPROVED)
    due = expires_at(request)
    if due is not None and _aware(now, "now") >= due:
        raise TransitionError(
            "request has expired", f"request {request.request_id}: expired at {due}"
        )
    if approver == request.requester:
        raise ApprovalError(f"you cannot {verb} your own request", _who(request, approver))
    # A bare string is a Collection[str] too, and `in` would then match substrings.
    if isinstance(eligible, str):
        raise TypeError("eligible must be a collection of user names, not one string")
    if approver not in eligible:
        raise ApprovalError(
            ineligible_reason or f"you may not {verb} this request",
            f"{_who(request, approver)} is not eligible"
            + (f": {ineligible_reason}" if ineligible_reason else ""),
        )


def _check_allowed(request: AccessRequest, target: RequestState) -> None:
    if target not in ALLOWED_TRANSITIONS[request.state]:
        raise TransitionError(
            f"a {request.state} request cannot become {target}",
            f"request {request.request_id}: {request.state} -> {target} refused",
        )


def _move(
    request: AccessRequest, target: RequestState, now: datetime, actor: str, comment: str
) -> AccessRequest:
    _check_allowed(request, target)
    if not actor.strip():
        raise RequestError("an actor is required for every transition")
    step = Transition(target, _aware(now, "now"), actor, _comment(comment))
    return replace(request, state=target, history=(*request.history, step))


def _aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise RequestError(f"{what} must be timezone-aware", repr(value))
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise RequestError(f"{what} is out of range", repr(value)) from None


_NEVER = datetime.max.replace(tzinfo=UTC)


def _plus(instant: datetime, duration: timedelta) -> datetime:
    """``instant + duration``, or the last representable instant where that overflows."""
    try:
        return instant + duration
    except OverflowError:
        return _NEVER


def _comment(text: str) -> str:
    if len(text) > _MAX_TEXT:
        raise RequestError(f"comment is longer than {_MAX_TEXT} characters")
    return text.strip()


def _who(request: AccessRequest, person: str) -> str:
    return f"request {request.request_id}: {person!r} (requester {request.requester!r})"
