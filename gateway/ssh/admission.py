"""Admission of SSH connections that have not authenticated yet: caps, fairness, one log line.

An unauthenticated connection costs memory and a login-timeout's worth of time, and anyone
can open one. Two caps bound them: ``[ssh] max_unauthenticated_per_source`` for one source
(an IPv4 address or an IPv6 /64, as OpenSSH's PerSourceNetBlockSize defaults) and
``[ssh] max_unauthenticated`` for the process. One source therefore cannot fill the process
allowance; and when many sources have filled it, a newcomer from a quieter source takes the
place of the oldest pending connection of the busiest source instead of being refused, so a
flood from a few addresses does not lock everyone else out (sources that each hold one or two
connections are refused equally: nothing can tell them apart before authentication).

Every refusal and eviction is counted by reason; the log and the audit trail get the first
at once and then one summary per minute (``ssh.connection.refused``: counts by reason, the
busiest sources), so a flood can flood neither. server.py reports here too the connections
that ended before logging in because we ended them (the login timeout, a protocol violation
such as a 4 GiB packet): refusals as well, audited the same way. Authentication itself and
what happens after it are not handled here (see server.py; asyncssh enforces the timeout).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Protocol

log = logging.getLogger(__name__)
LOG_INTERVAL_SECONDS = 60.0
_MAX_SOURCES_LOGGED = 5
_MAX_SOURCES_TRACKED = 1000  # per log interval: what a summary can name, not a limit


class Pending(Protocol):
    """An admitted connection that the gate may close to make room."""

    def evict(self) -> None: ...


def source_key(address: str) -> str:
    """The unit one cap applies to: an IPv4 address, or the /64 of an IPv6 address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address  # not an IP address (a unix socket, a test transport): itself
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


Summary = Mapping[str, object]


class RefusalLog:
    """Counts refusals by reason and source; logs (and hands ``report``, for the audit trail,
    with the busiest source) the first, then one summary per interval."""

    def __init__(
        self,
        interval: float = LOG_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        report: Callable[[str, Summary], None] | None = None,
    ) -> None:
        self._interval = interval
        self._clock = clock
        self._report = report
        self._reasons: Counter[str] = Counter()
        self._sources: Counter[str] = Counter()
        self._next = float("-inf")
        self._timer: asyncio.TimerHandle | None = None

    def refused(self, reason: str, source: str) -> None:
        self._reasons[reason] += 1
        if source in self._sources or len(self._sources) < _MAX_SOURCES_TRACKED:
            self._sources[source] += 1
        if self._clock() >= self._next:
            self.flush()
        elif self._timer is None:
            # Refusals may stop before the next one would log them: log them on time anyway.
            delay = max(0.0, self._next - self._clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._reasons:
            return
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self._reasons.items()))
        busiest = self._sources.most_common(_MAX_SOURCES_LOGGED)
        sources = ", ".join(f"{source} ({n})" for source, n in busiest)
        log.warning(
            "ssh: dropped %d unauthenticated connection(s) (%s); sources: %s",
            self._reasons.total(),
            reasons,
            sources,
        )
        if self._report is not None:
            self._report(
                busiest[0][0] if busiest else "",
                {
                    "channel": "ssh",
                    "count": self._reasons.total(),
                    "reasons": dict(sorted(self._reasons.items())),
                    # A list, not a map keyed by address: audit consumers get fixed keys.
                    "sources": [{"source": source, "count": n} for source, n in busiest],
                    "distinct_sources": len(self._sources),  # counted up to 1000
                },
            )
        self._reasons.clear()
        self._sources.clear()
        self._next = self._clock() + self._interval


class UnauthenticatedGate:
    """Connections that have not finished authenticating, per source and in total."""

    def __init__(
        self,
        limit: int,
        per_source: int,
        count: Callable[[str], None],
        refusals: RefusalLog | None = None,
    ) -> None:
        self.limit = limit
        self.per_source = per_source
        self._count = count  # reason -> metrics
        self._log = refusals if refusals is not None else RefusalLog()
        self._by_source: dict[str, list[Pending]] = {}
        self.pending = 0

    def admit(self, address: str, conn: Pending) -> bool:
        """Count ``conn`` as pending, or say no (counted and logged)."""
        key = source_key(address)
        mine = self._by_source.get(key, [])
        if len(mine) >= self.per_source:
            self._refuse("unauthenticated_source_cap", key)
            return False
        if self.pending >= self.limit and not self._make_room(len(mine)):
            self._refuse("unauthenticated_cap", key)
            return False
        self._by_source.setdefault(key, []).append(conn)
        self.pending += 1
        return True

    def release(self, address: str, conn: Pending) -> None:
        """``conn`` authenticated or went away."""
        key = source_key(address)
        mine = self._by_source.get(key)
        if mine is None or conn not in mine:
            return  # already evicted
        mine.remove(conn)
        self.pending -= 1
        if not mine:
            del self._by_source[key]

    def _make_room(self, newcomer_holds: int) -> bool:
        """Evict the oldest pending connection of the busiest source if it holds at least two
        more than the newcomer's source: a swap between equals would only churn."""
        key, held = max(self._by_source.items(), key=lambda item: len(item[1]))
        if len(held) < newcomer_holds + 2:
            return False
        victim = held.pop(0)
        self.pending -= 1
        if not held:
            del self._by_source[key]
        self._refuse("unauthenticated_evicted", key)
        victim.evict()
        return True

    def ended_before_login(self, address: str, reason: str) -> None:
        """A connection we ended before it logged in (login timeout, protocol violation):
        counted, logged and audited with the admission refusals."""
        self._refuse(reason, source_key(address))

    def _refuse(self, reason: str, key: str) -> None:
        self._count(reason)
        self._log.refused(reason, key)
