"""Benchmark rbac.windows: contains() and next_change() against baselines run alongside.

Baselines, measured in the same process over the same instants:
* ``astimezone`` - converting the instant to the schedule's zone, the floor any check pays;
* ``wall_clock_contains`` - the obvious DST-unaware check on local weekday and time;
* ``minute_scan_next_change`` - finding the next change by calling contains() minute by
  minute, which is what a caller without next_change() would do. Its answers are compared
  with next_change() and the run fails if they differ.

Two instant sets, both fixed (no randomness) so runs are comparable: a stride of about 29 h,
where nearly every instant falls on a new local day (the per-day cache rarely helps), and
every minute of one week, like a live session re-checked each minute. The last printed
line is one JSON object with the figures (ns per call) and ratios.

Run from the repository root: ``python -m bench.rbac_windows [--n 20000]`` (or as a script
once the package is installed).
"""

from __future__ import annotations

import argparse
import json
import time as clock
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from rbac import windows
from rbac.windows import Schedule, Weekday, contains, next_change, parse_schedule

SCHEDULE_TEXT = "Mon-Fri 07:00-12:00,13:00-17:00; Fri 22:00-06:00 Europe/Berlin"
BASE = datetime(2024, 1, 1, tzinfo=UTC)
STRIDE = timedelta(seconds=104_729)  # a prime number of seconds: visits every hour and weekday


def instants(n: int) -> list[datetime]:
    return [BASE + i * STRIDE for i in range(n)]


def per_call_ns(fn: Callable[[datetime], object], points: list[datetime]) -> float:
    start = clock.perf_counter_ns()
    for point in points:
        fn(point)
    return (clock.perf_counter_ns() - start) / len(points)


def wall_clock_contains(schedule: Schedule, instant: datetime) -> bool:
    local = instant.astimezone(schedule.timezone)
    today, now = Weekday(local.weekday()), local.time().replace(tzinfo=None)
    yesterday = Weekday((today - 1) % 7)
    for r in schedule.ranges:
        if r.crosses_midnight:
            if (today in r.days and now >= r.start) or (yesterday in r.days and now < r.end):
                return True
        elif today in r.days and r.start <= now < r.end:
            return True
    return False


def minute_scan_next_change(schedule: Schedule, instant: datetime) -> datetime:
    inside = contains(schedule, instant)
    t = instant.replace(second=0, microsecond=0)
    while True:  # this schedule changes at least weekly, so the scan ends
        t += timedelta(minutes=1)
        if contains(schedule, t) is not inside:
            return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="instants per measurement")
    parser.add_argument("--scan-n", type=int, default=300, help="instants for the minute scan")
    args = parser.parse_args()

    schedule = parse_schedule(SCHEDULE_TEXT)
    points = instants(args.n)
    tz = schedule.timezone

    def contains_cold(p: datetime) -> bool:
        windows._day_occurrences.cache_clear()  # worst case: nothing resolved before
        return contains(schedule, p)

    # A live session re-checked every minute for a week: the common, cache-friendly case.
    minutes = [BASE + timedelta(minutes=i) for i in range(7 * 24 * 60)]
    figures = {
        "astimezone_ns": per_call_ns(lambda p: p.astimezone(tz), points),
        "wall_clock_contains_ns": per_call_ns(lambda p: wall_clock_contains(schedule, p), points),
        "contains_ns": per_call_ns(lambda p: contains(schedule, p), points),
        "contains_cold_cache_ns": per_call_ns(contains_cold, points),
        "contains_per_minute_ns": per_call_ns(lambda p: contains(schedule, p), minutes),
        "next_change_ns": per_call_ns(lambda p: next_change(schedule, p), points),
        "next_change_per_minute_ns": per_call_ns(lambda p: next_change(schedule, p), minutes),
    }
    scan_points = points[: args.scan_n]
    for point in scan_points:
        expected = minute_scan_next_change(schedule, point)
        if next_change(schedule, point) != expected:
            raise SystemExit(f"next_change disagrees with the minute scan at {point}")
    figures["minute_scan_next_change_ns"] = per_call_ns(
        lambda p: minute_scan_next_change(schedule, p), scan_points
    )

    result: dict[str, object] = {
        "bench": "rbac_windows",
        "schedule": SCHEDULE_TEXT,
        "n": args.n,
        "scan_n": args.scan_n,
        **{k: round(v, 1) for k, v in figures.items()},
        "contains_vs_astimezone": round(figures["contains_ns"] / figures["astimezone_ns"], 2),
        "contains_vs_wall_clock": round(
            figures["contains_ns"] / figures["wall_clock_contains_ns"], 2
        ),
        "contains_cold_vs_warm": round(
            figures["contains_cold_cache_ns"] / figures["contains_ns"], 2
        ),
        "contains_per_minute_vs_astimezone": round(
            figures["contains_per_minute_ns"] / figures["astimezone_ns"], 2
        ),
        "contains_per_minute_vs_wall_clock": round(
            figures["contains_per_minute_ns"] / figures["wall_clock_contains_ns"], 2
        ),
        "minute_scan_vs_next_change": round(
            figures["minute_scan_next_change_ns"] / figures["next_change_ns"], 1
        ),
        "next_change_agrees_with_scan": True,
    }
    for key, value in figures.items():
        print(f"{key:32} {value:12.1f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
