"""authorize() latency at 10,000 and 100,000 grants, against a plain casbin.Enforcer.

Policy: 2,000 users in 20 organisations and 5 roles, 1,000 assets in 50 zones nested in 5
sites; grants mix user/org/role subjects and asset/zone objects, a third with weekday
schedules, a third with absolute windows, 2% explicit denies. Decisions are drawn from
(user, asset, action) with a deterministic generator (benchmark input, not security code).
The plain enforcer evaluates the same model.conf on the same policy in the same process.
The last line printed is one JSON object with the figures and ratios.
"""

from __future__ import annotations

import json
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from random import Random

import casbin

from rbac.policy import PolicyIndex, Rule
from rbac.windows import AbsoluteWindow, parse_schedule

MODEL = Path(__file__).resolve().parents[1] / "rbac" / "model.conf"
NOW = datetime(2026, 3, 4, 10, 30, tzinfo=UTC)
ACTIONS = ["ssh", "sftp-read", "vnc", "rdp", "tunnel:502"]
SCHEDULES = [
    parse_schedule(s)
    for s in (
        "Mon-Fri 07:00-17:00 Europe/Berlin",
        "Mon-Sun 00:00-24:00 UTC",
        "Fri 22:00-06:00 America/Chicago",
        "Mon,Wed,Fri 06:00-18:00 Asia/Tokyo",
    )
]


def build(grants: int, seed: int = 7) -> PolicyIndex:
    rng = Random(seed)  # noqa: S311 - deterministic benchmark data
    idx = PolicyIndex()
    for z in range(50):
        idx.add_inside(f"zone:z{z}", f"zone:site{z % 5}")
    for a in range(1000):
        idx.add_inside(f"asset:a{a}", f"zone:z{a % 50}")
    for u in range(2000):
        idx.add_member(f"user:u{u}", f"org:o{u % 20}")
        idx.add_member(f"user:u{u}", f"role:r{u % 5}")
    for g in range(grants):
        kind = rng.random()
        subject = (
            f"user:u{rng.randrange(2000)}"
            if kind < 0.6
            else f"org:o{rng.randrange(20)}"
            if kind < 0.9
            else f"role:r{rng.randrange(5)}"
        )
        obj = (
            f"asset:a{rng.randrange(1000)}" if rng.random() < 0.8 else f"zone:z{rng.randrange(50)}"
        )
        shape = rng.random()
        schedule = rng.choice(SCHEDULES) if shape < 0.33 else None
        start = NOW + timedelta(hours=rng.randrange(-72, 72))
        window = AbsoluteWindow(start, start + timedelta(hours=8)) if 0.33 <= shape < 0.66 else None
        effect = "deny" if rng.random() < 0.02 else "allow"
        idx.add_rule(
            Rule(
                f"g{g}",
                subject,
                obj,
                rng.choice(ACTIONS),
                effect=effect,  # type: ignore[arg-type]
                schedule=schedule,
                window=window,
            )
        )
    return idx


def requests(n: int, seed: int = 11) -> list[tuple[str, str, str]]:
    rng = Random(seed)  # noqa: S311
    return [
        (f"user:u{rng.randrange(2000)}", f"asset:a{rng.randrange(1000)}", rng.choice(ACTIONS))
        for _ in range(n)
    ]


def enforcer(idx: PolicyIndex) -> casbin.Enforcer:
    e = casbin.Enforcer(str(MODEL))
    rules = {r.rule_id: r for r in idx.rules()}
    e.add_function("windowActive", lambda rule_id: rules[rule_id].active(NOW))
    e.add_policies([[r.subject, r.obj, r.action, r.rule_id, r.effect] for r in rules.values()])
    e.add_grouping_policies([list(m) for m in idx.memberships()])
    e.add_named_grouping_policies("g2", [list(c) for c in idx.containments()])
    return e


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def time_index(idx: PolicyIndex, reqs: list[tuple[str, str, str]]) -> tuple[list[float], int]:
    samples: list[float] = []
    allowed = 0
    for who, asset, action in reqs:
        t0 = time.perf_counter()
        decision = idx.authorize(who, asset, action, NOW)
        samples.append((time.perf_counter() - t0) * 1000)
        allowed += decision.allowed
    return samples, allowed


def time_casbin(e: casbin.Enforcer, reqs: list[tuple[str, str, str]]) -> list[float]:
    samples = []
    for who, asset, action in reqs:
        t0 = time.perf_counter()
        e.enforce(who, asset, action)
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


def main() -> None:
    result: dict[str, object] = {"bench": "rbac_decision"}
    for grants, casbin_samples in ((10_000, 40), (100_000, 5)):
        idx = build(grants)
        reqs = requests(20_000)
        time_index(idx, reqs[:2000])  # warm caches of schedule resolution
        ours, allowed = time_index(idx, reqs)
        # Agreement on the casbin sample, so the ratio compares equal answers.
        e = enforcer(idx)
        sample = reqs[:casbin_samples]
        base = time_casbin(e, sample)
        agree = all(e.enforce(*r) == idx.authorize(*r, NOW).allowed for r in sample)
        key = f"g{grants // 1000}k"
        result[key] = {
            "index_p50_ms": round(statistics.median(ours), 4),
            "index_p99_ms": round(percentile(ours, 0.99), 4),
            "allowed_share": round(allowed / len(reqs), 3),
            "casbin_p50_ms": round(statistics.median(base), 2),
            "casbin_samples": len(base),
            "agree_with_casbin": agree,
            "ratio_casbin_over_index_p50": round(statistics.median(base) / statistics.median(ours)),
        }
        print(
            f"{grants} grants: index p50 {statistics.median(ours):.4f} ms, p99 "
            f"{percentile(ours, 0.99):.4f} ms; casbin p50 {statistics.median(base):.1f} ms"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
