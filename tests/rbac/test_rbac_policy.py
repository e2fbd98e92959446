"""authorize(): table-driven decisions, valid_until, and agreement with casbin.Enforcer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import casbin
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rbac.errors import PolicyNameError
from rbac.names import account_base
from rbac.policy import PolicyIndex, Rule
from rbac.windows import AbsoluteWindow, parse_schedule

MODEL = Path(__file__).resolve().parents[2] / "rbac" / "model.conf"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def site() -> PolicyIndex:
    """A small plant: zones nest, users belong to roles and organisations."""
    idx = PolicyIndex()
    idx.add_inside("asset:plc-1", "zone:line-1")
    idx.add_inside("asset:plc-10", "zone:line-2")
    idx.add_inside("zone:line-1", "zone:plant-a")
    idx.add_inside("zone:line-2", "zone:plant-a")
    idx.add_inside("asset:hmi-chicago", "zone:us")
    idx.add_member("user:alice", "org:acme")
    idx.add_member("user:alice", "role:vendor")
    idx.add_member("user:bob", "role:vendor")
    idx.add_member("user:carol", "role:engineer")
    idx.add_member("role:engineer", "role:vendor")  # roles nest
    # acme may ssh into line-1 on weekdays in Berlin office hours
    idx.add_rule(
        Rule(
            "g-weekday",
            "org:acme",
            "zone:line-1",
            "ssh",
            schedule=parse_schedule("Mon-Fri 07:00-17:00 Europe/Berlin"),
        )
    )
    # bob: plc-1 only, for one absolute window
    idx.add_rule(
        Rule(
            "g-bob",
            "user:bob",
            "asset:plc-1",
            "ssh",
            window=AbsoluteWindow(utc(2026, 3, 2, 8), utc(2026, 3, 2, 12)),
        )
    )
    # vendors: night shift over midnight, Friday into Saturday, Berlin
    idx.add_rule(
        Rule(
            "g-night",
            "role:vendor",
            "zone:plant-a",
            "vnc",
            schedule=parse_schedule("Fri 22:00-06:00 Europe/Berlin"),
        )
    )
    # a maintenance freeze on plant-a denies everything vnc on one day
    idx.add_rule(
        Rule(
            "d-freeze",
            "role:vendor",
            "zone:plant-a",
            "vnc",
            effect="deny",
            window=AbsoluteWindow(utc(2026, 3, 13, 23), utc(2026, 3, 14, 1)),
        )
    )
    # an asset in another timezone, granted in its local hours
    idx.add_rule(
        Rule(
            "g-chicago",
            "user:alice",
            "asset:hmi-chicago",
            "rdp",
            schedule=parse_schedule("Sun-Sat 08:00-09:00 America/Chicago"),
        )
    )
    # Berlin DST: 02:00-04:00 every Sunday, across spring-forward and fall-back
    idx.add_rule(
        Rule(
            "g-dst",
            "user:carol",
            "asset:plc-10",
            "ssh",
            schedule=parse_schedule("Sun 02:00-04:00 Europe/Berlin"),
        )
    )
    # dave may log in to line-2's assets as account maint; on 3 March zone plant-a is frozen
    idx.add_rule(Rule("g-dave-maint", "user:dave", "zone:line-2", "ssh:account=maint"))
    idx.add_rule(
        Rule(
            "d-dave-freeze",
            "user:dave",
            "zone:plant-a",
            "ssh",
            effect="deny",
            window=AbsoluteWindow(utc(2026, 3, 3), utc(2026, 3, 4)),
        )
    )
    return idx


CASES = [
    # who, asset, action, now, allowed
    # target accounts: an allow names the account; a deny of the base action binds them all
    ("user:dave", "asset:plc-10", "ssh:account=maint", utc(2026, 3, 2, 10, 0), True),
    ("user:dave", "asset:plc-10", "ssh", utc(2026, 3, 2, 10, 0), False),
    ("user:dave", "asset:plc-10", "ssh:account=root", utc(2026, 3, 2, 10, 0), False),
    ("user:dave", "asset:plc-10", "sftp-read:account=maint", utc(2026, 3, 2, 10, 0), False),
    ("user:dave", "asset:plc-10", "ssh:account=maint", utc(2026, 3, 3, 10, 0), False),  # frozen
    # weekday window: start inclusive, end exclusive (Berlin CET = UTC+1 in March)
    ("user:alice", "asset:plc-1", "ssh", utc(2026, 3, 2, 6, 0), True),
    ("user:alice", "asset:plc-1", "ssh", utc(2026, 3, 2, 5, 59, 59), False),
    ("user:alice", "asset:plc-1", "ssh", utc(2026, 3, 2, 16, 0), False),
    ("user:alice", "asset:plc-1", "ssh", utc(2026, 3, 2, 15, 59, 59), True),
    ("user:alice", "asset:plc-1", "ssh", utc(2026, 3, 7, 10, 0), False),  # Saturday
    # plc-1 vs plc-10: exact names, no prefix matching
    ("user:alice", "asset:plc-10", "ssh", utc(2026, 3, 2, 10, 0), False),
    ("user:bob", "asset:plc-10", "ssh", utc(2026, 3, 2, 10, 0), False),
    ("user:bob", "asset:plc-1", "ssh", utc(2026, 3, 2, 10, 0), True),
    # bob's absolute window: expired, not yet valid, other action
    ("user:bob", "asset:plc-1", "ssh", utc(2026, 3, 2, 12, 0), False),
    ("user:bob", "asset:plc-1", "ssh", utc(2026, 3, 2, 7, 59), False),
    ("user:bob", "asset:plc-1", "sftp-read", utc(2026, 3, 2, 10, 0), False),
    # overnight range belongs to Friday: Saturday 05:59 Berlin is inside, 06:00 is not
    ("user:bob", "asset:plc-10", "vnc", utc(2026, 3, 21, 4, 59), True),
    ("user:bob", "asset:plc-10", "vnc", utc(2026, 3, 21, 5, 0), False),
    ("user:bob", "asset:plc-10", "vnc", utc(2026, 3, 20, 20, 59), False),
    ("user:bob", "asset:plc-10", "vnc", utc(2026, 3, 20, 21, 0), True),
    # deny beats allow: the freeze covers Friday 13 March 23:00 - Saturday 01:00 UTC
    ("user:bob", "asset:plc-1", "vnc", utc(2026, 3, 13, 23, 30), False),
    ("user:bob", "asset:plc-1", "vnc", utc(2026, 3, 14, 1, 0), True),
    # nested roles and zones: carol is an engineer, engineers are vendors
    ("user:carol", "asset:plc-1", "vnc", utc(2026, 3, 14, 2, 0), True),
    ("user:dave", "asset:plc-1", "vnc", utc(2026, 3, 14, 2, 0), False),
    # asset in Chicago, 08:00-09:00 local: CST (UTC-6) before 8 March 2026, CDT (UTC-5) after
    ("user:alice", "asset:hmi-chicago", "rdp", utc(2026, 3, 6, 14, 0), True),
    ("user:alice", "asset:hmi-chicago", "rdp", utc(2026, 3, 6, 13, 59), False),
    ("user:alice", "asset:hmi-chicago", "rdp", utc(2026, 3, 9, 13, 0), True),
    ("user:alice", "asset:hmi-chicago", "rdp", utc(2026, 3, 9, 14, 0), False),
    # Chicago fall-back (1 Nov 2026): 08:00 CST is 14:00 UTC
    ("user:alice", "asset:hmi-chicago", "rdp", utc(2026, 11, 1, 13, 30), False),
    ("user:alice", "asset:hmi-chicago", "rdp", utc(2026, 11, 1, 14, 30), True),
    # Berlin spring-forward (29 March 2026, 02:00 -> 03:00): the range runs 01:00-02:00 UTC
    ("user:carol", "asset:plc-10", "ssh", utc(2026, 3, 29, 0, 59), False),
    ("user:carol", "asset:plc-10", "ssh", utc(2026, 3, 29, 1, 0), True),
    ("user:carol", "asset:plc-10", "ssh", utc(2026, 3, 29, 1, 59), True),
    ("user:carol", "asset:plc-10", "ssh", utc(2026, 3, 29, 2, 0), False),
    # Berlin fall-back (25 October 2026, 03:00 CEST -> 02:00 CET): 02:00 CEST = 00:00 UTC,
    # 04:00 CET = 03:00 UTC, so the range lasts three real hours
    ("user:carol", "asset:plc-10", "ssh", utc(2026, 10, 24, 23, 59), False),
    ("user:carol", "asset:plc-10", "ssh", utc(2026, 10, 25, 0, 0), True),
    ("user:carol", "asset:plc-10", "ssh", utc(2026, 10, 25, 2, 59), True),
    ("user:carol", "asset:plc-10", "ssh", utc(2026, 10, 25, 3, 0), False),
]


@pytest.mark.parametrize("who,asset,action,now,allowed", CASES)
def test_decisions(who: str, asset: str, action: str, now: datetime, allowed: bool) -> None:
    decision = site().authorize(who, asset, action, now)
    assert decision.allowed is allowed, decision.reason
    assert (decision.grant_id is not None) is allowed


@pytest.mark.parametrize("who,asset,action,now,allowed", CASES)
def test_casbin_enforcer_agrees(
    who: str, asset: str, action: str, now: datetime, allowed: bool
) -> None:
    assert enforcer_for(site(), now).enforce(who, asset, action) is allowed


def enforcer_for(idx: PolicyIndex, now: datetime) -> casbin.Enforcer:
    enforcer = casbin.Enforcer(str(MODEL))
    rules = {r.rule_id: r for r in idx.rules()}
    enforcer.add_function("windowActive", lambda rule_id: rules[rule_id].active(now))
    enforcer.add_function("accountBase", account_base)
    for r in rules.values():
        enforcer.add_policy(r.subject, r.obj, r.action, r.rule_id, r.effect)
    for member, group in idx.memberships():
        enforcer.add_grouping_policy(member, group)
    for item, zone in idx.containments():
        enforcer.add_named_grouping_policy("g2", item, zone)
    return enforcer


def test_valid_until_is_window_end_or_expiry_whichever_first() -> None:
    idx = PolicyIndex()
    idx.add_rule(
        Rule(
            "g1",
            "user:alice",
            "asset:plc-1",
            "ssh",
            schedule=parse_schedule("Mon-Fri 07:00-17:00 Europe/Berlin"),
            window=AbsoluteWindow(utc(2026, 3, 1), utc(2026, 3, 4, 12)),
        )
    )
    # Monday: the schedule ends first (17:00 CET = 16:00 UTC)
    assert idx.authorize("user:alice", "asset:plc-1", "ssh", utc(2026, 3, 2, 9)).valid_until == utc(
        2026, 3, 2, 16
    )
    # Wednesday: the grant expires at 12:00 UTC, before the schedule's end
    assert idx.authorize("user:alice", "asset:plc-1", "ssh", utc(2026, 3, 4, 9)).valid_until == utc(
        2026, 3, 4, 12
    )


def test_valid_until_skips_changes_that_do_not_change_the_decision() -> None:
    idx = PolicyIndex()
    idx.add_rule(
        Rule(
            "a",
            "user:alice",
            "asset:plc-1",
            "ssh",
            window=AbsoluteWindow(utc(2026, 1, 1, 8), utc(2026, 1, 1, 12)),
        )
    )
    idx.add_rule(
        Rule(
            "b",
            "user:alice",
            "asset:plc-1",
            "ssh",
            window=AbsoluteWindow(utc(2026, 1, 1, 10), utc(2026, 1, 1, 17)),
        )
    )
    decision = idx.authorize("user:alice", "asset:plc-1", "ssh", utc(2026, 1, 1, 9))
    assert decision.allowed and decision.valid_until == utc(2026, 1, 1, 17)
    # a refusal also says when it would change: when the first grant opens
    refused = idx.authorize("user:alice", "asset:plc-1", "ssh", utc(2026, 1, 1, 7))
    assert not refused.allowed and refused.valid_until == utc(2026, 1, 1, 8)
    assert "no grant in force" in refused.reason


def test_deny_window_ends_allowed_session_early() -> None:
    idx = PolicyIndex()
    idx.add_rule(Rule("a", "role:vendor", "zone:z", "ssh"))
    idx.add_rule(
        Rule(
            "d",
            "user:alice",
            "asset:plc-1",
            "ssh",
            effect="deny",
            window=AbsoluteWindow(utc(2026, 1, 1, 12), utc(2026, 1, 1, 13)),
        )
    )
    idx.add_inside("asset:plc-1", "zone:z")
    idx.add_member("user:alice", "role:vendor")
    decision = idx.authorize("user:alice", "asset:plc-1", "ssh", utc(2026, 1, 1, 11))
    assert decision.allowed and decision.valid_until == utc(2026, 1, 1, 12)
    during = idx.authorize("user:alice", "asset:plc-1", "ssh", utc(2026, 1, 1, 12, 30))
    assert not during.allowed and "denied by rule d" in during.reason
    assert idx.authorize("user:alice", "asset:plc-1", "ssh", utc(2026, 1, 2)).valid_until is None


def test_removing_a_rule_takes_effect() -> None:
    idx = site()
    assert idx.authorize("user:bob", "asset:plc-1", "ssh", utc(2026, 3, 2, 10)).allowed
    assert idx.remove_rule("g-bob") is not None
    assert not idx.authorize("user:bob", "asset:plc-1", "ssh", utc(2026, 3, 2, 10)).allowed


def test_membership_cycles_do_not_hang() -> None:
    idx = PolicyIndex()
    idx.add_member("role:a", "role:b")
    idx.add_member("role:b", "role:a")
    idx.add_inside("zone:x", "zone:y")
    idx.add_inside("zone:y", "zone:x")
    idx.add_rule(Rule("r", "role:b", "zone:y", "ssh"))
    assert idx.authorize("role:a", "zone:x", "ssh", utc(2026, 1, 1)).allowed


@pytest.mark.parametrize(
    "subject,obj,action",
    [
        ("alice", "asset:plc-1", "ssh"),
        ("user:Alice", "asset:plc-1", "ssh"),
        ("user:alice", "plc-1", "ssh"),
        ("user:alice", "user:bob", "ssh"),
        ("asset:x", "asset:plc-1", "ssh"),
        ("user:alice", "asset:plc-1", "telnet"),
        ("user:alice", "asset:plc-1", "tunnel:0"),
        ("user:alice", "asset:plc-1", "tunnel:70000"),
        ("user:alice", "asset:plc.*", "ssh"),
    ],
)
def test_malformed_rules_are_refused(subject: str, obj: str, action: str) -> None:
    with pytest.raises(PolicyNameError):
        Rule("r", subject, obj, action)


USERS = ["user:u1", "user:u2", "user:u3"]
GROUPS = ["role:r1", "role:r2", "org:o1"]
ASSETS = ["asset:a1", "asset:a10", "asset:a2"]
ZONES = ["zone:z1", "zone:z2"]
ACTIONS = ["ssh", "vnc", "tunnel:502", "ssh:account=maint", "ssh:account=root"]
BASE = utc(2026, 6, 1)


@st.composite
def policies(draw: st.DrawFn) -> tuple[PolicyIndex, datetime]:
    idx = PolicyIndex()
    for member in USERS + GROUPS[:2]:
        for group in draw(st.lists(st.sampled_from(GROUPS), max_size=2)):
            if group != member:
                idx.add_member(member, group)
    for item in ASSETS + ZONES:
        for zone in draw(st.lists(st.sampled_from(ZONES), max_size=2)):
            if zone != item:
                idx.add_inside(item, zone)
    for n in range(draw(st.integers(0, 12))):
        start = BASE + timedelta(hours=draw(st.integers(0, 48)))
        window = AbsoluteWindow(start, start + timedelta(hours=draw(st.integers(1, 24))))
        idx.add_rule(
            Rule(
                f"r{n}",
                draw(st.sampled_from(USERS + GROUPS)),
                draw(st.sampled_from(ASSETS + ZONES)),
                draw(st.sampled_from(ACTIONS)),
                effect=draw(st.sampled_from(["allow", "allow", "deny"])),
                window=draw(st.one_of(st.none(), st.just(window))),
            )
        )
    return idx, BASE + timedelta(minutes=draw(st.integers(0, 72 * 60)))


@settings(max_examples=150, deadline=None)
@given(policies(), st.sampled_from(USERS), st.sampled_from(ASSETS), st.sampled_from(ACTIONS))
def test_index_agrees_with_casbin_on_random_policies(
    policy: tuple[PolicyIndex, datetime], who: str, asset: str, action: str
) -> None:
    idx, now = policy
    decision = idx.authorize(who, asset, action, now)
    assert decision.allowed is enforcer_for(idx, now).enforce(who, asset, action)
    if decision.valid_until is not None:
        # the decision holds until valid_until and has changed exactly there
        assert decision.valid_until > now
        assert (
            idx.authorize(who, asset, action, decision.valid_until).allowed is not decision.allowed
        )
        just_before = decision.valid_until - timedelta(microseconds=1)
        assert idx.authorize(who, asset, action, just_before).allowed is decision.allowed


def test_only_rbac_makes_an_authorization() -> None:
    from rbac.policy import Authorization

    idx = site()
    decision = idx.authorize("user:bob", "asset:plc-1", "ssh", utc(2026, 3, 2, 10))
    proof = decision.authorization
    assert proof is not None and proof.grant_id == "g-bob"
    assert proof.valid_until == utc(2026, 3, 2, 12) and proof.obj == "asset:plc-1"
    assert idx.authorize("user:bob", "asset:plc-1", "ssh", utc(2026, 3, 3)).authorization is None
    with pytest.raises(PermissionError):
        Authorization("user:bob", "asset:plc-1", "ssh", "g-bob", utc(2026, 1, 1), None)
