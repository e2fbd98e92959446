"""Time windows: whether a grant is in force at an instant, and when that next changes.

Two kinds of window, both evaluated by pure functions:

* ``Schedule`` - recurring weekly ranges of local wall-clock time in one IANA timezone,
  written as ``"Mon-Fri 07:00-17:00 Europe/Berlin"`` (see ``parse_schedule``).
* ``AbsoluteWindow`` - one interval ``[start, end)`` between two aware instants, kept in UTC.

``contains(window, instant)`` says whether ``instant`` is inside; ``next_change(window,
instant)`` gives the first later instant at which that answer flips (``None`` if never), so a
session can be ended exactly when its permission ends.

Rules, in one place:

* Start inclusive, end exclusive. Every instant must be timezone-aware; naive datetimes are
  refused (``WindowError``) because guessing their zone is how access leaks across DST.
* A range whose end is not after its start crosses midnight and belongs to the day it starts:
  ``"Fri 22:00-06:00"`` runs from Friday 22:00 to Saturday 06:00. ``24:00`` may end a range;
  ``00:00-24:00`` is a whole day.
* A local time that does not exist (spring-forward gap) means the first instant after the gap,
  i.e. the transition itself, for starts and ends alike: Berlin ``02:30`` on the last Sunday of
  March is 03:00 CEST; a range lying wholly in the gap is empty that day.
* A local time that occurs twice (fall-back) means its first occurrence (``fold=0``), for
  starts and ends alike: Berlin ``02:30`` on the last Sunday of October is 02:30 CEST.
  So the mapping from wall time to instants never goes backwards, and ranges that touch or
  overlap on the wall clock still touch or overlap in real time.

Instants that come from outside (a request's start, a grant's limits, ``access check --at``)
must lie in ``[EARLIEST, LATEST)`` = [2000-01-01, 2200-01-01) UTC (``check_instant``): far
enough from the calendar's ends that adding any duration we allow, or a timezone offset, can
never overflow, so nothing stored from outside can break a later computation.

It does not read the clock (instants are passed in), store windows, or decide who holds one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import IntEnum
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rbac.errors import ScheduleError, WindowError

__all__ = [
    "EARLIEST",
    "LATEST",
    "AbsoluteWindow",
    "Schedule",
    "Weekday",
    "WeeklyRange",
    "Window",
    "check_instant",
    "contains",
    "format_schedule",
    "next_change",
    "parse_instant",
    "parse_schedule",
]


class Weekday(IntEnum):
    """Day of the week, numbered like ``date.weekday()``."""

    MON = 0
    TUE = 1
    WED = 2
    THU = 3
    FRI = 4
    SAT = 5
    SUN = 6

    @property
    def label(self) -> str:
        return self.name.title()


@dataclass(frozen=True, slots=True)
class WeeklyRange:
    """Local ``[start, end)`` on each of ``days``; an end not after the start is next day's.

    ``start == end`` is allowed only as 00:00-24:00 (both ``time(0)``), the whole day.
    """

    days: frozenset[Weekday]
    start: time
    end: time

    def __post_init__(self) -> None:
        if not self.days:
            raise WindowError("a weekly range needs at least one day")
        for value in (self.start, self.end):
            if value.tzinfo is not None:
                raise WindowError("range times are local wall-clock times; pass them naive")
            # Whole minutes keep schedules printable in the CLI syntax and round-trippable.
            if value.second or value.microsecond:
                raise WindowError("range times must be whole minutes")
        # "07:00-07:00" reads as nothing or as 24 hours; only a whole day is unambiguous.
        if self.start == self.end != time(0):
            raise WindowError("empty range; use 00:00-24:00 for a whole day")
        object.__setattr__(self, "days", frozenset(Weekday(d) for d in self.days))

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start


_DayPlan = tuple[tuple[time, time, bool], ...]


@dataclass(frozen=True, slots=True)
class Schedule:
    """Recurring weekly ranges in one timezone; open whenever any range is."""

    ranges: tuple[WeeklyRange, ...]
    timezone: ZoneInfo
    # Derived in __post_init__; excluded from equality and repr.
    # Per weekday, (start, end, crosses midnight) sorted by start: a small hashable cache key.
    _plans: tuple[_DayPlan, ...] = field(init=False, repr=False, compare=False)
    _always: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.ranges:
            raise WindowError("a schedule needs at least one range")
        # Canonical order makes equal schedules compare equal however they were written.
        canonical = tuple(sorted(set(self.ranges), key=_range_key))
        object.__setattr__(self, "ranges", canonical)
        plans = tuple(
            tuple(sorted((r.start, r.end, r.crosses_midnight) for r in canonical if day in r.days))
            for day in Weekday
        )
        object.__setattr__(self, "_plans", plans)
        object.__setattr__(self, "_always", _covers_whole_week(canonical))


@dataclass(frozen=True, slots=True)
class AbsoluteWindow:
    """One interval ``[start, end)`` between aware instants, normalised to UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        start = _as_utc(self.start, "window start")
        end = _as_utc(self.end, "window end")
        if end < start:
            raise WindowError("window ends before it starts", f"start={start} end={end}")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)


