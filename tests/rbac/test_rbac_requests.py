"""Tables for the access-request state machine: every transition, approvals, expiry, caps."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest

from rbac.errors import ApprovalError, RequestError, TransitionError
from rbac.requests import (
    ALLOWED_TRANSITIONS,
    DEFAULT_PENDING_TTL,
    SYSTEM_ACTOR,
    AccessRequest,
    RequestState,
    Transition,
    approve,
    cancel,
    deny,
    expire,
    expires_at,
    grant_window,
    new_request,
    revoke,
)
from rbac.windows import AbsoluteWindow

T0 = datetime(2024, 6, 3, 8, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
APPROVERS = frozenset({"olga", "piet", "quinn", "vera"})  # vera is also the requester


def pending(required: int = 1, start: datetime = T0 + 2 * HOUR) -> AccessRequest:
    return new_request(
        "req-1",
        "vera",
        ["plc-1", "hmi-2", "plc-1"],
        ["ssh"],
        "replace firmware on line 3",
        start,
        4 * HOUR,
        T0,
        duration_cap=8 * HOUR,
        required_approvals=required,
    )


def in_state(state: RequestState) -> AccessRequest:
    """A request brought to ``state`` through the public transitions."""
    request = pending()
    if state is RequestState.PENDING:
        return request
    if state is RequestState.DENIED:
        return deny(request, "olga", T0 + HOUR, eligible=APPROVERS, comment="not this week")
    if state is RequestState.CANCELLED:
        return cancel(request, "vera", T0 + HOUR)
    if state is RequestState.EXPIRED:
        return expire(request, T0 + 6 * HOUR)  # its window ended unanswered
    approved = approve(request, "olga", T0 + HOUR, eligible=APPROVERS)
    if state is RequestState.APPROVED:
        return approved
    return revoke(approved, "piet", T0 + 3 * HOUR, comment="done early")


# Every operation, run at a time when only the state decides whether it may happen.
OPERATIONS: dict[RequestState, Callable[[AccessRequest], AccessRequest]] = {
    RequestState.APPROVED: lambda r: approve(r, "quinn", T0 + HOUR, eligible=APPROVERS),
    RequestState.DENIED: lambda r: deny(r, "quinn", T0 + HOUR, eligible=APPROVERS),
    RequestState.CANCELLED: lambda r: cancel(r, "vera", T0 + HOUR),
    RequestState.EXPIRED: lambda r: expire(r, T0 + 30 * HOUR),
    RequestState.REVOKED: lambda r: revoke(r, "quinn", T0 + 3 * HOUR),
}
ALLOWED = {
    (RequestState.PENDING, RequestState.APPROVED),
    (RequestState.PENDING, RequestState.DENIED),
    (RequestState.PENDING, RequestState.CANCELLED),
    (RequestState.PENDING, RequestState.EXPIRED),
    (RequestState.APPROVED, RequestState.REVOKED),
    (RequestState.APPROVED, RequestState.EXPIRED),
}


def test_transition_table_is_the_documented_one() -> None:
    table = {(a, b) for a, targets in ALLOWED_TRANSITIONS.items() for b in targets}
    assert table == ALLOWED
    assert set(ALLOWED_TRANSITIONS) == set(RequestState)


@pytest.mark.parametrize(
    "source,target,allowed",
    [(s, t, (s, t) in ALLOWED) for s in RequestState for t in OPERATIONS],
)
def test_every_transition(source: RequestState, target: RequestState, allowed: bool) -> None:
    request = in_state(source)
    assert request.state is source
    if not allowed:
        with pytest.raises(TransitionError):
            OPERATIONS[target](request)
        return
    moved = OPERATIONS[target](request)
    assert moved.state is target
    assert moved.history[-1].state is target
    assert request.state is source  # the original value is untouched


def test_history_records_time_actor_and_comment() -> None:
    approved = in_state(RequestState.APPROVED)
    revoked = revoke(approved, "piet", T0 + 3 * HOUR, comment="  done early ")
    assert revoked.history == (
        Transition(RequestState.APPROVED, T0 + HOUR, "olga", ""),
        Transition(RequestState.REVOKED, T0 + 3 * HOUR, "piet", "done early"),
    )
    expired = expire(pending(), T0 + 6 * HOUR)
    assert expired.history == (Transition(RequestState.EXPIRED, T0 + 6 * HOUR, SYSTEM_ACTOR, ""),)


@pytest.mark.parametrize(
    "who,verb",
    [
        ("vera", approve),  # the requester, even though listed as an approver
        ("vera", deny),
        ("mallory", approve),  # not eligible
        ("mallory", deny),
    ],
)
def test_requester_and_ineligible_people_cannot_answer(
    who: str, verb: Callable[..., AccessRequest]
) -> None:
    with pytest.raises(ApprovalError):
        verb(pending(), who, T0 + HOUR, eligible=APPROVERS)


def test_self_approval_refused_even_when_eligible() -> None:
    with pytest.raises(ApprovalError, match="your own request"):
        approve(pending(), "vera", T0 + HOUR, eligible={"vera"})


def test_two_of_m_needs_two_distinct_approvers() -> None:
    request = pending(required=2)
    once = approve(request, "olga", T0 + HOUR, eligible=APPROVERS, comment="ok")
    assert once.state is RequestState.PENDING
    assert once.approvers == {"olga"}
    assert once.history == ()
    with pytest.raises(ApprovalError, match="already approved"):
        approve(once, "olga", T0 + HOUR + timedelta(minutes=1), eligible=APPROVERS)
    twice = approve(once, "piet", T0 + 90 * timedelta(minutes=1), eligible=APPROVERS)
    assert twice.state is RequestState.APPROVED
    assert twice.approvers == {"olga", "piet"}
    assert twice.history == (
        Transition(RequestState.APPROVED, T0 + 90 * timedelta(minutes=1), "piet", ""),
    )


@pytest.mark.parametrize(
    "approvers,state",
    [
        (["olga"], RequestState.PENDING),
        (["olga", "piet"], RequestState.PENDING),
        (["olga", "piet", "quinn"], RequestState.APPROVED),
    ],
)
def test_three_of_m(approvers: list[str], state: RequestState) -> None:
    request = pending(required=3)
    for who in approvers:
        request = approve(request, who, T0 + HOUR, eligible=APPROVERS)
    assert request.state is state


def test_one_deny_is_enough_after_partial_approval() -> None:
    once = approve(pending(required=2), "olga", T0 + HOUR, eligible=APPROVERS)
    denied = deny(once, "piet", T0 + HOUR, eligible=APPROVERS, comment="no change window")
    assert denied.state is RequestState.DENIED
    assert denied.history[-1].comment == "no change window"


def test_only_the_requester_cancels() -> None:
    with pytest.raises(ApprovalError):
        cancel(pending(), "olga", T0 + HOUR)


@pytest.mark.parametrize(
    "ttl,start,now,due",
    [
        # Unanswered requests expire after the TTL (default 24 h) ...
        (DEFAULT_PENDING_TTL, T0 + 48 * HOUR, T0 + 24 * HOUR, True),
        (DEFAULT_PENDING_TTL, T0 + 48 * HOUR, T0 + 24 * HOUR - timedelta(microseconds=1), False),
        (2 * HOUR, T0 + 48 * HOUR, T0 + 2 * HOUR, True),
        (2 * HOUR, T0 + 48 * HOUR, T0 + HOUR, False),
        # ... or when the requested window has ended, whichever comes first.
        (DEFAULT_PENDING_TTL, T0 + HOUR, T0 + 5 * HOUR, True),
        (DEFAULT_PENDING_TTL, T0 + HOUR, T0 + 5 * HOUR - timedelta(seconds=1), False),
    ],
)
def test_pending_expiry(ttl: timedelta, start: datetime, now: datetime, due: bool) -> None:
    request = new_request(
        "req-2", "vera", ["plc-1"], ["ssh"], "why", start, 4 * HOUR, T0,
        duration_cap=8 * HOUR, pending_ttl=ttl,
    )  # fmt: skip
    if due:
        assert expire(request, now).state is RequestState.EXPIRED
        with pytest.raises(TransitionError, match="expired"):
            approve(request, "olga", now, eligible=APPROVERS)
    else:
        with pytest.raises(TransitionError, match="not expired yet"):
            expire(request, now)
        assert approve(request, "olga", now, eligible=APPROVERS).state is RequestState.APPROVED


def test_approved_request_expires_at_window_end_and_grants_that_window() -> None:
    approved = in_state(RequestState.APPROVED)
    end = T0 + 6 * HOUR
    assert expires_at(approved) == end
    assert grant_window(approved) == AbsoluteWindow(T0 + 2 * HOUR, end)
    with pytest.raises(TransitionError):
        expire(approved, end - timedelta(microseconds=1))
    assert expire(approved, end).state is RequestState.EXPIRED
    with pytest.raises(TransitionError, match="already ended"):
        revoke(approved, "olga", end)


@pytest.mark.parametrize("state", [s for s in RequestState if s is not RequestState.APPROVED])
def test_only_approved_requests_grant_anything(state: RequestState) -> None:
    assert grant_window(in_state(state)) is None


@pytest.mark.parametrize("state", [s for s in RequestState if not ALLOWED_TRANSITIONS[s]])
def test_final_states_have_no_expiry(state: RequestState) -> None:
    assert expires_at(in_state(state)) is None


@pytest.mark.parametrize(
    "duration,cap,ok",
    [
        (8 * HOUR, 8 * HOUR, True),
        (8 * HOUR + timedelta(seconds=1), 8 * HOUR, False),
        (timedelta(minutes=30), HOUR, True),
    ],
)
def test_duration_cap(duration: timedelta, cap: timedelta, ok: bool) -> None:
    def make() -> AccessRequest:
        return new_request(
            "r", "vera", ["plc-1"], ["ssh"], "why", T0, duration, T0, duration_cap=cap
        )

    if ok:
        assert make().duration == duration
    else:
        with pytest.raises(RequestError, match="exceeds the cap"):
            make()


@pytest.mark.parametrize(
    "overrides",
    [
        {"reason": "   "},
        {"assets": []},
        {"actions": [""]},
        {"requester": ""},
        {"duration": timedelta(0)},
        {"required_approvals": 0},
        {"pending_ttl": -HOUR},
        {"start": datetime(2024, 6, 3, 10)},  # naive
        {"now": datetime(2024, 6, 3, 8)},  # naive
        {"reason": "x" * 2001},
        {"start": datetime(9999, 12, 31, 23, 59, tzinfo=UTC)},  # its end overflows
        {"start": datetime(9999, 12, 31, 23, 59, tzinfo=timezone(-timedelta(hours=14)))},
        {"start": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))},
        {"start": datetime(1999, 12, 31, 23, 59, tzinfo=UTC)},
        {"start": datetime(2199, 12, 31, 23, 30, tzinfo=UTC)},  # ends after 2200-01-01
    ],
)
def test_invalid_requests_are_refused(overrides: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "request_id": "r",
        "requester": "vera",
        "assets": ["plc-1"],
        "actions": ["ssh"],
        "reason": "why",
        "start": T0,
        "duration": HOUR,
        "now": T0,
        "duration_cap": 8 * HOUR,
    }
    fields.update(overrides)
    with pytest.raises(RequestError):
        new_request(**fields)  # type: ignore[arg-type]


def test_naive_now_refused_in_transitions() -> None:
    with pytest.raises(RequestError):
        approve(pending(), "olga", datetime(2024, 6, 3, 9), eligible=APPROVERS)


def test_requests_are_immutable_and_normalised() -> None:
    request = pending()
    assert request.assets == ("hmi-2", "plc-1")
    with pytest.raises(AttributeError):
        request.state = RequestState.APPROVED  # type: ignore[misc]


def test_eligible_as_a_bare_string_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        approve(pending(), "olg", T0 + HOUR, eligible="olga")


def test_a_stored_request_whose_end_overflows_reads_as_never_ending() -> None:
    """A row stored before starts were bounded must still load, list and expire."""
    start = datetime(9999, 12, 31, 23, 59, tzinfo=UTC)
    stored = AccessRequest("r", "vera", ("plc-1",), ("ssh",), "why", start, HOUR, T0)
    assert stored.end == datetime.max.replace(tzinfo=UTC)
    assert expires_at(stored) == T0 + DEFAULT_PENDING_TTL
    assert expire(stored, T0 + DEFAULT_PENDING_TTL).state is RequestState.EXPIRED
