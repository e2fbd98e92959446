"""Terminal recordings exported as asciicast v2, and the event codec under fuzzing."""

from __future__ import annotations

import io
import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from recording_helpers import STARTED_AT, Env

from recordings import Header, Kind, export_asciicast
from recordings.container import FormatError
from recordings.events import Event, decode_events, encode_event
from recordings.ids import new_recording_id
from recordings.terminal import TerminalEvent, asciicast_lines, resize_payload

TEXT = "Grüße — résumé ✓ 🚀 日本語\r\n$ "


def _header(**metadata: str) -> Header:
    return Header(new_recording_id(), Kind.TERMINAL, STARTED_AT, new_recording_id(), metadata)


def _parse(cast: str) -> tuple[dict[str, object], list[list[object]]]:
    lines = cast.splitlines()
    header = json.loads(lines[0])
    return header, [json.loads(line) for line in lines[1:]]


async def test_export_of_a_real_recording_reproduces_the_output_text(env: Env) -> None:
    raw = TEXT.encode()
    # Split every few bytes so multi-byte characters straddle events.
    pieces = [raw[i : i + 3] for i in range(0, len(raw), 3)]
    recorded = [(TerminalEvent.RESIZE, resize_payload(132, 43))]
    recorded += [(TerminalEvent.OUTPUT, p) for p in pieces]
    recorded += [(TerminalEvent.INPUT, b"secret-typed")]
    recorded += [(TerminalEvent.MARKER, b"step 2")]
    rid = await env.write(recorded)
    events, result = env.read(rid)
    assert result.header is not None
    out = io.StringIO()
    export_asciicast(result.header, events, out)
    header, lines = _parse(out.getvalue())
    assert header["version"] == 2
    assert (header["width"], header["height"]) == (132, 43)
    assert header["timestamp"] == int(STARTED_AT.timestamp())
    output = "".join(str(line[2]) for line in lines if line[1] == "o")
    assert output == TEXT
    assert "\ufffd" not in output
    assert all(line[1] != "i" for line in lines)  # input is not exported by default
    assert ["m", "step 2"] in [line[1:] for line in lines]
    times = [float(str(line[0])) for line in lines]
    assert times == sorted(times) and all(t >= 0 for t in times)


def test_input_and_resize_events_when_asked() -> None:
    events = [
        Event(0, TerminalEvent.OUTPUT, b"a"),
        Event(1_500_000, TerminalEvent.INPUT, b"ls\r"),
        Event(2_000_000, TerminalEvent.RESIZE, resize_payload(90, 20)),
    ]
    header, lines = _parse("".join(asciicast_lines(_header(), events, include_input=True)))
    assert (header["width"], header["height"]) == (80, 24)
    assert lines == [[0.0, "o", "a"], [1.5, "i", "ls\r"], [2.0, "r", "90x20"]]


def test_size_comes_from_metadata_when_no_initial_resize() -> None:
    header, _ = _parse("".join(asciicast_lines(_header(cols="100", rows="30"), [])))
    assert (header["width"], header["height"]) == (100, 30)


def test_invalid_utf8_becomes_replacement_characters_and_a_cut_tail_is_kept() -> None:
    events = [
        Event(0, TerminalEvent.OUTPUT, b"ok \xff\xfe "),
        Event(10, TerminalEvent.OUTPUT, "é".encode()[:1]),  # ends mid-character
    ]
    _, lines = _parse("".join(asciicast_lines(_header(), events)))
    assert "".join(str(line[2]) for line in lines) == "ok \ufffd\ufffd \ufffd"