Window = Schedule | AbsoluteWindow


def contains(window: Window, instant: datetime) -> bool:
    """Whether ``instant`` (aware) lies inside ``window``; starts inclusive, ends exclusive."""
    at = _as_utc(instant, "instant")
    if isinstance(window, AbsoluteWindow):
        return window.start <= at < window.end
    if window._always:
        return True
    day = _local_day(window, at)
    # A range lasts at most one local day, so only yesterday's and today's can reach `at`.
    return any(start <= at < end for start, end in _occurrences(window, day - _ONE_DAY, day))


def next_change(window: Window, instant: datetime) -> datetime | None:
    """First instant after ``instant`` at which ``contains`` changes value, or ``None``.

    The result is in UTC. ``contains`` is constant on ``[instant, result)`` and differs at
    ``result``. ``None`` means it never changes: the window is over, empty, or always open.
    """
    at = _as_utc(instant, "instant")
    if isinstance(window, AbsoluteWindow):
        if window.start == window.end or at >= window.end:
            return None
        return window.start if at < window.start else window.end
    if window._always:
        return None
    return _schedule_next_change(window, at)


def parse_schedule(text: str) -> Schedule:
    """Parse ``"<days> <ranges>[; <days> <ranges>...] <timezone>"`` into a ``Schedule``.

    Days: ``Mon``, ``Mon-Fri``, ``Sat-Mon`` (wraps over the week end), ``Mon,Wed,Fri`` or a
    mix such as ``Mon-Wed,Fri``. Ranges: ``HH:MM-HH:MM``, several joined by commas. Clauses
    separated by ``;`` share the timezone, which comes last and must be an IANA name.
    Example: ``"Mon-Fri 07:00-12:00,13:00-17:00; Sat 08:00-12:00 Europe/Berlin"``.
    Raises ``ScheduleError`` naming the part that is wrong.
    """
    if len(text) > _MAX_TEXT:
        raise ScheduleError(f"schedule text is longer than {_MAX_TEXT} characters")
    parts = text.strip().rsplit(None, 1)
    if not parts:
        raise ScheduleError(f"empty schedule; expected for example {_EXAMPLE!r}")
    if len(parts) == 1:
        raise ScheduleError(f"{parts[0]!r} is not a schedule; expected for example {_EXAMPLE!r}")
    body, tz_text = parts
    timezone = _parse_timezone(tz_text)
    # Let people write "Mon - Fri" or "07:00-12:00, 13:00-17:00".
    body = re.sub(r"\s*([,-])\s*", r"\1", body)
    clauses = body.split(";")
    if len(clauses) > _MAX_CLAUSES:
        raise ScheduleError(f"more than {_MAX_CLAUSES} clauses")
    ranges: list[WeeklyRange] = []
    for clause in clauses:
        tokens = clause.split()
        if len(tokens) != 2:
            shown = clause.strip() or "(empty)"
            raise ScheduleError(f"expected '<days> <HH:MM-HH:MM>' but got {shown!r}")
        days = _parse_days(tokens[0])
        ranges.extend(WeeklyRange(days, start, end) for start, end in _parse_ranges(tokens[1]))
    return Schedule(tuple(ranges), timezone)


