"""The search screen interpreter: escape sequences interpreted, not stripped; bounded."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recordings.events import Event
from recordings.screen import Screen, TextLine, screen_lines
from recordings.terminal import TerminalEvent, resize_payload


def texts(*chunks: bytes, cols: int = 80, rows: int = 24) -> list[str]:
    screen = Screen(cols, rows)
    out: list[TextLine] = []
    for i, chunk in enumerate(chunks):
        out += screen.feed(i, chunk)
    out += screen.finish()
    return [line.text for line in out]


@pytest.mark.parametrize(
    "output,expected",
    [
        (b"abc\b\bXY", ["aXY"]),
        (b"ls\r\nfoo  bar\r\n", ["ls", "foo  bar"]),
        (b"passw\b \b\b \bsword\r\n", ["password"]),  # tty echo of two rubouts
        (b"passw\b\b\x1b[Kword", ["pasword"]),  # rubout by erase-in-line
        (b"hello\rJ", ["Jello"]),
        (b"a\tb", ["a       b"]),
        (b"\x1b[1;31mred\x1b[0m plain", ["red plain"]),  # SGR ignored
        (b"\x1b]0;window title\x07prompt$ ", ["prompt$"]),  # OSC ignored (BEL)
        (b"\x1b]2;t\x1b\\x", ["x"]),  # OSC ended by ST
        (b"\x1bP1$r0m\x1b\\ok", ["ok"]),  # DCS ignored
        (b"\x1b[5;3Hxy", ["  xy"]),  # CUP: column 3, leading blanks kept
        (b"abcdef\x1b[3Dz", ["abczef"]),  # CUB
        (b"abc\x1b[1Gz", ["zbc"]),  # CHA
        (b"abcdef\x1b[3G\x1b[K", ["ab"]),  # EL 0 after text was never emitted
        (b"abcdef\x1b[3G\x1b[2P", ["abef"]),  # DCH
        (b"abef\x1b[3G\x1b[2@cd", ["abcdef"]),  # ICH
        (b"one\r\ntwo\x1b[Aw", ["one", "two", "onew"]),  # CUU re-dirties a row
        (b"old\x1b[2J\x1b[Hnew", ["old", "new"]),  # ED 2 emits what it clears
        (b"x\x1b[?1049hfull\x1b[?1049lback", ["x", "full", "xback"]),  # alt screen
        (b"caf\xc3", ["caf\ufffd"]),  # trailing partial UTF-8
        (b"\x1b[999;999Hz", ["z".rjust(80)]),  # clamped position
        (b"\x1b[" + b"9" * 500 + b"mok", ["ok"]),  # overlong parameters: sequence dropped
    ],
)
def test_interpretation_table(output: bytes, expected: list[str]) -> None:
    assert texts(output) == expected


def test_split_sequences_across_feeds() -> None:
    assert texts(b"ab\x1b", b"[1", b"Dc\xe2\x82", b"\xac") == ["ac\u20ac"]


def test_autowrap_and_scroll_emit_every_line() -> None:
    assert texts(b"abcdefgh", cols=4, rows=2) == ["abcd", "efgh"]
    assert texts(b"1\r\n2\r\n3\r\n4", cols=4, rows=2) == ["1", "2", "3", "4"]


def test_offset_is_first_change_of_the_line() -> None:
    screen = Screen()
    assert screen.feed(100, b"$ ") == []
    assert screen.feed(200, b"whoami") == []
    assert screen.feed(300, b"\r\n") == [TextLine(100, "$ whoami")]
    assert screen.feed(400, b"root\r\n") == [TextLine(400, "root")]
    assert screen.finish() == []


def test_unchanged_redraw_is_not_emitted_twice() -> None:
    screen = Screen()
    lines = screen.feed(1, b"\x1b[Htop 1\x1b[2;1H")
    lines += screen.feed(2, b"\x1b[Htop 1\x1b[2;1H")  # same content: not a change
    lines += screen.feed(3, b"\x1b[Htop 2\x1b[2;1H")
    assert lines == [TextLine(1, "top 1"), TextLine(3, "top 2")]


def test_screen_lines_follow_resize_and_ignore_input() -> None:
    events = [
        Event(0, TerminalEvent.RESIZE, resize_payload(6, 2)),
        Event(10, TerminalEvent.INPUT, b"secret typed\r"),
        Event(20, TerminalEvent.OUTPUT, b"abcdefgh"),
    ]
    assert [(t.offset_us, t.text) for t in screen_lines(events)] == [(20, "abcdef"), (20, "gh")]


def test_screen_lines_budget_cuts_interpretation() -> None:
    events = [Event(i, TerminalEvent.OUTPUT, b"word%d\r\n" % i) for i in range(10)]
    lines = list(screen_lines(events, max_output_bytes=14))
    assert [t.text for t in lines] == ["word0", "word1"]


HOSTILE = st.lists(
    st.one_of(
        st.binary(max_size=64),
        st.sampled_from(
            [
                b"\x1b[",
                b"\x1b]",
                b"\x1bP",
                b"\x9b",
                b"\x1b[?1049h",
                b"\x1b[2J",
                b"\x1b[99S",
                b"\x1b[99L",
                b"\x1b[99M",
                b"\x1bM",
                b"\x1b8",
                b"\x1b[99@",
                b"\r\n",
                b"\b" * 9,
            ]
        ),  # fmt: skip
        st.builds(lambda n: b"\x1b[" + str(n).encode() + b"C", st.integers(0, 10**6)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(HOSTILE, st.integers(1, 2000), st.integers(1, 2000))
def test_hostile_input_never_crashes_and_stays_bounded(
    chunks: list[bytes], cols: int, rows: int
) -> None:
    screen = Screen(cols, rows, max_cols=64, max_rows=16)
    lines: list[TextLine] = []
    for i, chunk in enumerate(chunks):
        lines += screen.feed(i, chunk)
        assert screen.size[0] <= 64 and screen.size[1] <= 16
        grid = screen._grid
        assert len(grid) == screen.size[1]
        assert all(len(row.cells) == screen.size[0] for row in grid)
        assert len(screen._params) <= 64
    lines += screen.finish()
    assert all(len(line.text) <= 64 and line.text for line in lines)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=70))
def test_printable_line_round_trips(text: str) -> None:
    expected = [text.rstrip()] if text.strip() else []
    assert texts(text.encode()) == expected


@pytest.mark.parametrize(
    "output,expected",
    [
        (b"ab\x00\x00\x07\x0e\x0fcd\r\n", ["abcd"]),  # NUL, BEL, SO, SI change nothing
        (b"\x00" * 100_000 + b"after zeros\r\n", ["after zeros"]),  # cat /dev/zero, then text
        (b"x\x00\x1b[2Dy\x00\x7f", ["y"]),  # a CSI right after inert controls still acts
        (b"x\x00\x1b]0;t\x00itle\x07z", ["xz"]),  # inside an OSC, NUL is not ground text
        (b"a\x00\tb\x00\bc", ["a       c"]),  # tab and backspace are not skipped with them
    ],
)
def test_inert_controls_are_skipped_without_changing_the_text(
    output: bytes, expected: list[str]
) -> None:
    assert texts(output) == expected
    # Fed one byte at a time (every control through the slow path): the same text.
    assert texts(*(output[i : i + 1] for i in range(len(output)))) == expected
