"""Tables for rbac.windows: edges, DST in Berlin / New York / Chicago, overnight, wrap, parsing."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rbac.errors import ScheduleError, WindowError
from rbac.windows import (
    AbsoluteWindow,
    Schedule,
    Weekday,
    WeeklyRange,
    Window,
    contains,
    format_schedule,
    next_change,
    parse_instant,
    parse_schedule,
    upcoming,
)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


S = parse_schedule
WORKDAY_BERLIN = S("Mon-Fri 07:00-17:00 Europe/Berlin")
FRI_NIGHT = S("Fri 22:00-06:00 Europe/Berlin")
WEEKEND_WRAP = S("Sat-Mon 09:00-17:00 UTC")
SPLIT_DAY = S("Mon-Fri 07:00-12:00,13:00-17:00; Sat 08:00-12:00 UTC")
WHOLE_MONDAY = S("Mon 00:00-24:00 UTC")
MAINTENANCE = AbsoluteWindow(utc("2024-06-03 08:00"), utc("2024-06-03 10:00"))


@pytest.mark.parametrize(
    "window,now,expected",
    [
        # Start inclusive, end exclusive (Mon 3 June 2024, CEST = UTC+2).
        (WORKDAY_BERLIN, utc("2024-06-03 04:59:59.999999"), False),
        (WORKDAY_BERLIN, utc("2024-06-03 05:00"), True),
        (WORKDAY_BERLIN, utc("2024-06-03 14:59:59.999999"), True),
        (WORKDAY_BERLIN, utc("2024-06-03 15:00"), False),
        (WORKDAY_BERLIN, utc("2024-06-08 10:00"), False),  # Saturday
        (WORKDAY_BERLIN, utc("2024-03-25 06:00"), True),  # CET: 07:00 local = 06:00 UTC
        (WORKDAY_BERLIN, utc("2024-03-25 05:30"), False),
        (MAINTENANCE, utc("2024-06-03 07:59:59"), False),
        (MAINTENANCE, utc("2024-06-03 08:00"), True),
        (MAINTENANCE, utc("2024-06-03 09:59:59.999999"), True),
        (MAINTENANCE, utc("2024-06-03 10:00"), False),
        (WHOLE_MONDAY, utc("2024-06-03 00:00"), True),
        (WHOLE_MONDAY, utc("2024-06-03 23:59:59.999999"), True),
        (WHOLE_MONDAY, utc("2024-06-04 00:00"), False),
        (SPLIT_DAY, utc("2024-06-03 12:30"), False),
        (SPLIT_DAY, utc("2024-06-03 13:00"), True),
        (SPLIT_DAY, utc("2024-06-08 11:59"), True),
        (SPLIT_DAY, utc("2024-06-09 09:00"), False),
        # Over midnight: Friday's range runs into Saturday morning, Friday morning is not in it.
        (FRI_NIGHT, utc("2024-06-07 19:59:59"), False),
        (FRI_NIGHT, utc("2024-06-07 20:00"), True),  # Fri 22:00 CEST
        (FRI_NIGHT, utc("2024-06-08 03:59:59"), True),  # Sat 05:59:59 CEST
        (FRI_NIGHT, utc("2024-06-08 04:00"), False),  # Sat 06:00 CEST
        (FRI_NIGHT, utc("2024-06-07 03:00"), False),  # Fri 05:00: Thursday has no range
        (FRI_NIGHT, utc("2024-06-08 20:30"), False),  # Sat 22:30: Saturday has no range
        # Weekday wrap Sat-Mon.
        (WEEKEND_WRAP, utc("2024-06-08 09:00"), True),
        (WEEKEND_WRAP, utc("2024-06-09 16:59"), True),
        (WEEKEND_WRAP, utc("2024-06-10 10:00"), True),
        (WEEKEND_WRAP, utc("2024-06-11 10:00"), False),
        (WEEKEND_WRAP, utc("2024-06-07 10:00"), False),
        # Berlin spring forward, Sun 31 Mar 2024 01:00 UTC: 02:00 CET -> 03:00 CEST.
        # A start in the gap starts at the first instant after it.
        (S("Sun 02:30-04:00 Europe/Berlin"), utc("2024-03-31 00:59:59"), False),
        (S("Sun 02:30-04:00 Europe/Berlin"), utc("2024-03-31 01:00"), True),
        (S("Sun 02:30-04:00 Europe/Berlin"), utc("2024-03-31 01:59:59"), True),
        (S("Sun 02:30-04:00 Europe/Berlin"), utc("2024-03-31 02:00"), False),
        # An end in the gap ends at the first instant after it.
        (S("Sun 01:00-02:30 Europe/Berlin"), utc("2024-03-31 00:59:59"), True),
        (S("Sun 01:00-02:30 Europe/Berlin"), utc("2024-03-31 01:00"), False),
        # A range wholly inside the gap is empty that day.
        (S("Sun 02:10-02:50 Europe/Berlin"), utc("2024-03-31 01:00"), False),
        (S("Sun 02:10-02:50 Europe/Berlin"), utc("2024-04-07 00:20"), True),
        # Overnight across spring forward: Sat 22:00 CET to Sun 06:00 CEST is 7 hours.
        (S("Sat 22:00-06:00 Europe/Berlin"), utc("2024-03-30 21:00"), True),
        (S("Sat 22:00-06:00 Europe/Berlin"), utc("2024-03-31 03:59:59"), True),
        (S("Sat 22:00-06:00 Europe/Berlin"), utc("2024-03-31 04:00"), False),
        # Berlin fall back, Sun 27 Oct 2024 01:00 UTC: 03:00 CEST -> 02:00 CET.
        # Ambiguous times mean their first occurrence (CEST), for starts and ends.
        (S("Sun 02:30-05:00 Europe/Berlin"), utc("2024-10-27 00:29:59"), False),
        (S("Sun 02:30-05:00 Europe/Berlin"), utc("2024-10-27 00:30"), True),
        (S("Sun 02:30-05:00 Europe/Berlin"), utc("2024-10-27 03:59:59"), True),  # 04:59:59 CET
        (S("Sun 02:30-05:00 Europe/Berlin"), utc("2024-10-27 04:00"), False),
        (S("Sun 01:00-02:30 Europe/Berlin"), utc("2024-10-26 23:00"), True),
        (S("Sun 01:00-02:30 Europe/Berlin"), utc("2024-10-27 00:29:59"), True),
        (S("Sun 01:00-02:30 Europe/Berlin"), utc("2024-10-27 00:30"), False),
        (S("Sun 01:00-02:30 Europe/Berlin"), utc("2024-10-27 01:15"), False),  # 02:15 again
        # New York spring forward, Sun 10 Mar 2024 07:00 UTC: 02:00 EST -> 03:00 EDT.
        (S("Sun 02:30-03:30 America/New_York"), utc("2024-03-10 06:59:59"), False),
        (S("Sun 02:30-03:30 America/New_York"), utc("2024-03-10 07:00"), True),
        (S("Sun 02:30-03:30 America/New_York"), utc("2024-03-10 07:29:59"), True),
        (S("Sun 02:30-03:30 America/New_York"), utc("2024-03-10 07:30"), False),
        # New York fall back, Sun 3 Nov 2024 06:00 UTC: 02:00 EDT -> 01:00 EST.
        (S("Sun 01:30-03:00 America/New_York"), utc("2024-11-03 05:29:59"), False),
        (S("Sun 01:30-03:00 America/New_York"), utc("2024-11-03 05:30"), True),  # 01:30 EDT
        (S("Sun 01:30-03:00 America/New_York"), utc("2024-11-03 07:59:59"), True),
        (S("Sun 01:30-03:00 America/New_York"), utc("2024-11-03 08:00"), False),  # 03:00 EST
        (S("Sat 23:00-01:30 America/New_York"), utc("2024-11-03 03:00"), True),
        (S("Sat 23:00-01:30 America/New_York"), utc("2024-11-03 05:29:59"), True),
        (S("Sat 23:00-01:30 America/New_York"), utc("2024-11-03 05:30"), False),
        (S("Sat 23:00-01:30 America/New_York"), utc("2024-11-03 06:10"), False),  # 01:10 EST
        # Chicago: the same local hours are different UTC hours either side of the change.
        (S("Mon-Fri 08:00-17:00 America/Chicago"), utc("2024-03-08 14:00"), True),  # CST
        (S("Mon-Fri 08:00-17:00 America/Chicago"), utc("2024-03-08 13:59"), False),
        (S("Mon-Fri 08:00-17:00 America/Chicago"), utc("2024-03-11 13:00"), True),  # CDT
        (S("Mon-Fri 08:00-17:00 America/Chicago"), utc("2024-03-11 22:00"), False),
        (S("Sun 02:00-02:30 America/Chicago"), utc("2024-03-10 08:00"), False),  # in the gap
        (S("Sun 01:00-02:00 America/Chicago"), utc("2024-11-03 06:59:59"), True),
        (S("Sun 01:00-02:00 America/Chicago"), utc("2024-11-03 07:00"), True),  # 01:00 CST
        (S("Sun 01:00-02:00 America/Chicago"), utc("2024-11-03 07:59:59"), True),
        (S("Sun 01:00-02:00 America/Chicago"), utc("2024-11-03 08:00"), False),
        # The instant's own offset does not matter, only the instant.
        (WORKDAY_BERLIN, datetime(2024, 6, 3, 7, 0, tzinfo=ZoneInfo("Europe/Berlin")), True),
        (WORKDAY_BERLIN, datetime(2024, 6, 3, 0, 59, tzinfo=timezone(timedelta(hours=-6))), True),
    ],
)
def test_contains(window: Window, now: datetime, expected: bool) -> None:
    assert contains(window, now) is expected


@pytest.mark.parametrize(
    "window,now,expected",
    [
        (WORKDAY_BERLIN, utc("2024-06-03 10:00"), utc("2024-06-03 15:00")),
        (WORKDAY_BERLIN, utc("2024-06-03 15:00"), utc("2024-06-04 05:00")),
        (WORKDAY_BERLIN, utc("2024-06-07 15:00"), utc("2024-06-10 05:00")),  # over the weekend
        (WORKDAY_BERLIN, utc("2024-03-29 16:00"), utc("2024-04-01 05:00")),  # over spring fwd
        (FRI_NIGHT, utc("2024-06-07 21:00"), utc("2024-06-08 04:00")),
        (S("Sat 22:00-06:00 Europe/Berlin"), utc("2024-03-30 23:00"), utc("2024-03-31 04:00")),
        (S("Sun 01:00-02:30 Europe/Berlin"), utc("2024-10-27 00:00"), utc("2024-10-27 00:30")),
        (S("Sun 02:30-04:00 Europe/Berlin"), utc("2024-03-30 12:00"), utc("2024-03-31 01:00")),
        (S("Sun 02:30-03:30 America/New_York"), utc("2024-03-10 07:10"), utc("2024-03-10 07:30")),
        # Touching and overlapping ranges are one open stretch.
        (S("Mon 08:00-12:00,12:00-16:00 UTC"), utc("2024-06-03 09:00"), utc("2024-06-03 16:00")),
        (S("Mon 08:00-13:00,12:00-16:00 UTC"), utc("2024-06-03 09:00"), utc("2024-06-03 16:00")),
        (S("Fri-Sun 00:00-24:00 UTC"), utc("2024-06-08 12:00"), utc("2024-06-10 00:00")),
        (
            S("Sun 12:00-24:00; Mon 00:00-18:00 UTC"),
            utc("2024-06-09 13:00"),
            utc("2024-06-10 18:00"),
        ),
        # Never changes: always open.
        (S("Mon-Sun 00:00-24:00 UTC"), utc("2024-06-03 09:00"), None),
        (
            S("Mon-Sun 12:00-24:00; Mon-Sun 00:00-12:00 Europe/Berlin"),
            utc("2024-03-31 01:00"),
            None,
        ),
        (S("Mon-Sun 18:00-24:00,00:00-18:00 America/New_York"), utc("2024-11-03 06:00"), None),
        # Absolute windows.
        (MAINTENANCE, utc("2024-06-03 07:00"), utc("2024-06-03 08:00")),
        (MAINTENANCE, utc("2024-06-03 08:00"), utc("2024-06-03 10:00")),
        (MAINTENANCE, utc("2024-06-03 10:00"), None),
        (AbsoluteWindow(utc("2024-06-03 08:00"), utc("2024-06-03 08:00")), utc("2024-06-01"), None),
    ],
)
def test_next_change(window: Window, now: datetime, expected: datetime | None) -> None:
    assert next_change(window, now) == expected


@pytest.mark.parametrize(
    "text,expected_days,expected_ranges",
    [
        ("Mon-Fri 07:00-17:00 Europe/Berlin", "Mon Tue Wed Thu Fri", [("07:00", "17:00")]),
        ("Mon,Wed,Fri 07:00-17:00 UTC", "Mon Wed Fri", [("07:00", "17:00")]),
        ("sun 7:00-9:30 UTC", "Sun", [("07:00", "09:30")]),
        ("Sat-Mon 09:00-17:00 UTC", "Sat Sun Mon", [("09:00", "17:00")]),
        ("Fri-Tue 09:00-17:00 UTC", "Fri Sat Sun Mon Tue", [("09:00", "17:00")]),
        ("Mon-Wed,Fri 22:00-24:00 UTC", "Mon Tue Wed Fri", [("22:00", "00:00")]),
        (
            "Mon - Fri  07:00-12:00, 13:00-17:00 UTC",
            "Mon Tue Wed Thu Fri",
            [("07:00", "12:00"), ("13:00", "17:00")],
        ),
        ("Mon 00:00-24:00 UTC", "Mon", [("00:00", "00:00")]),
    ],
)
def test_parse_schedule(
    text: str, expected_days: str, expected_ranges: list[tuple[str, str]]
) -> None:
    schedule = parse_schedule(text)
    days = frozenset(Weekday[name.upper()] for name in expected_days.split())
    ranges = {
        WeeklyRange(days, time.fromisoformat(a), time.fromisoformat(b)) for a, b in expected_ranges
    }
    assert set(schedule.ranges) == ranges


def test_parse_clauses_share_the_timezone() -> None:
    schedule = parse_schedule("Mon-Fri 07:00-17:00; Sat 08:00-12:00 America/Chicago")
    assert schedule.timezone.key == "America/Chicago"
    assert len(schedule.ranges) == 2
    assert format_schedule(schedule) == "Mon-Fri 07:00-17:00; Sat 08:00-12:00 America/Chicago"


@pytest.mark.parametrize(
    "text,names",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("garbage", "'garbage'"),
        ("Mox-Fri 07:00-17:00 Europe/Berlin", "'Mox'"),
        ("Mon-Fry 07:00-17:00 Europe/Berlin", "'Fry'"),
        ("Mon--Fri 07:00-17:00 UTC", "'Mon--Fri'"),
        ("Mon-Fri 25:00-17:00 Europe/Berlin", "'25:00'"),
        ("Mon-Fri 07:00-17:60 UTC", "'17:60'"),
        ("Mon-Fri 24:00-06:00 UTC", "24:00 may only end"),
        ("Mon-Fri 7h-17h UTC", "'7h'"),
        ("Mon-Fri 07:00 UTC", "'07:00'"),
        ("Mon-Fri 07:00-12:00-17:00 UTC", "'07:00-12:00-17:00'"),
        ("Mon-Fri 07:00-07:00 UTC", "empty time range '07:00-07:00'"),
        ("Mon-Fri 07:00-17:00 Mars/Olympus", "'Mars/Olympus'"),
        ("Mon-Fri 07:00-17:00 europe/berlin", "'europe/berlin'"),
        ("Mon-Fri 07:00-17:00 Europe", "'Europe'"),
        ("Mon-Fri 07:00-17:00 ../../etc/passwd", "'../../etc/passwd'"),
        ("Mon-Fri 07:00-17:00 /usr/share/zoneinfo/UTC", "unknown timezone"),
        ("Mon-Fri 07:00-17:00", "missing timezone"),
        ("07:00-17:00 Europe/Berlin", "'07:00-17:00'"),
        ("Mon-Fri 07:00-17:00; Europe/Berlin", "(empty)"),
        ("Mon-Fri 07:00-17:00 extra Europe/Berlin", "'Mon-Fri 07:00-17:00 extra'"),
        ("Mon " + "07:00-08:00," * 20 + "09:00-10:00 UTC", "more than 16 time ranges"),
        ("Mon 07:00-08:00 " * 100 + "UTC", "longer than"),
    ],
)
def test_parse_errors_name_the_bad_part(text: str, names: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_schedule(text)
    assert names in caught.value.message


@pytest.mark.parametrize(
    "call",
    [
        lambda: contains(WORKDAY_BERLIN, datetime(2024, 6, 3, 10)),
        lambda: next_change(WORKDAY_BERLIN, datetime(2024, 6, 3, 10)),
        lambda: contains(MAINTENANCE, datetime(2024, 6, 3, 10)),
        lambda: AbsoluteWindow(datetime(2024, 6, 3, 8), utc("2024-06-03 10:00")),
        lambda: AbsoluteWindow(utc("2024-06-03 10:00"), utc("2024-06-03 08:00")),
        lambda: parse_instant("2024-06-03T10:00:00"),
        lambda: parse_instant("yesterday"),
        lambda: WeeklyRange(frozenset(), time(7), time(17)),
        lambda: WeeklyRange(frozenset({Weekday.MON}), time(7, 0, 30), time(17)),
        lambda: WeeklyRange(frozenset({Weekday.MON}), time(7, tzinfo=UTC), time(17)),
        lambda: WeeklyRange(frozenset({Weekday.MON}), time(7), time(7)),
        lambda: Schedule((), ZoneInfo("UTC")),
        lambda: contains(WORKDAY_BERLIN, datetime.max.replace(tzinfo=UTC)),
        lambda: next_change(WORKDAY_BERLIN, datetime(9999, 12, 1, tzinfo=UTC)),
        lambda: next_change(WORKDAY_BERLIN, datetime.min.replace(tzinfo=UTC)),
    ],
)
def test_naive_and_malformed_values_are_refused(call: object) -> None:
    assert callable(call)
    with pytest.raises(WindowError):
        call()


def test_absolute_window_is_kept_in_utc() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    window = AbsoluteWindow(
        datetime(2024, 6, 3, 10, tzinfo=berlin), datetime(2024, 6, 3, 12, tzinfo=berlin)
    )
    assert window.start == utc("2024-06-03 08:00") and window.start.tzinfo is UTC
    assert parse_instant("2024-06-03T10:00:00+02:00") == utc("2024-06-03 08:00")
    assert parse_instant("2024-06-03T08:00:00Z").tzinfo is UTC


# --- properties ----------------------------------------------------------------------------

ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/Chicago",
    "Australia/Lord_Howe",  # 30-minute DST shift
    "Pacific/Apia",  # skipped a whole day in December 2011
    "Asia/Kolkata",
]

clock_times = st.builds(time, st.integers(0, 23), st.sampled_from([0, 15, 30, 59]))
# Equal start and end is refused unless it is the whole day 00:00-24:00.
start_ends = st.tuples(clock_times, clock_times).filter(lambda p: p[0] != p[1] or p[0] == time(0))
weekly_ranges = st.builds(
    lambda days, bounds: WeeklyRange(days, *bounds),
    st.frozensets(st.sampled_from(list(Weekday)), min_size=1),
    start_ends,
)
schedules = st.builds(
    Schedule,
    ranges=st.lists(weekly_ranges, min_size=1, max_size=4).map(tuple),
    timezone=st.sampled_from(ZONES).map(ZoneInfo),
)
instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
)
absolute_windows = st.tuples(instants, instants).map(lambda p: AbsoluteWindow(min(p), max(p)))


@settings(max_examples=300, deadline=None)
@given(
    window=st.one_of(schedules, absolute_windows),
    now=instants,
    fractions=st.lists(st.floats(0, 1), max_size=4),
)
def test_contains_is_constant_until_next_change(
    window: Window, now: datetime, fractions: list[float]
) -> None:
    inside = contains(window, now)
    change = next_change(window, now)
    if change is None:
        for later in (timedelta(hours=1), timedelta(days=3), timedelta(days=40)):
            assert contains(window, now + later) is inside
        return
    assert change > now
    assert change.tzinfo is UTC
    span = change - now
    tick = timedelta(microseconds=1)
    samples = [now, change - tick, *(now + span * f for f in fractions)]
    for sample in samples:
        if now <= sample < change:
            assert contains(window, sample) is inside, sample
    assert contains(window, change) is not inside


@settings(max_examples=200, deadline=None)
@given(schedule=schedules)
def test_format_then_parse_round_trips(schedule: Schedule) -> None:
    assert parse_schedule(format_schedule(schedule)) == schedule


def wall_clock_oracle(schedule: Schedule, instant: datetime) -> bool:
    """contains() written the obvious way; right wherever the zone has no DST transitions."""
    local = instant.astimezone(schedule.timezone).replace(tzinfo=None)
    today, clock = Weekday(local.weekday()), local.time()
    yesterday = Weekday((today - 1) % 7)
    for r in schedule.ranges:
        if r.crosses_midnight:
            if (today in r.days and clock >= r.start) or (yesterday in r.days and clock < r.end):
                return True
        elif today in r.days and r.start <= clock < r.end:
            return True
    return False


fixed_offset_schedules = st.builds(
    Schedule,
    ranges=st.lists(weekly_ranges, min_size=1, max_size=4).map(tuple),
    timezone=st.sampled_from(["UTC", "Asia/Kolkata", "Asia/Tokyo"]).map(ZoneInfo),
)


@settings(max_examples=300, deadline=None)
@given(schedule=fixed_offset_schedules, now=instants)
def test_contains_matches_wall_clock_where_there_is_no_dst(
    schedule: Schedule, now: datetime
) -> None:
    # Tokyo and Kolkata have had no DST since 1951; `instants` start in 2000.
    assert contains(schedule, now) is wall_clock_oracle(schedule, now)


@pytest.mark.parametrize(
    "at,expected",
    [
        # Friday 2026-03-27 18:00 Berlin (CET, +01): next are Mon, Tue, Wed; Monday is after
        # the switch to summer time (+02), so 07:00 local is 05:00 UTC.
        (
            "2026-03-27T17:00:00+00:00",
            [("2026-03-30T05:00", "2026-03-30T15:00"), ("2026-03-31T05:00", "2026-03-31T15:00"),
             ("2026-04-01T05:00", "2026-04-01T15:00")],
        ),
        # Inside a window: the first stretch starts now.
        (
            "2026-03-25T10:30:00+00:00",
            [("2026-03-25T10:30", "2026-03-25T16:00"), ("2026-03-26T06:00", "2026-03-26T16:00"),
             ("2026-03-27T06:00", "2026-03-27T16:00")],
        ),
    ],
)  # fmt: skip
def test_upcoming_lists_the_next_open_stretches(at: str, expected: list[tuple[str, str]]) -> None:
    schedule = parse_schedule("Mon-Fri 07:00-17:00 Europe/Berlin")
    got = upcoming(schedule, datetime.fromisoformat(at), 3)
    assert [(s.strftime("%Y-%m-%dT%H:%M"), e.strftime("%Y-%m-%dT%H:%M") if e else "")
            for s, e in got] == expected  # fmt: skip
    assert all(s.tzinfo is not None for s, _ in got)


def test_upcoming_of_an_always_open_or_finished_window() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert upcoming(parse_schedule("Mon-Sun 00:00-24:00 UTC"), now, 3) == [(now, None)]
    past = AbsoluteWindow(now - timedelta(days=2), now - timedelta(days=1))
    assert upcoming(past, now, 3) == []
