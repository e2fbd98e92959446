"""My-access states (available / pending / next window / requestable) at fixed instants."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from rbac.availability import AccessState, asset_access, uses_asset
from rbac.policy import PolicyIndex, Rule
from rbac.windows import AbsoluteWindow, parse_schedule

ACTIONS = ("ssh", "sftp-read", "vnc", "approve", "request", "tunnel:502")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def plant() -> PolicyIndex:
    idx = PolicyIndex()
    idx.add_inside("asset:plc-1", "zone:line-1")
    idx.add_inside("asset:hmi-2", "zone:line-1")
    idx.add_inside("asset:scada", "zone:control")
    idx.add_member("user:alice", "org:acme")
    idx.add_member("user:bob", "org:other")
    # acme may ask for anything in line-1; alice holds a weekday schedule on plc-1 and a
    # one-off window on hmi-2.
    idx.add_rule(Rule("g-req", "org:acme", "zone:line-1", "request"))
    idx.add_rule(
        Rule("g-week", "user:alice", "asset:plc-1", "ssh",
             schedule=parse_schedule("Mon-Fri 07:00-17:00 UTC"))
    )  # fmt: skip
    idx.add_rule(
        Rule("g-once", "user:alice", "asset:hmi-2", "vnc",
             window=AbsoluteWindow(utc(2026, 3, 2, 9), utc(2026, 3, 2, 9, 30)))
    )  # fmt: skip
    idx.add_rule(Rule("g-appr", "user:alice", "asset:scada", "approve"))
    # a freeze on plc-1 on Tuesday 3 March
    idx.add_rule(
        Rule("d-freeze", "user:alice", "asset:plc-1", "ssh", effect="deny",
             window=AbsoluteWindow(utc(2026, 3, 3), utc(2026, 3, 4)))
    )  # fmt: skip
    return idx


MON_0900 = utc(2026, 3, 2, 9, 0)  # Monday
MON_2000 = utc(2026, 3, 2, 20, 0)
SAT_1000 = utc(2026, 3, 7, 10, 0)


@pytest.mark.parametrize(
    "asset,now,pending,state,until,next_window",
    [
        ("plc-1", MON_0900, False, AccessState.AVAILABLE, utc(2026, 3, 2, 17), None),
        ("hmi-2", MON_0900, False, AccessState.AVAILABLE, utc(2026, 3, 2, 9, 30), None),
        # outside the schedule: next window is Tuesday 07:00, but Tuesday is frozen
        ("plc-1", MON_2000, False, AccessState.NEXT_WINDOW, None, utc(2026, 3, 4, 7)),
        ("plc-1", SAT_1000, False, AccessState.NEXT_WINDOW, None, utc(2026, 3, 9, 7)),
        # the one-off window is over: only requestable (through the zone) is left
        ("hmi-2", MON_2000, False, AccessState.REQUESTABLE, None, None),
        ("hmi-2", MON_2000, True, AccessState.PENDING, None, None),
        # a pending request does not hide access already in force, nor a next window
        ("hmi-2", MON_0900, True, AccessState.AVAILABLE, utc(2026, 3, 2, 9, 30), None),
        ("plc-1", SAT_1000, True, AccessState.PENDING, None, None),
    ],
)
def test_states_at_fixed_instants(
    asset: str,
    now: datetime,
    pending: bool,
    state: AccessState,
    until: datetime | None,
    next_window: datetime | None,
) -> None:
    found = asset_access(plant(), "user:alice", f"asset:{asset}", ACTIONS, now, pending=pending)
    assert found is not None
    assert (found.state, found.until, found.next_window) == (state, until, next_window)
    assert found.requestable is True  # both are in line-1, requestable by acme


def test_approve_alone_is_not_access_and_others_see_nothing() -> None:
    idx = plant()
    # alice may approve on scada but not use or request it: not in her list
    assert asset_access(idx, "user:alice", "asset:scada", ACTIONS, MON_0900) is None
    # bob (another organisation) has nothing on line-1
    assert asset_access(idx, "user:bob", "asset:plc-1", ACTIONS, MON_0900) is None
    # ...unless one of his own requests is pending there
    mine = asset_access(idx, "user:bob", "asset:plc-1", ACTIONS, MON_0900, pending=True)
    assert mine is not None and mine.state is AccessState.PENDING and not mine.requestable


def test_available_lists_the_actions_in_force_and_no_end_when_a_grant_has_none() -> None:
    idx = plant()
    idx.add_rule(Rule("g-files", "user:alice", "asset:plc-1", "sftp-read"))
    found = asset_access(idx, "user:alice", "asset:plc-1", ACTIONS, MON_0900)
    assert found is not None
    assert found.actions_now == ("sftp-read", "ssh") and found.until is None


def test_next_allowed_is_none_when_nothing_opens_again() -> None:
    idx = plant()
    assert idx.next_allowed("user:alice", "asset:hmi-2", "vnc", MON_2000) is None
    assert idx.next_allowed("user:alice", "asset:hmi-2", "vnc", utc(2026, 3, 1)) == utc(
        2026, 3, 2, 9
    )
    assert idx.next_allowed("user:bob", "asset:hmi-2", "vnc", MON_0900) is None


@pytest.mark.parametrize(
    "action,uses",
    [("ssh", True), ("ssh:account=maint", True), ("sftp-write", True), ("tunnel:502", True),
     ("rdp", True), ("approve", False), ("request", False), ("watch", False), ("kill", False)],
)  # fmt: skip
def test_which_actions_use_an_asset(action: str, uses: bool) -> None:
    assert uses_asset(action) is uses
