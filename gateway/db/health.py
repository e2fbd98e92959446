"""Whether this process can reach its database now, since when it cannot, and since when
it has reached it without a break.

``DatabaseHealth`` is marked down by any query that loses its connection (the engine's
``handle_error`` hook, and callers through ``failed``) and by its own probe; only the probe
(``SELECT 1`` within ``PROBE_TIMEOUT_SECONDS``) marks it up again, so one lucky query cannot
flap it. ``watch`` runs the probe every ``PROBE_SECONDS`` and calls the callbacks the serving
process gave it: ``on_up`` when the database answers again (drain the audit spool, finish
deferred catalog updates), ``on_lost`` once when it has been away longer than the grace
(end live sessions with ``database_lost``).

On SQLite the database is a local file: it cannot be "unreachable" apart from the disk
itself, so the watch does not run there and the health stays up (behaviour unchanged).
``up_for`` says how long the database has answered without a break (since this process
started or the end of its last outage): cluster membership reaps other members only after
that spans a whole dead limit (decision 0023), since nobody could heartbeat in an outage.
Does not refuse anything itself: the SSH front end, the portal and the readiness check ask
``up``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import event, exc, text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)
PROBE_SECONDS = 1.0
PROBE_TIMEOUT_SECONDS = 2.0
DATABASE_LOST = "database_lost"  # the end reason of a session the outage outlasted
UNREACHABLE_TEXT = "the gateway cannot reach its database; try again shortly"
# Refusals audited one by one per outage; beyond, only counted (metrics, log), so a flood of
# connection attempts cannot fill the audit spool that live sessions' events need.
REFUSALS_AUDITED_PER_OUTAGE = 1000


# What a lost or refused connection raises, for handlers at the edges (``is_unreachable``
# then tells an outage from a refused query).
UNREACHABLE_ERRORS: tuple[type[Exception], ...] = (
    OSError, TimeoutError, exc.DBAPIError, exc.DisconnectionError, exc.TimeoutError,
)  # fmt: skip


def is_unreachable(error: BaseException) -> bool:
    """Whether ``error`` says the database could not be reached (not: refused the query).

    asyncpg raises a plain ``OSError`` when it cannot connect; a connection lost mid-query
    comes as a ``DBAPIError`` whose connection SQLAlchemy invalidated.
    """
    if isinstance(error, OSError | TimeoutError):
        return True
    if isinstance(error, exc.DBAPIError):
        if error.connection_invalidated:
            return True
        if isinstance(error, exc.InterfaceError | exc.OperationalError):
            return True
        return isinstance(error.orig, OSError | TimeoutError)
    if isinstance(error, exc.DisconnectionError | exc.TimeoutError):
        return True
    name = type(error).__name__  # asyncpg's own, when one escapes SQLAlchemy's wrapping
    return name in {"ConnectionDoesNotExistError", "CannotConnectNowError", "InterfaceError"}


class DatabaseHealth:
    def __init__(self, engine: AsyncEngine | None, *, grace_seconds: float) -> None:
        self._engine = engine
        self.grace_seconds = grace_seconds
        self._down_since: float | None = None
        self._up_since = time.monotonic()  # a new process has not yet seen it for long
        self._lost_called = False
        self._refusals = 0
        if engine is not None:
            event.listen(engine.sync_engine, "handle_error", self._on_error)

    @property
    def up(self) -> bool:
        return self._down_since is None

    def down_for(self) -> float:
        """Seconds since the database was last seen away; 0 while it is up."""
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since

    def up_for(self) -> float:
        """Seconds the database has been reachable without a break (0 while it is down;
        unbounded where it is not watched: SQLite, a CLI command)."""
        if self._engine is None:
            return float("inf")
        return 0.0 if self._down_since is not None else time.monotonic() - self._up_since

    def failed(self, error: BaseException) -> bool:
        """Mark down if ``error`` means unreachable; returns whether it did."""
        if self._engine is None or not is_unreachable(error):
            return False
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._lost_called = False
            self._refusals = 0
            log.error("database unreachable: %s", type(error).__name__)
        return True

    def audit_refusal(self) -> bool:
        """Whether the next refusal of this outage is audited on its own (see the limit)."""
        self._refusals += 1
        if self._refusals == REFUSALS_AUDITED_PER_OUTAGE + 1:
            log.error("more than %d refusals in this outage: no longer audited one by one",
                      REFUSALS_AUDITED_PER_OUTAGE)  # fmt: skip
        return self._refusals <= REFUSALS_AUDITED_PER_OUTAGE

    def _on_error(self, context: Any) -> None:
        # A stale pooled connection found by pre-ping is replaced quietly by the pool; if
        # the replacement cannot connect either, the caller gets that error (and the probe).
        if context.is_disconnect and not getattr(context, "is_pre_ping", False):
            self.failed(context.original_exception or OSError("disconnect"))

    async def probe(self) -> bool:
        """``SELECT 1`` on a fresh checkout within the timeout; updates and returns ``up``."""
        if self._engine is None:
            return True
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_SECONDS), self._engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as error:  # whatever the driver raised, the database did not answer
            if not self.failed(error):
                self.failed(OSError(str(error)))
            return False
        if self._down_since is not None:
            log.warning("database reachable again after %.1f s", self.down_for())
            self._down_since = None
            self._up_since = time.monotonic()
        return True

    async def watch(
        self,
        on_up: Callable[[], Awaitable[object]],
        on_lost: Callable[[str], Awaitable[object]],
    ) -> None:
        """Probe until cancelled: ``on_up`` after each probe that finds the database (it must
        be cheap when there is nothing to do), ``on_lost(database_lost)`` once per outage
        when it outlasts the grace."""
        while True:
            was_up = self.up
            if await self.probe():
                try:
                    await on_up()
                except Exception as error:  # retried after the next probe
                    self.failed(error)
                    log.exception("catching up after the database outage failed")
            elif not self._lost_called and self.down_for() >= self.grace_seconds:
                self._lost_called = True
                log.error(
                    "database away for %.0f s (grace %s s): ending live sessions",
                    self.down_for(),
                    self.grace_seconds,
                )
                try:
                    await on_lost(DATABASE_LOST)
                except Exception:
                    log.exception("ending sessions after the database outage failed")
            if was_up and not self.up:
                continue  # look again at once: the first probe after a loss often succeeds
            await asyncio.sleep(PROBE_SECONDS)