@given(st.binary(max_size=300), st.integers(1, 7))
def test_any_bytes_split_anywhere_export_like_one_decode(data: bytes, step: int) -> None:
    events = [Event(i, TerminalEvent.OUTPUT, data[i : i + step]) for i in range(0, len(data), step)]
    with_pty = [Event(0, TerminalEvent.RESIZE, resize_payload(80, 24)), *events]
    _, lines = _parse("".join(asciicast_lines(_header(), with_pty)))
    assert "".join(str(line[2]) for line in lines if line[1] == "o") == data.decode(
        "utf-8", "replace"
    )
    # Without a pty, every line feed gets its carriage return, wherever the chunks split.
    _, lines = _parse("".join(asciicast_lines(_header(), events)))
    whole = re.sub(r"(?<!\r)\n", "\r\n", data.decode("utf-8", "replace"))
    assert "".join(str(line[2]) for line in lines) == whole


@given(
    st.lists(
        st.tuples(st.integers(0, 2**40), st.integers(0, 255), st.binary(max_size=200)),
        max_size=20,
    )
)
def test_event_codec_round_trips(events: list[tuple[int, int, bytes]]) -> None:
    packed = b"".join(encode_event(o, t, p) for o, t, p in events)
    assert [(e.offset_us, e.type, e.payload) for e in decode_events(packed)] == events


@given(st.binary(max_size=200))
def test_event_decoder_rejects_garbage_only_with_format_error(data: bytes) -> None:
    try:
        for event in decode_events(data):
            assert len(event.payload) <= len(data)
    except FormatError:
        pass


def test_event_decoder_refuses_a_length_past_the_chunk() -> None:
    with pytest.raises(FormatError):
        list(decode_events(encode_event(0, 1, b"abcdef")[:-1]))


def test_an_exec_command_is_a_marker_and_does_not_hide_the_initial_size() -> None:
    events = [
        Event(0, TerminalEvent.COMMAND, b"rsync --server -vlogDtpre.iLsfxCIvu . /tmp/x"),
        Event(5, TerminalEvent.RESIZE, resize_payload(100, 30)),
        Event(1_000_000, TerminalEvent.OUTPUT, b"ok"),
    ]
    header, lines = _parse("".join(asciicast_lines(_header(), events)))
    assert (header["width"], header["height"]) == (100, 30)
    assert lines == [
        [0.0, "m", "command: rsync --server -vlogDtpre.iLsfxCIvu . /tmp/x"],
        [1.0, "o", "ok"],
    ]


def test_a_resize_before_any_output_sizes_the_header_even_after_a_marker() -> None:
    events = [
        Event(0, TerminalEvent.MARKER, b"command: top"),
        Event(0, TerminalEvent.RESIZE, resize_payload(100, 30)),
        Event(5, TerminalEvent.OUTPUT, b"x"),
        Event(9, TerminalEvent.RESIZE, resize_payload(120, 40)),
    ]
    header, lines = _parse("".join(asciicast_lines(_header(), events)))
    assert (header["width"], header["height"]) == (100, 30)
    assert [line[1:] for line in lines] == [["m", "command: top"], ["o", "x"], ["r", "120x40"]]


def test_output_without_a_pty_gets_carriage_returns_and_with_a_pty_stays_exact() -> None:
    """``ssh host cmd`` (no pty) sends bare line feeds, which a terminal (the player) draws
    as a staircase; a session with a pty (its size recorded first) is exported byte-exact."""
    raw = b"first line\nsecond\r\nthird\n"
    no_pty = [Event(0, TerminalEvent.COMMAND, b"cat notes"), Event(5, TerminalEvent.OUTPUT, raw)]
    _, lines = _parse("".join(asciicast_lines(_header(), no_pty)))
    assert "".join(str(x[2]) for x in lines if x[1] == "o") == "first line\r\nsecond\r\nthird\r\n"
    pty = [Event(0, TerminalEvent.RESIZE, resize_payload(100, 30)),
           Event(5, TerminalEvent.OUTPUT, raw)]  # fmt: skip
    _, lines = _parse("".join(asciicast_lines(_header(), pty)))
    assert "".join(str(x[2]) for x in lines if x[1] == "o") == raw.decode()
