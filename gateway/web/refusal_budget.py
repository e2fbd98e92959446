"""Which refusals of an endpoint anyone can reach are audited one by one.

A refusal that costs its caller one cheap request (a malformed id, a forged grant, a database
outage) must not cost the gateway an unbounded stream of audit writes, nor fill the audit
spool that live sessions' events need during an outage. So each source gets a token bucket
(``BURST`` events, refilled at ``PER_SECOND``; at most ``MAX_SOURCES`` sources tracked, the
longest idle forgotten first), and while the database is away the outage's own cap applies
as well (``DatabaseHealth.audit_refusal``, shared with the portal's 503s). What is not audited
one by one is counted (``conduit_portal_refusals_unaudited_total{endpoint}``), logged, and
summarised in one ``portal.refused`` event per ``SUMMARY_SECONDS`` (count and busiest
sources). Does not refuse anything itself (its caller has), and is not for refusals of a
caller who proved who it is: those are audited always.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable

from gateway.services import Services

log = logging.getLogger(__name__)
BURST = 10.0
PER_SECOND = 0.5
MAX_SOURCES = 4096
SUMMARY_SECONDS = 60.0
_SOURCES_SUMMARISED = 10


class RefusalBudget:
    def __init__(
        self,
        services: Services,
        endpoint: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._s = services
        self.endpoint = endpoint
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at
        self._unaudited: Counter[str] = Counter()
        self._timer: asyncio.TimerHandle | None = None

    def audited(self, source: str) -> bool:
        """Whether this refusal from ``source`` gets its own audit event; if not, it is
        counted for the next summary."""
        if self._spend(source) and (self._s.db_health.up or self._s.db_health.audit_refusal()):
            return True
        self._s.metrics.portal_refusals_unaudited.labels(self.endpoint).inc()
        if not self._unaudited:
            log.warning("%s: refusals beyond the audit budget; summarised", self.endpoint)
        if source in self._unaudited or len(self._unaudited) < MAX_SOURCES:
            self._unaudited[source] += 1
        else:
            self._unaudited["other"] += 1
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(SUMMARY_SECONDS, self.flush)
        return False

    def _spend(self, source: str) -> bool:
        now = self._clock()
        tokens, at = self._buckets.pop(source, (BURST, now))
        tokens = min(BURST, tokens + (now - at) * PER_SECOND)
        if len(self._buckets) >= MAX_SOURCES:
            self._buckets.popitem(last=False)  # the longest idle
        spent = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if spent else tokens, now)
        return spent

    def flush(self) -> asyncio.Task[None] | None:
        """Audit the summary of what was not audited one by one (if anything); the task
        that writes it (owned by the process's task set)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._unaudited:
            return None
        busiest = self._unaudited.most_common(_SOURCES_SUMMARISED)
        detail = {
            "endpoint": self.endpoint,
            "reason": "refusals beyond the audit budget, summarised",
            "count": self._unaudited.total(),
            "sources": [{"source": source, "count": n} for source, n in busiest],
            "distinct_sources": len(self._unaudited),
        }
        self._unaudited.clear()
        record = self._s.audit.record(
            actor="anonymous", action="portal.refused", result="denied",
            source=busiest[0][0], target=self.endpoint, detail=detail,
        )  # fmt: skip
        return self._s.tasks.start(f"audit-{self.endpoint}-refusals", record)
