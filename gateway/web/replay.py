"""What the player pages read from a recording: the asciicast stream and a tunnel's event table.

Reading is synchronous (the caller runs it in a worker thread, a batch at a time) and goes
through the verifying reader: only chunks that authenticated become output, and reading
stops at the first one that does not. A terminal recording becomes asciicast v2 lines from
the start of the file as they are decrypted, so the first frames can leave before the rest
is read. The container has no seek index (each chunk's associated data is the hash chain
over every frame before it), so a late offset is reached by reading up to it. An ordinary
recording's player gets the whole cast and seeks inside it; asciinema-player downloads and
parses a cast whole before its first frame, so a large recording is sent in *parts*: about
``PART_CAST_BYTES`` of cast from a given offset, the screen there approximated by replaying
the last ``TAIL_BYTES`` of output before it (and the last resize) at that offset, and a
``part ends here`` marker last. Typed input stays ``"i"`` events and also becomes
a ``typed: ...`` marker per line, so the time line shows where it was typed; a search hit
becomes a ``search hit`` marker. Does not check who may read (``player``) and does not audit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from recordings import RecordingReader
from recordings.container import MAGIC, FormatError, Header, read_frame, split_header_body
from recordings.events import Event
from recordings.terminal import TerminalEvent, asciicast_lines
from recordings.tunnel import TunnelEvent

BATCH_BYTES = 64 << 10  # cast text handed to the response per worker-thread hop
PART_CAST_BYTES = 8 << 20  # cast text in one part (parsed in < 1 s); well over TAIL_BYTES
TAIL_BYTES = 64 << 10  # output before a part's start replayed at it: the screen there
PART_END = "part ends here: the player's Next part link continues"
TYPED_CHARS = 80  # a typed line longer than this is cut in its marker label
TABLE_ROWS = 500  # a tunnel's event table shows at most this many rows
_KEY_SEQUENCE = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|O.|.)?")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class Unreadable(Exception):
    """The recording's header cannot be read or does not authenticate."""


def peek_header(stream: BinaryIO) -> Header:
    """The clear header, parsed (not yet authenticated: the reader does that), then rewind."""
    try:
        if stream.read(len(MAGIC)) != MAGIC:
            raise Unreadable("not a Conduit recording")
        frame = read_frame(stream)
        if frame is None:
            raise Unreadable("no header")
        doc, _mac = split_header_body(frame[1])
        return Header.from_json(doc)
    except (EOFError, FormatError, ValueError) as exc:
        raise Unreadable(str(exc)) from exc
    finally:
        stream.seek(0)


FIRST_FRAME_EVENTS = 1000  # events read at most looking for the first output


def first_output_seconds(reader: RecordingReader) -> float | None:
    """When the first output was recorded (None: none among the first
    ``FIRST_FRAME_EVENTS`` events, or unreadable): a poster at 0 s would show a blank
    terminal, so the page opens a recording played from its start on its first frame."""
    events = iter(reader.events())
    try:
        for _, event in zip(range(FIRST_FRAME_EVENTS), events, strict=False):
            if event.type == TerminalEvent.OUTPUT:
                return event.offset_seconds
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()
    return None


def typed_text(buffer: str) -> str:
    """A typed line as a person would read it: key sequences dropped, backspaces applied."""
    out: list[str] = []
    for char in _KEY_SEQUENCE.sub("", buffer):
        if char in "\x7f\b":
            if out:
                out.pop()
        elif not _CONTROL.match(char):
            out.append(char)
    text = "".join(out).strip()
    return text if len(text) <= TYPED_CHARS else text[: TYPED_CHARS - 1] + "…"


def with_markers(events: Iterable[Event], hit_us: int | None) -> Iterator[Event]:
    """The events, plus a ``typed:`` marker at the end of each typed line and a
    ``search hit`` marker at ``hit_us``."""
    typed = ""
    for event in events:
        if hit_us is not None and event.offset_us >= hit_us:
            yield Event(hit_us, TerminalEvent.MARKER, b"search hit")
            hit_us = None
        yield event
        if event.type != TerminalEvent.INPUT:
            continue
        typed += event.payload.decode("utf-8", "replace")
        while (cut := _line_end(typed)) >= 0:
            line, typed = typed[:cut], typed[cut + 1 :]
            if shown := typed_text(line):
                yield Event(event.offset_us, TerminalEvent.MARKER, f"typed: {shown}".encode())
        typed = typed[-4 * TYPED_CHARS :]  # a line never ended keeps memory bounded
    if hit_us is not None:
        yield Event(hit_us, TerminalEvent.MARKER, b"search hit")


