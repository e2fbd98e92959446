"""Where a Modbus connection's evidence goes: the session's recording at once, the audit log
in order through one owned task.

Each ``Evidence`` from the guard becomes a ``DECODED`` event in the recording (JSON, at the
instant it happened) and a call to ``Broker.modbus_event`` (audit, passive inventory),
queued so a connection's events reach the audit log in the order they happened. Refusals
other than writes are audited up to ``MAX_AUDITED_REFUSALS`` per connection (the rest are
counted in the closing ``modbus.reads`` summary and are all in the recording): a scanning
tool cannot flood the audit log. Writes are always audited. Does not judge anything.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

from gateway.ot.guard import Evidence
from recordings.tunnel import TunnelEvent

if TYPE_CHECKING:
    from gateway.sessions.broker import Broker
    from gateway.sessions.ticket import Ticket

MAX_AUDITED_REFUSALS = 100
log = logging.getLogger(__name__)


def recorded(evidence: Evidence) -> bytes:
    return json.dumps({"kind": evidence.kind, **evidence.detail}, separators=(",", ":"),
                      sort_keys=True).encode()  # fmt: skip


class EvidenceSink:
    """One tunnelled Modbus connection's evidence (see the module docstring)."""

    def __init__(self, broker: Broker, ticket: Ticket) -> None:
        self._broker = broker
        self._ticket = ticket
        self._queue: asyncio.Queue[Evidence | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._refusals = 0

    def add(self, items: list[Evidence]) -> None:
        for evidence in items:
            self._ticket.writer.record(TunnelEvent.DECODED, recorded(evidence))
            if evidence.kind == "refused":
                self._refusals += 1
                if self._refusals > MAX_AUDITED_REFUSALS:
                    continue
            if self._worker is None:
                self._worker = self._broker.tasks.start(
                    f"modbus-audit-{self._ticket.session_id}", self._drain()
                )
            self._queue.put_nowait(evidence)

    async def _drain(self) -> None:
        while (evidence := await self._queue.get()) is not None:
            try:
                await self._broker.modbus_event(self._ticket, evidence.kind, evidence.detail)
            except Exception:  # the recording has it; the next events still get their turn
                log.exception("auditing Modbus %s of %s failed", evidence.kind,
                              self._ticket.session_id)  # fmt: skip

    async def flushed(self) -> None:
        """Wait until everything added so far is audited (then the sink takes no more)."""
        if self._worker is not None:
            self._queue.put_nowait(None)
            await self._worker
