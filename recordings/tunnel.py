"""Tunnel recordings: the event types of a ``kind = tunnel`` recording.

A tunnel (``ssh -L`` through the gateway) carries an opaque TCP stream to one port of one
asset. Its recording keeps both directions as raw bytes with timestamps, like a terminal
recording, plus UTF-8 markers for what happened to the connection (connected, half-closed).
The numbers line up with ``recordings.terminal`` (1 from the asset, 2 towards it, 4 marker)
so generic tools read both alike. A tunnel to a Modbus/TCP port also carries ``DECODED``
events: what the gateway understood (writes with their values, refusals, device identity),
and in it ``TO_ASSET`` holds only what was forwarded. Does no I/O and does not interpret the
bytes itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from enum import IntEnum

from recordings.events import Event
from recordings.screen import TextLine

MAX_INDEXED_VALUES = 125  # values of one event in its search line
MAX_INDEXED_CHARS = 4096


class TunnelEvent(IntEnum):
    FROM_ASSET = 1  # raw bytes the asset sent to the client
    TO_ASSET = 2  # raw bytes the client sent to the asset (off when the asset says so)
    MARKER = 4  # UTF-8 text: "connected 10.0.0.5:502", "eof from client", ...
    # A protocol-aware tunnel's decoded evidence: one JSON object (UTF-8) per event, with
    # "kind" (write, refused, identity, reads) and the decoded fields (gateway.ot.guard).
    DECODED = 8


def decoded_text(payload: bytes) -> str:
    """One ``DECODED`` event as a line of words for the search index: its fields in order,
    lists spelled out (``write unit 1 function 6 space hr address 100 values 4242 ...``).
    Undecodable payloads give ""."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return ""
    if not isinstance(doc, dict):
        return ""
    words = [str(doc.get("kind", ""))]
    for key, value in doc.items():
        if key == "kind":
            continue
        if isinstance(value, list):
            value = " ".join(str(v) for v in value[:MAX_INDEXED_VALUES])
        elif isinstance(value, dict):
            continue
        words.append(f"{key} {value}")
    return " ".join(words)[:MAX_INDEXED_CHARS]


def decoded_lines(events: Iterable[Event]) -> Iterator[TextLine]:
    """The search index's lines of a tunnel recording: one per ``DECODED`` event (the raw
    bytes of a tunnel are not text, and are not indexed)."""
    for event in events:
        if event.type == TunnelEvent.DECODED:
            text = decoded_text(event.payload)
            if text:
                yield TextLine(event.offset_us, text)
