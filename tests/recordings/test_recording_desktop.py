"""Desktop recording payloads: a START round-trips, a damaged one is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recordings.desktop import MAX_NAME_BYTES, StartPoint, parse_start


@given(
    width=st.integers(0, 0xFFFF),
    height=st.integers(0, 0xFFFF),
    pixel_format=st.binary(min_size=16, max_size=16),
    name=st.text(max_size=200),
)
def test_a_start_point_round_trips(width: int, height: int, pixel_format: bytes, name: str) -> None:
    point = StartPoint(width, height, pixel_format, name)
    assert parse_start(point.payload()) == point


def test_a_long_name_is_cut_and_damaged_payloads_are_refused() -> None:
    point = StartPoint(800, 600, bytes(16), "x" * (MAX_NAME_BYTES + 10))
    assert parse_start(point.payload()).name == "x" * MAX_NAME_BYTES
    good = StartPoint(800, 600, bytes(16), "hmi").payload()
    for bad in (good[:10], good[:-1], good + b"!", b""):
        with pytest.raises(ValueError):
            parse_start(bad)
