"""Terminal recordings: event types, their payloads, and export to asciicast v2.

Inside the container a terminal event is a generic event (``recordings.events``) whose type
is a :class:`TerminalEvent` and whose payload is raw bytes (output, input), two big-endian
u16 (resize: cols, rows) or UTF-8 text (marker; command, an exec session's command line).
Binary framing keeps recording cheap; JSON is produced only on export. Does not read files
or verify recordings (see ``recordings.verify``) and does not interpret escape sequences
(search does that).
"""

from __future__ import annotations

import codecs
import itertools
import json
import re
import struct
from collections.abc import Iterable, Iterator
from enum import IntEnum
from typing import TextIO

from recordings.container import Header
from recordings.events import Event

_RESIZE = struct.Struct(">HH")
DEFAULT_SIZE = (80, 24)
_MAX_LEADING = 64  # markers looked past for the initial size (bounded memory)


class TerminalEvent(IntEnum):
    OUTPUT = 1
    INPUT = 2
    RESIZE = 3
    MARKER = 4
    COMMAND = 5  # an exec session's command line, first event; none for a shell


def resize_payload(cols: int, rows: int) -> bytes:
    return _RESIZE.pack(cols, rows)


def parse_resize(payload: bytes) -> tuple[int, int]:
    if len(payload) != _RESIZE.size:
        raise ValueError("resize payload must be 4 bytes")
    cols, rows = _RESIZE.unpack(payload)
    return int(cols), int(rows)


_LONE_LF = re.compile(r"(?<!\r)\n")


def _size_from_metadata(header: Header) -> tuple[int, int]:
    try:
        return int(header.metadata["cols"]), int(header.metadata["rows"])
    except (KeyError, ValueError):
        return DEFAULT_SIZE


def _line(offset_us: int, code: str, data: str) -> str:
    # ensure_ascii keeps every line 7-bit clean whatever the terminal sent.
    return json.dumps([round(offset_us / 1_000_000, 6), code, data]) + "\n"


def asciicast_lines(
    header: Header, events: Iterable[Event], *, include_input: bool = False
) -> Iterator[str]:
    """Yield an asciicast v2 document line by line (header JSON, then one event per line).

    Output and input are decoded as UTF-8 with replacement by incremental decoders, so a
    character split across two events is still one character. The first resize before any
    output or input (markers and the command may come first) sets the initial size, else
    metadata ``cols``/``rows``, else 80x24; later resizes become ``"r"`` events, markers
    ``"m"`` events, and the command an ``"m"`` event ``command: ...``. A session without a
    pty (no size recorded before its output: ``ssh host cmd``) sends bare line feeds; its
    output gets a carriage return before each, so a terminal draws lines, not a staircase.
    """
    stream = iter(events)
    width, height = _size_from_metadata(header)
    leading: list[Event] = []  # what comes before the first output/input, at most a few
    pty = False  # a pty's size is recorded before any output; a session without one has none
    for event in stream:
        if event.type == TerminalEvent.RESIZE:
            width, height = parse_resize(event.payload)
            pty = True
            break
        leading.append(event)
        leads = event.type in (TerminalEvent.MARKER, TerminalEvent.COMMAND)
        if not leads or len(leading) >= _MAX_LEADING:
            break
    cast_header: dict[str, object] = {
        "version": 2,
        "width": width,
        "height": height,
        "timestamp": int(header.started_at.timestamp()),
        "env": {"TERM": header.metadata.get("term", "xterm-256color")},
    }
    yield json.dumps(cast_header) + "\n"
    decoders = {
        TerminalEvent.OUTPUT: codecs.getincrementaldecoder("utf-8")(errors="replace"),
        TerminalEvent.INPUT: codecs.getincrementaldecoder("utf-8")(errors="replace"),
    }
    codes = {TerminalEvent.OUTPUT: "o", TerminalEvent.INPUT: "i"}
    last_offset = 0
    after_cr = False
    for event in itertools.chain(leading, stream):
        last_offset = event.offset_us
        if event.type == TerminalEvent.OUTPUT or (
            event.type == TerminalEvent.INPUT and include_input
        ):
            kind = TerminalEvent(event.type)
            text = decoders[kind].decode(event.payload)
            if not pty and kind == TerminalEvent.OUTPUT and text:
                # No pty: a terminal (the player) needs a \r before each line feed. Where the
                # last chunk ended in \r, this one's leading \n already has it.
                head = "\n" if after_cr and text[0] == "\n" else ""
                text = head + _LONE_LF.sub("\r\n", text[len(head) :])
                after_cr = text.endswith("\r")
            if text:
                yield _line(event.offset_us, codes[kind], text)
        elif event.type == TerminalEvent.RESIZE:
            cols, rows = parse_resize(event.payload)
            yield _line(event.offset_us, "r", f"{cols}x{rows}")
        elif event.type == TerminalEvent.MARKER:
            yield _line(event.offset_us, "m", event.payload.decode("utf-8", "replace"))
        elif event.type == TerminalEvent.COMMAND:
            command = event.payload.decode("utf-8", "replace")
            yield _line(event.offset_us, "m", f"command: {command}")
    for kind, decoder in decoders.items():
        # A trailing incomplete sequence becomes U+FFFD rather than vanishing.
        tail = decoder.decode(b"", final=True)
        if tail and (kind == TerminalEvent.OUTPUT or include_input):
            yield _line(last_offset, codes[kind], tail)


def export_asciicast(
    header: Header, events: Iterable[Event], out: TextIO, *, include_input: bool = False
) -> None:
    """Write a ``.cast`` file for asciinema tools and the player."""
    for line in asciicast_lines(header, events, include_input=include_input):
        out.write(line)