def format_schedule(schedule: Schedule) -> str:
    """The canonical text of ``schedule``; ``parse_schedule`` reads it back to an equal one."""
    clauses: list[str] = []
    current_days: frozenset[Weekday] | None = None
    for r in schedule.ranges:
        end = "24:00" if r.end == time(0) else r.end.strftime("%H:%M")
        text = f"{r.start.strftime('%H:%M')}-{end}"
        if r.days == current_days:
            clauses[-1] += f",{text}"
        else:
            clauses.append(f"{_format_days(r.days)} {text}")
            current_days = r.days
    return f"{'; '.join(clauses)} {schedule.timezone.key}"


EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def check_instant(value: datetime, what: str) -> datetime:
    """``value`` in UTC if it is aware and in ``[EARLIEST, LATEST)``; else ``WindowError``."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise WindowError(f"{what} has no UTC offset; add Z or +HH:MM", repr(value))
    try:
        at = value.astimezone(UTC)
    except OverflowError:  # an offset pushed it past year 1 or 9999
        at = None
    if at is None or not EARLIEST <= at < LATEST:
        raise WindowError(
            f"{what} must be from {EARLIEST:%Y-%m-%d} to before {LATEST:%Y-%m-%d} (UTC)",
            repr(value),
        )
    return at


def parse_instant(text: str, what: str = "instant") -> datetime:
    """Parse an ISO 8601 instant that carries its offset (``Z`` or ``+01:00``); returns UTC.

    The instant must lie in the documented range (``check_instant``).
    """
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise WindowError(f"{text!r} is not an ISO 8601 date and time") from None
    if value.tzinfo is None:
        raise WindowError(f"{text!r} has no UTC offset; add Z or +HH:MM")
    return check_instant(value, what)


# --- schedule evaluation -------------------------------------------------------------------

_ONE_DAY = timedelta(days=1)
# A non-always schedule has a gap every week; DST can hide at most one week's, so 5 weeks is
# far more than enough. Past it we fail closed (see _schedule_next_change).
_HORIZON = timedelta(days=35)


def _schedule_next_change(schedule: Schedule, at: datetime) -> datetime | None:
    day = _local_day(schedule, at)
    covered_until: datetime | None = None  # end of the open stretch containing `at`, if any
    for start, end in _occurrences(schedule, day - _ONE_DAY, day + _HORIZON):
        if end <= start:
            continue  # collapsed inside a DST gap: never open
        if start <= at:
            if end > at:
                covered_until = end if covered_until is None else max(covered_until, end)
            continue
        if covered_until is None:
            return start  # closed now; occurrences come in start order, so this is the first
        if start > covered_until:
            return covered_until
        covered_until = max(covered_until, end)  # touches or overlaps: still open
    # Only reachable in pathological zones. Ending an open stretch early makes the caller
    # re-check (fail closed); claiming "never" for it would leave a session running forever.
    return covered_until


def _local_day(schedule: Schedule, at: datetime) -> date:
    """The local date of ``at``, refusing instants too close to the calendar's ends to scan."""
    try:
        day = at.astimezone(schedule.timezone).date()
        if day - _ONE_DAY >= date.min and day + _HORIZON + _ONE_DAY <= date.max:
            return day
    except OverflowError:
        pass
    raise WindowError("instant is out of range for a schedule", repr(at))


