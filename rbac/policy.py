"""The policy index and ``authorize``: rbac/model.conf evaluated in microseconds.

A plain ``casbin.Enforcer`` walks every policy line per request (tens of milliseconds at
10,000 lines). The index answers the same question with a handful of dictionary lookups:
it expands the subject through ``g`` (user -> roles, organisations) and the asset through
``g2`` (asset -> zones -> parent zones), then looks up ``(subject, object, action)``. Deny
rules override allows. Tests check decisions against ``casbin.Enforcer`` on the model.

``authorize`` also returns ``valid_until``: the earliest instant at which the decision
changes, found by stepping through the change points of the matching rules' windows, so a
session can be ended exactly when its permission ends. Does not read the clock, store
anything, or know users' passwords.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from rbac.errors import PolicyNameError
from rbac.names import account_base, check_action, split_term
from rbac.windows import AbsoluteWindow, Schedule, contains, next_change

Effect = Literal["allow", "deny"]
# Stepping through change points stops here; the decision is then re-checked at that instant
# rather than trusted further (a fail-safe, never reached by real schedules within a day).
MAX_STEPS = 64


@dataclass(frozen=True)
class Rule:
    """One policy line (a grant or an explicit deny) with its time limits.

    ``schedule`` (recurring) and ``window`` (absolute ``[start, end)``) both apply when
    given; a rule with neither is in force at all times.
    """

    rule_id: str
    subject: str
    obj: str
    action: str
    effect: Effect = "allow"
    schedule: Schedule | None = None
    window: AbsoluteWindow | None = None

    def __post_init__(self) -> None:
        if split_term(self.subject)[0] not in ("user", "role", "org"):
            raise PolicyNameError(f"{self.subject!r} is not a subject")
        if split_term(self.obj)[0] not in ("asset", "zone"):
            raise PolicyNameError(f"{self.obj!r} is not an asset or zone")
        check_action(self.action)
        if self.effect not in ("allow", "deny"):
            raise PolicyNameError(f"effect must be allow or deny, not {self.effect!r}")

    def active(self, now: datetime) -> bool:
        if self.window is not None and not contains(self.window, now):
            return False
        return self.schedule is None or contains(self.schedule, now)

    def next_change(self, now: datetime) -> datetime | None:
        """An instant at or before the next flip of ``active`` (None: never changes)."""
        points = [
            p
            for p in (
                next_change(self.window, now) if self.window is not None else None,
                next_change(self.schedule, now) if self.schedule is not None else None,
            )
            if p is not None
        ]
        return min(points) if points else None


_PROOF = object()  # only this module holds it, so only rbac can construct an Authorization


@dataclass(frozen=True)
class Authorization:
    """Proof that ``subject`` may do ``action`` on ``obj`` from ``decided_at`` until
    ``valid_until``. Only ``rbac`` constructs one (``PolicyIndex.authorize``); code that
    connects to an asset demands one, so no path reaches an asset without a decision.
    """

    subject: str
    obj: str
    action: str
    grant_id: str
    decided_at: datetime
    valid_until: datetime | None
    _token: object = field(repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self._token is not _PROOF:
            raise PermissionError("an Authorization is only made by rbac.policy.authorize")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    grant_id: str | None = None
    valid_until: datetime | None = None  # None: this decision does not change by itself
    authorization: Authorization | None = None  # present exactly when allowed


def _closure(start: str, edges: dict[str, set[str]]) -> list[str]:
    """``start`` and everything reachable from it (cycles tolerated), in BFS order."""
    seen = {start}
    order = [start]
    for node in order:
        for parent in edges.get(node, ()):
            if parent not in seen:
                seen.add(parent)
                order.append(parent)
    return order


class PolicyIndex:
    """Rules and memberships, indexed for ``authorize``. Mutations are cheap and local."""

    def __init__(self) -> None:
        self._rules: dict[tuple[str, str, str], dict[str, Rule]] = defaultdict(dict)
        self._by_id: dict[str, Rule] = {}
        self._member_of: dict[str, set[str]] = defaultdict(set)  # g
        self._inside: dict[str, set[str]] = defaultdict(set)  # g2

    # -- changes -------------------------------------------------------------------------
    def add_rule(self, rule: Rule) -> None:
        self.remove_rule(rule.rule_id)
        self._by_id[rule.rule_id] = rule
        self._rules[(rule.subject, rule.obj, rule.action)][rule.rule_id] = rule

    def remove_rule(self, rule_id: str) -> Rule | None:
        rule = self._by_id.pop(rule_id, None)
        if rule is not None:
            bucket = self._rules[(rule.subject, rule.obj, rule.action)]
            bucket.pop(rule_id, None)
            if not bucket:
                del self._rules[(rule.subject, rule.obj, rule.action)]
        return rule

    def add_member(self, member: str, group: str) -> None:
        """g: ``user:alice`` belongs to ``role:vendor`` / ``org:acme``; roles may nest."""
        split_term(member)
        split_term(group)
        self._member_of[member].add(group)

    def remove_member(self, member: str, group: str) -> None:
        self._member_of[member].discard(group)

    def add_inside(self, item: str, zone: str) -> None:
        """g2: ``asset:plc-1`` is in ``zone:line-1``; zones may nest in zones."""
        split_term(item)
        if split_term(zone)[0] != "zone":
            raise PolicyNameError(f"{zone!r} is not a zone")
        self._inside[item].add(zone)

    def remove_inside(self, item: str, zone: str) -> None:
        self._inside[item].discard(zone)

    def rules(self) -> Iterable[Rule]:
        return self._by_id.values()

    def memberships(self) -> Iterable[tuple[str, str]]:
        return ((m, g) for m, groups in self._member_of.items() for g in groups)

    def groups_of(self, member: str) -> frozenset[str]:
        """Every role and organisation ``member`` belongs to, nested roles included."""
        return frozenset(_closure(member, self._member_of)[1:])

    def containments(self) -> Iterable[tuple[str, str]]:
        return ((i, z) for i, zones in self._inside.items() for z in zones)

    def __len__(self) -> int:
        return len(self._by_id)

    # -- decisions -----------------------------------------------------------------------
    def matching(self, subject: str, obj: str, action: str) -> list[Rule]:
        """The rules that bear on ``action``: its own, and for an account-qualified action
        (``ssh:account=root``) the denies of its base action too, so ``deny ssh`` freezes
        every account while an allow still has to name the account."""
        subjects = _closure(subject, self._member_of)
        objects = _closure(obj, self._inside)
        base = account_base(action)
        found: list[Rule] = []
        for s in subjects:
            for o in objects:
                bucket = self._rules.get((s, o, action))
                if bucket:
                    found.extend(bucket.values())
                base_bucket = self._rules.get((s, o, base)) if base else None
                if base_bucket:
                    found.extend(r for r in base_bucket.values() if r.effect == "deny")
        return found

    def authorize(self, subject: str, obj: str, action: str, now: datetime) -> Decision:
        """Decide ``subject`` doing ``action`` on ``obj`` at ``now`` (aware datetime)."""
        rules = self.matching(subject, obj, action)
        allowed, reason, grant = _evaluate(rules, now, subject, obj, action)
        until = _valid_until(rules, now, allowed)
        proof = None
        if allowed and grant is not None:
            proof = Authorization(subject, obj, action, grant, now, until, _token=_PROOF)
        return Decision(allowed, reason, grant, until, proof)

    def next_allowed(self, subject: str, obj: str, action: str, now: datetime) -> datetime | None:
        """The first instant at or after ``now`` at which ``authorize`` would allow, found by
        stepping through the matching rules' change points (``None``: not within
        ``MAX_STEPS`` changes, or never). A preview for people; sessions still ask
        ``authorize``."""
        rules = self.matching(subject, obj, action)
        if not any(r.effect == "allow" for r in rules):
            return None
        at = now
        for _ in range(MAX_STEPS):
            if _allowed_at(rules, at):
                return at
            changes = [c for c in (r.next_change(at) for r in rules) if c is not None]
            if not changes:
                return None
            at = min(changes)
        return None


def _evaluate(
    rules: list[Rule], now: datetime, subject: str, obj: str, action: str
) -> tuple[bool, str, str | None]:
    denies = [r for r in rules if r.effect == "deny" and r.active(now)]
    if denies:
        first = min(denies, key=lambda r: r.rule_id)
        return False, f"{subject} {action} {obj}: denied by rule {first.rule_id}", None
    allows = [r for r in rules if r.effect == "allow" and r.active(now)]
    if allows:
        # Name the grant that lasts longest, so a session is tied to its best justification.
        def lasts(rule: Rule) -> tuple[int, datetime]:
            end = rule.next_change(now)
            return (1, datetime.max.replace(tzinfo=now.tzinfo)) if end is None else (0, end)

        best = max(allows, key=lambda r: (lasts(r), r.rule_id))
        return True, f"{subject} {action} {obj}: allowed by grant {best.rule_id}", best.rule_id
    if any(r.effect == "allow" for r in rules):
        return False, f"{subject} {action} {obj}: no grant in force at this time", None
    return False, f"{subject} {action} {obj}: no grant", None


def _allowed_at(rules: list[Rule], at: datetime) -> bool:
    if any(r.effect == "deny" and r.active(at) for r in rules):
        return False
    return any(r.effect == "allow" and r.active(at) for r in rules)


def _valid_until(rules: list[Rule], now: datetime, allowed: bool) -> datetime | None:
    at = now
    for _ in range(MAX_STEPS):
        changes = [c for c in (r.next_change(at) for r in rules) if c is not None]
        if not changes:
            return None
        at = min(changes)
        if _allowed_at(rules, at) != allowed:
            return at
    return at
