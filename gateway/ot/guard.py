"""The Modbus guard of one tunnelled connection: what may pass, what the gateway answers
itself, and the evidence of what happened.

``from_client(data)`` cuts the vendor's bytes into frames (``gateway.ot.modbus``) and judges
each request against the session's Modbus grants and write window (``rbac.modbus.judge``):
an allowed frame is forwarded to the PLC, a refused one is answered by the gateway with the
Modbus exception a server would give (01 Illegal Function, 02 Illegal Data Address, 03
Illegal Data Value for a malformed body) and never reaches the PLC. ``from_asset(data)``
matches each response to its request by transaction id and forwards it.

Pipelining: a client may send many requests without waiting; the guard passes them to the
PLC ``ASSET_WINDOW`` at a time (one), sending the next when the answer comes or when the
tunnel says it is overdue (``overdue``). Many PLC stacks serve only the first frame of a
TCP segment (pymodbus's server does: measured here, 1 answer to 20 coalesced requests), so
the gateway keeps a pipelining client working with them; docs/decisions/0018.

A framing error on either side (a bad MBAP header) ends this connection only
(``Verdicts.close``): after it no frame boundary can be trusted.

Evidence: every write with its unit, function, addresses, values and result; every refusal;
the device identification a vendor's own 43/14 read returned; and, at the end, reads counted
per unit, function code and address range (no event per read). Sans-io: the caller (the SSH
tunnel) moves the bytes, records and audits; the grants and the write window come in
through callables; the clock is passed in. Never builds a request of its own.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.ot.modbus import (
    ExceptionCode,
    Frame,
    FrameReader,
    FramingError,
    PduError,
    Request,
    decode_request,
    decode_response,
    device_identity,
    exception_frame,
)
from rbac.modbus import READ, WRITE, Access, ModbusScope, Verdict, judge, parse_modbus_action

Clock = Callable[[], dt.datetime]
# (action, valid_until) pairs the broker keeps current for the session.
Grants = tuple[tuple[str, dt.datetime | None], ...]
# More requests than this awaiting answers on one connection is not a Modbus client: the
# connection ends (a client waits for answers; pymodbus keeps one or a few in flight).
MAX_PENDING = 256
ASSET_WINDOW = 1  # requests forwarded to the PLC and not yet answered
MAX_READ_RANGES = 1000  # distinct (unit, function, range) counted; the rest count as "other"
MAX_JUDGED = 1024  # verdicts remembered per connection (reads; writes are judged every time)
MAX_VALUES_SHOWN = 123  # a write's values in its evidence (function 16 writes at most 123)


@dataclass
class Evidence:
    """One thing to audit and record: ``kind`` is write, refused, identity or reads."""

    kind: str
    detail: dict[str, Any]


@dataclass
class Verdicts:
    """What to do with one batch of bytes."""

    forward: bytes = b""  # whole frames for the other side, in order
    to_asset: bytes = b""  # from ``from_asset``/``overdue``: queued requests now sent on
    reply: bytes = b""  # the gateway's own answers to the client (refusals)
    evidence: list[Evidence] = field(default_factory=list)
    close: str = ""  # non-empty: end this connection, for this reason


def accesses_of(unit: int, request: Request) -> list[Access]:
    """The reads and writes a request makes, as policy judges them (none: by number only)."""
    fc = request.function
    if request.is_device_identification:
        return [Access(READ, unit)]
    if fc in (1, 2, 3, 4):
        return [Access(READ, unit, request.space, request.address, request.last)]
    if fc == 23:
        last_read = request.read_address + request.read_quantity - 1
        return [
            Access(READ, unit, "hr", request.read_address, last_read),
            Access(WRITE, unit, "hr", request.address, request.last),
        ]
    if request.is_write:
        return [Access(WRITE, unit, request.space, request.address, request.last)]
    return []


def describe(unit: int, request: Request) -> dict[str, Any]:
    """A request as evidence shows it: unit, function, addresses, values."""
    out: dict[str, Any] = {"unit": unit, "function": request.function}
    if request.space:
        out.update(space=request.space, address=request.address, quantity=request.quantity)
    if request.function == 22:
        out.update(and_mask=request.values[0], or_mask=request.values[1])
    elif request.is_write:
        out["values"] = list(request.values[:MAX_VALUES_SHOWN])
    if request.function == 23:
        out.update(read_address=request.read_address, read_quantity=request.read_quantity)
    return out


@dataclass
class _Pending:
    frame: Frame
    request: Request


class ModbusGuard:
    """One tunnelled connection's Modbus state (see the module docstring)."""

    def __init__(
        self, grants: Callable[[], Grants], write_until: Callable[[], dt.datetime | None],
        clock: Clock,
    ) -> None:  # fmt: skip
        self._grants = grants
        self._write_until = write_until
        self._clock = clock
        self._client = FrameReader()
        self._asset = FrameReader()
        self._pending: dict[int, deque[_Pending]] = {}
        self._in_flight = 0  # accepted, not yet answered (queued or at the PLC)
        self._queued: deque[_Pending] = deque()  # accepted, waiting for the PLC's window
        self._at_asset: deque[_Pending] = deque()  # sent to the PLC, not yet answered
        self.sent = 0  # requests sent to the PLC (the tunnel's overdue timer follows it)
        self._parsed_from: Grants | None = None
        self._parsed: list[tuple[ModbusScope, dt.datetime | None]] = []
        self._in_force: list[ModbusScope] = []
        # Verdicts on requests that write nothing, by (unit, PDU), under the scopes in force:
        # an HMI or a diagnosis tool asks the same few reads over and over.
        self._judged: dict[tuple[int, bytes], tuple[Request, Verdict]] = {}
        self._next_end: dt.datetime | None = None  # when _in_force must be filtered again
        self.reads: dict[tuple[int, int, str, int, int], int] = {}
        self.refused = 0

    # -- client -> PLC ---------------------------------------------------------------------
    def from_client(self, data: bytes) -> Verdicts:
        out = Verdicts()
        try:
            frames = self._client.feed(data)
        except FramingError as exc:
            out.close = f"malformed request: {exc}"
            out.evidence.append(Evidence("refused", {"reason": out.close}))
            return out
        forward: list[bytes] = []
        reply: list[bytes] = []
        now: dt.datetime | None = None
        for frame in frames:
            now = now or self._clock()
            scopes = self._scopes(now)
            known = self._judged.get((frame.unit, frame.pdu))
            if known is not None:  # a read asked before under the same grants
                request, verdict = known
            else:
                try:
                    request = decode_request(frame.pdu)
                except PduError as exc:
                    reply.append(exception_frame(frame, exc.code))
                    self._refuse(out, frame, None, int(exc.code), f"malformed: {exc}")
                    continue
                verdict = judge(
                    scopes, request.function, accesses_of(frame.unit, request),
                    self._window_open(now),
                )  # fmt: skip
                if not request.is_write and len(self._judged) < MAX_JUDGED:
                    self._judged[(frame.unit, frame.pdu)] = (request, verdict)
            if not verdict.allowed:
                reply.append(exception_frame(frame, ExceptionCode(verdict.exception)))
                self._refuse(out, frame, request, verdict.exception, verdict.reason)
                continue
            if self._in_flight >= MAX_PENDING:
                out.close = f"more than {MAX_PENDING} requests awaiting answers"
                out.evidence.append(Evidence("refused", {"reason": out.close}))
                break
            pending = _Pending(frame, request)
            self._pending.setdefault(frame.transaction_id, deque()).append(pending)
            self._in_flight += 1
            if request.is_read and not request.is_write:
                self._count_read(frame.unit, request)
            self._queued.append(pending)
        forward += self._release()
        out.forward, out.reply = b"".join(forward), b"".join(reply)
        return out

    def _release(self) -> list[bytes]:
        """Queued requests the PLC's window has room for, now sent."""
        sent = []
        while self._queued and len(self._at_asset) < ASSET_WINDOW:
            pending = self._queued.popleft()
            self._at_asset.append(pending)
            self.sent += 1
            sent.append(pending.frame.encode())
        return sent

    def overdue(self, sent: int) -> Verdicts:
        """The tunnel's timer: if request number ``sent`` (``self.sent`` when it went) is
        still the oldest unanswered at the PLC, give it up (a write among them is evidence
        with result "no response") and send what waits behind it."""
        out = Verdicts()
        if not self._at_asset or self.sent - len(self._at_asset) + 1 != sent:
            return out
        pending = self._at_asset.popleft()
        self._forget(pending)
        if pending.request.is_write:
            out.evidence.append(self._unanswered(pending))
        out.to_asset = b"".join(self._release())
        return out

    def _forget(self, pending: _Pending) -> None:
        waiting = self._pending.get(pending.frame.transaction_id)
        if waiting is not None and pending in waiting:
            waiting.remove(pending)
            if not waiting:
                del self._pending[pending.frame.transaction_id]
        self._in_flight -= 1

    @staticmethod
    def _unanswered(pending: _Pending) -> Evidence:
        detail = describe(pending.frame.unit, pending.request)
        detail.update(transaction_id=pending.frame.transaction_id, result="no response",
                      by="asset")  # fmt: skip
        return Evidence("write", detail)

    def _scopes(self, now: dt.datetime) -> list[ModbusScope]:
        """The scopes in force at ``now``: parsed once per grants tuple, filtered again only
        when ``now`` passes the earliest end among them."""
        grants = self._grants()
        if grants is not self._parsed_from or (
            self._next_end is not None and now >= self._next_end
        ):
            if grants is not self._parsed_from:
                self._parsed = [(parse_modbus_action(a), until) for a, until in grants]
                self._parsed_from = grants
            self._in_force = [s for s, until in self._parsed if until is None or now < until]
            self._judged.clear()
            ends = [until for _, until in self._parsed if until is not None and now < until]
            self._next_end = min(ends) if ends else None
        return self._in_force

    def _window_open(self, now: dt.datetime) -> bool:
        until = self._write_until()
        return until is not None and now < until

    def _refuse(
        self, out: Verdicts, frame: Frame, request: Request | None, code: int, reason: str
    ) -> None:
        self.refused += 1
        detail: dict[str, Any] = (
            describe(frame.unit, request) if request is not None
            else {"unit": frame.unit, "function": frame.function}
        )  # fmt: skip
        detail.update(transaction_id=frame.transaction_id, result=f"exception {code:02d}",
                      reason=reason, by="gateway")  # fmt: skip
        kind = "write" if request is not None and request.is_write else "refused"
        out.evidence.append(Evidence(kind, detail))

    def _count_read(self, unit: int, request: Request) -> None:
        key = (unit, request.function, request.space, request.address, request.last)
        if key not in self.reads and len(self.reads) >= MAX_READ_RANGES:
            key = (unit, request.function, "other", 0, 0)
        self.reads[key] = self.reads.get(key, 0) + 1

    # -- PLC -> client ---------------------------------------------------------------------
    def from_asset(self, data: bytes) -> Verdicts:
        out = Verdicts()
        try:
            frames = self._asset.feed(data)
        except FramingError as exc:
            out.close = f"malformed response: {exc}"
            out.evidence.append(Evidence("refused", {"reason": out.close, "by": "asset"}))
            return out
        forward: list[bytes] = []
        for frame in frames:
            pending = next(
                (p for p in self._at_asset if p.frame.transaction_id == frame.transaction_id),
                None,
            )
            if pending is None:  # answers nothing asked: the client would drop it too
                out.evidence.append(Evidence("refused", {
                    "reason": "response to no pending request", "by": "asset",
                    "transaction_id": frame.transaction_id, "unit": frame.unit,
                }))  # fmt: skip
                continue
            self._at_asset.remove(pending)
            self._forget(pending)
            forward.append(frame.encode())
            self._answered(out, pending, frame)
        out.forward = b"".join(forward)
        out.to_asset = b"".join(self._release())
        return out

    def _answered(self, out: Verdicts, pending: _Pending, frame: Frame) -> None:
        request = pending.request
        if not (request.is_write or request.is_device_identification):
            return
        try:
            response = decode_response(frame.pdu, request)
            result = "ok" if response.ok else f"exception {response.exception:02d}"
        except PduError as exc:
            response, result = None, f"malformed response: {exc}"
        if request.is_write:
            detail = describe(pending.frame.unit, request)
            detail.update(transaction_id=frame.transaction_id, result=result, by="asset")
            out.evidence.append(Evidence("write", detail))
        elif response is not None and response.ok:
            identity = device_identity(response)
            if identity:
                out.evidence.append(Evidence("identity", identity))

    # -- end -------------------------------------------------------------------------------
    def finish(self) -> list[Evidence]:
        """At the end of the connection: writes that got no answer, and the read counts."""
        out = [
            self._unanswered(pending)
            for waiting in self._pending.values()
            for pending in waiting
            if pending.request.is_write
        ]
        self._pending.clear()
        self._queued.clear()
        self._at_asset.clear()
        if self.reads or self.refused:
            ranges = [
                {"unit": u, "function": f, "space": s, "first": a, "last": b, "count": n}
                for (u, f, s, a, b), n in sorted(self.reads.items(), key=lambda kv: -kv[1])
            ]
            out.append(Evidence("reads", {
                "requests": sum(self.reads.values()), "refused": self.refused,
                "ranges": ranges[:100], "ranges_total": len(ranges),
            }))  # fmt: skip
        return out