def _occurrences(
    schedule: Schedule, first: date, last: date
) -> Iterator[tuple[datetime, datetime]]:
    """UTC ``(start, end)`` of every range starting on a local date in ``[first, last]``.

    Yielded in order of start: dates ascend, ranges within a day are sorted by start time, and
    the wall-time-to-instant mapping never goes backwards.
    """
    day = first
    while day <= last:
        plan = schedule._plans[day.weekday()]
        if plan:
            yield from _day_occurrences(day, plan, schedule.timezone)
        day += _ONE_DAY


@lru_cache(maxsize=4096)
def _day_occurrences(
    day: date, plan: _DayPlan, tz: ZoneInfo
) -> tuple[tuple[datetime, datetime], ...]:
    """UTC ``(start, end)`` of each planned range starting on local ``day``, in plan order.

    Cached because a session is re-checked against the same day's ranges again and again;
    the key holds only values (no object identity), so a hit can never be another schedule's.
    """
    return tuple(
        (_resolve(day, start, tz), _resolve(day + _ONE_DAY if crosses else day, end, tz))
        for start, end, crosses in plan
    )


def _resolve(day: date, wall: time, tz: ZoneInfo) -> datetime:
    """The UTC instant for local ``day`` + ``wall`` under the module's DST rules."""
    local = datetime.combine(day, wall, tzinfo=tz)
    first = local.astimezone(UTC)  # fold=0: the first occurrence if the time is ambiguous
    # Same tzinfo on both sides, so == compares wall-clock fields: did the time exist?
    if first.astimezone(tz) == local:
        return first
    # In a gap, fold=1 applies the offset after the transition, giving an instant before it;
    # fold=0 (above) applies the one before, giving an instant after it.
    return _transition_between(local.replace(fold=1).astimezone(UTC), first, tz)


def _transition_between(before: datetime, after: datetime, tz: ZoneInfo) -> datetime:
    """The instant in ``(before, after]`` where ``tz`` changes offset (binary search).

    zoneinfo does not expose transitions; they fall on whole seconds, so we search seconds.
    """
    old = before.astimezone(tz).utcoffset()
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    lo = (before - epoch) // timedelta(seconds=1)  # floor: still the old offset
    hi = -((epoch - after) // timedelta(seconds=1))  # ceil: already the new offset
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (epoch + timedelta(seconds=mid)).astimezone(tz).utcoffset() == old:
            lo = mid
        else:
            hi = mid
    return epoch + timedelta(seconds=hi)


_DAY_MINUTES = 24 * 60
_WEEK_MINUTES = 7 * _DAY_MINUTES


def _covers_whole_week(ranges: tuple[WeeklyRange, ...]) -> bool:
    """Whether the ranges cover every wall-clock minute of the week.

    If they do, they cover every instant too: the wall-to-instant mapping is monotonic and
    each range ends where (or after) the next one starts, on the same wall clock.
    """
    spans: list[tuple[int, int]] = []
    for r in ranges:
        start = r.start.hour * 60 + r.start.minute
        end = r.end.hour * 60 + r.end.minute + (_DAY_MINUTES if r.crosses_midnight else 0)
        for day in r.days:
            a, b = day * _DAY_MINUTES + start, day * _DAY_MINUTES + end
            spans.append((a, min(b, _WEEK_MINUTES)))
            if b > _WEEK_MINUTES:  # Sunday night runs into Monday morning
                spans.append((0, b - _WEEK_MINUTES))
    reach = 0
    for a, b in sorted(spans):
        if a > reach:
            return False
        reach = max(reach, b)
    return reach >= _WEEK_MINUTES


def _as_utc(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise WindowError(f"{what} is a naive datetime; pass a timezone-aware one", repr(value))
    return value.astimezone(UTC)


def _range_key(r: WeeklyRange) -> tuple[tuple[int, ...], time, time]:
    return tuple(sorted(r.days)), r.start, r.end


# --- schedule text -------------------------------------------------------------------------

_MAX_TEXT = 1000
_MAX_CLAUSES = 16
_MAX_RANGES_PER_CLAUSE = 16
_EXAMPLE = "Mon-Fri 07:00-17:00 Europe/Berlin"
_DAY_NAMES = {day.label.lower(): day for day in Weekday}
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})")
_TZ_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+)*")


