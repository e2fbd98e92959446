"""A tunnel recording as JSON lines: ``conduit recordings export --format jsonl``.

One JSON object per line, in recorded order, each with ``t`` (seconds from the start) and
``event``: ``request`` and ``response`` (a Modbus tunnel's forwarded frames, decoded with
``gateway.ot.modbus``: transaction id, unit, function, addresses, values, exception),
``modbus`` (what the gateway itself decided and saw: writes with their results, refusals
it answered, device identity, read counts), ``marker`` (connection events), and for a
tunnel that is not Modbus ``to_asset``/``from_asset`` with the bytes in hex. Pure: takes
the header's protocol and the events; does not read files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from gateway.ot.guard import describe
from gateway.ot.modbus import (
    FrameReader,
    FramingError,
    PduError,
    Request,
    decode_request,
    decode_response,
)
from recordings.events import Event
from recordings.tunnel import TunnelEvent

MAX_HEX_BYTES = 4096  # of one raw event of a tunnel that is not Modbus


class _Stream:
    """One direction of a Modbus stream, cut into frames; a framing error restarts it."""

    def __init__(self) -> None:
        self.reader = FrameReader()

    def frames(self, data: bytes) -> tuple[list[Any], str]:
        try:
            return self.reader.feed(data), ""
        except FramingError as exc:
            self.reader = FrameReader()
            return [], str(exc)


def jsonl_lines(protocol: str, events: Iterable[Event]) -> Iterator[str]:
    modbus = protocol == "modbus"
    requests, responses = _Stream(), _Stream()
    asked: dict[int, list[Request]] = {}
    for event in events:
        base: dict[str, Any] = {"t": round(event.offset_seconds, 6)}
        if event.type == TunnelEvent.MARKER:
            yield _line(
                base | {"event": "marker", "text": event.payload.decode("utf-8", "replace")}
            )
        elif event.type == TunnelEvent.DECODED:
            try:
                doc = json.loads(event.payload)
            except ValueError:
                doc = {"undecodable": len(event.payload)}
            yield _line(base | {"event": "modbus", **(doc if isinstance(doc, dict) else {})})
        elif not modbus and event.type in (TunnelEvent.TO_ASSET, TunnelEvent.FROM_ASSET):
            name = "to_asset" if event.type == TunnelEvent.TO_ASSET else "from_asset"
            data = event.payload
            yield _line(base | {"event": name, "bytes": len(data),
                                "hex": data[:MAX_HEX_BYTES].hex()})  # fmt: skip
        elif event.type == TunnelEvent.TO_ASSET:
            frames, error = requests.frames(event.payload)
            for frame in frames:
                line = base | {"event": "request", "transaction_id": frame.transaction_id}
                try:
                    request = decode_request(frame.pdu)
                except PduError as exc:
                    yield _line(line | {"unit": frame.unit, "error": str(exc)})
                    continue
                asked.setdefault(frame.transaction_id, []).append(request)
                yield _line(line | describe(frame.unit, request))
            if error:
                yield _line(base | {"event": "request", "error": error})
        elif event.type == TunnelEvent.FROM_ASSET:
            frames, error = responses.frames(event.payload)
            for frame in frames:
                yield _line(base | _response(frame, asked))
            if error:
                yield _line(base | {"event": "response", "error": error})


def _response(frame: Any, asked: dict[int, list[Request]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "event": "response", "transaction_id": frame.transaction_id, "unit": frame.unit,
        "function": frame.function & 0x7F,
    }  # fmt: skip
    waiting = asked.get(frame.transaction_id)
    if not waiting:  # input not recorded (the asset says so), or an unsolicited answer
        if frame.function & 0x80 and len(frame.pdu) == 2:
            out["exception"] = frame.pdu[1]
        return out
    request = waiting.pop(0)
    try:
        response = decode_response(frame.pdu, request)
    except PduError as exc:
        return out | {"error": str(exc)}
    if not response.ok:
        return out | {"exception": response.exception}
    if response.values:
        out["values"] = list(response.values)
    if response.objects:
        out["objects"] = {str(i): v.decode("latin-1") for i, v in response.objects}
    return out


def _line(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":")) + "\n"