def _line_end(text: str) -> int:
    ends = [i for i in (text.find("\r"), text.find("\n")) if i >= 0]
    return min(ends) if ends else -1


def starting_at(events: Iterable[Event], from_us: int) -> Iterator[Event]:
    """The events from ``from_us`` on. Before it only the last resize and the last
    ``TAIL_BYTES`` of output are kept, and replayed 1 µs before ``from_us``: for scrolling
    output that is the screen there; a full-screen program's older drawing is not (no screen
    snapshot)."""
    stream = iter(events)
    size: bytes | None = None
    tail = bytearray()
    later: list[Event] = []
    for event in stream:
        if event.offset_us >= from_us:
            later.append(event)
            break
        if event.type == TerminalEvent.RESIZE:
            size = event.payload
        elif event.type == TerminalEvent.OUTPUT:
            tail += event.payload
            if len(tail) > TAIL_BYTES:
                del tail[:-TAIL_BYTES]
    # Just before ``from_us``: the player's screen at an offset shows events before it only.
    at = max(0, from_us - 1)
    if size is not None:
        yield Event(at, TerminalEvent.RESIZE, size)
    if tail:
        yield Event(at, TerminalEvent.OUTPUT, bytes(tail))
    yield from later
    yield from stream


def cast_batches(
    stream: BinaryIO,
    reader: RecordingReader,
    hit_us: int | None,
    *,
    from_us: int = 0,
    budget: int | None = None,
) -> Iterator[bytes]:
    """The asciicast document in batches of about ``BATCH_BYTES``; the first batch leaves
    as soon as the header authenticated and the first chunk decrypted. With ``budget`` (a
    part), the events start at ``from_us`` and stop once ``budget`` bytes of cast are out,
    with a ``PART_END`` marker at the last event's time."""
    header = peek_header(stream)
    events = iter(reader.events())
    first = next(events, None)  # authenticates the header before anything is sent
    if first is None and (reader.result is None or reader.result.header is None):
        raise Unreadable(reader.result.detail if reader.result is not None else "unreadable")
    leading = [first] if first is not None else []
    chosen: Iterable[Event] = _chain(leading, events)
    if budget is not None:
        chosen = starting_at(chosen, from_us)
    lines = asciicast_lines(header, with_markers(chosen, hit_us), include_input=True)
    batch: list[str] = []
    size = total = 0
    for line in lines:
        batch.append(line)
        size += len(line)
        if budget is not None and total + size >= budget:
            batch.append(json.dumps([_time_of(line), "m", PART_END]) + "\n")
            break
        if size >= BATCH_BYTES:
            yield "".join(batch).encode()
            batch, size, total = [], 0, total + size
    if batch:
        yield "".join(batch).encode()


def _time_of(line: str) -> float:
    """An event line's time (the header line, the first, counts as 0)."""
    if not line.startswith("["):
        return 0.0
    return float(line[1 : line.index(",")])


def _chain(first: list[Event], rest: Iterator[Event]) -> Iterator[Event]:
    yield from first
    yield from rest


@dataclass(frozen=True)
class TunnelRow:
    seconds: float
    what: str  # "from asset", "to asset" or "marker"
    detail: str  # bytes in the run, or the marker's text


def tunnel_table(reader: RecordingReader) -> tuple[list[TunnelRow], dict[str, int], bool]:
    """Markers and runs of data in one direction (bytes summed) as rows, at most
    ``TABLE_ROWS``; byte totals per direction over the whole recording; whether cut."""
    names = {TunnelEvent.FROM_ASSET: "from asset", TunnelEvent.TO_ASSET: "to asset"}
    rows: list[TunnelRow] = []
    totals = {"from asset": 0, "to asset": 0}
    run: tuple[float, str, int] | None = None
    cut = False

    def add(row: TunnelRow) -> None:
        nonlocal cut
        if len(rows) < TABLE_ROWS:
            rows.append(row)
        else:
            cut = True

    for event in reader.events():
        if event.type in names:
            name = names[TunnelEvent(event.type)]
            totals[name] += len(event.payload)
            if run is not None and run[1] == name:
                run = (run[0], name, run[2] + len(event.payload))
                continue
            if run is not None:
                add(TunnelRow(run[0], run[1], f"{run[2]} bytes"))
            run = (event.offset_seconds, name, len(event.payload))
        elif event.type == TunnelEvent.MARKER:
            if run is not None:
                add(TunnelRow(run[0], run[1], f"{run[2]} bytes"))
                run = None
            add(TunnelRow(event.offset_seconds, "marker", event.payload.decode("utf-8", "replace")))
    if run is not None:
        add(TunnelRow(run[0], run[1], f"{run[2]} bytes"))
    return rows, totals, cut