def _parse_timezone(text: str) -> ZoneInfo:
    if _CLOCK.match(text):
        raise ScheduleError(f"missing timezone after {text!r}; expected for example {_EXAMPLE!r}")
    # The pattern keeps paths (/etc/..., ..) away from the tz database lookup.
    if _TZ_KEY.fullmatch(text):
        try:
            return ZoneInfo(text)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    raise ScheduleError(f"unknown timezone {text!r}; use an IANA name such as Europe/Berlin")


def _parse_days(text: str) -> frozenset[Weekday]:
    days: set[Weekday] = set()
    for item in text.split(","):
        bounds = item.split("-")
        if len(bounds) > 2:
            raise ScheduleError(f"bad day range {item!r}; expected for example Mon-Fri")
        first, last = _parse_day(bounds[0]), _parse_day(bounds[-1])
        # Walk forward so that Sat-Mon wraps over the week end to Sat, Sun, Mon.
        for offset in range((last - first) % 7 + 1):
            days.add(Weekday((first + offset) % 7))
    return frozenset(days)


def _parse_day(text: str) -> Weekday:
    day = _DAY_NAMES.get(text.lower())
    if day is None:
        raise ScheduleError(f"unknown day {text!r}; use Mon, Tue, Wed, Thu, Fri, Sat or Sun")
    return day


def _parse_ranges(text: str) -> list[tuple[time, time]]:
    items = text.split(",")
    if len(items) > _MAX_RANGES_PER_CLAUSE:
        raise ScheduleError(f"more than {_MAX_RANGES_PER_CLAUSE} time ranges in {text!r}")
    ranges: list[tuple[time, time]] = []
    for item in items:
        bounds = item.split("-")
        if len(bounds) != 2:
            raise ScheduleError(f"bad time range {item!r}; expected HH:MM-HH:MM")
        start, end = _parse_clock(bounds[0], may_be_24=False), _parse_clock(bounds[1])
        if start == end and bounds[1] != "24:00":
            raise ScheduleError(f"empty time range {item!r}; use 00:00-24:00 for a whole day")
        ranges.append((start, end))
    return ranges


def _parse_clock(text: str, *, may_be_24: bool = True) -> time:
    match = _CLOCK.fullmatch(text)
    if match is None:
        raise ScheduleError(f"bad time {text!r}; expected HH:MM")
    hour, minute = int(match[1]), int(match[2])
    if may_be_24 and hour == 24 and minute == 0:
        return time(0)  # end of day: an end at 00:00 is taken as the next day's
    if hour > 23 or minute > 59:
        hint = " (24:00 may only end a range)" if hour == 24 else ""
        raise ScheduleError(f"bad time {text!r}; hours run 00-23 and minutes 00-59{hint}")
    return time(hour, minute)


def _format_days(days: frozenset[Weekday]) -> str:
    runs: list[list[Weekday]] = []
    for day in sorted(days):
        if runs and runs[-1][-1] + 1 == day:
            runs[-1].append(day)
        else:
            runs.append([day])
    return ",".join(
        run[0].label if len(run) == 1 else f"{run[0].label}-{run[-1].label}" for run in runs
    )


def upcoming(
    window: Window, instant: datetime, count: int
) -> list[tuple[datetime, datetime | None]]:
    """The next ``count`` stretches during which ``window`` is open, from ``instant`` on
    (one open at ``instant`` comes first, starting there), found with ``contains`` and
    ``next_change`` as the authorizer does: (start, end) in UTC, end None when it stays open."""
    out: list[tuple[datetime, datetime | None]] = []
    at: datetime | None = _as_utc(instant, "instant")
    if at is not None and not contains(window, at):
        at = next_change(window, at)
    while at is not None and len(out) < count:
        end = next_change(window, at)
        out.append((at, end))
        at = next_change(window, end) if end is not None else None
    return out
