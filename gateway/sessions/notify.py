"""Cross-node wake-ups over PostgreSQL LISTEN/NOTIFY: "a kill for node N", "policy changed".

``announce`` queues a notification inside the caller's transaction, so it is delivered when
(and only if) the change it announces commits. ``Listener`` holds one dedicated asyncpg
connection per serving process and turns notifications into calls of small handlers (which
set events the serving loops wait on). A notification carries no authority and no data a
handler trusts: it only says "look now"; the loops read the database for what to do, and
they also poll (``cluster.poll_seconds``), so a notification that is lost (listener
reconnecting, payload dropped) delays an action by at most one poll. On SQLite nothing is
sent or heard: one process, the poll alone. Does not decide or end anything itself
(docs/decisions/0017).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

log = logging.getLogger(__name__)

KILL_CHANNEL = "conduit_kill"  # payload: the owner node's name
POLICY_CHANNEL = "conduit_policy"  # payload: empty; reload policy_version
RECONNECT_SECONDS = 1.0
PROBE_SECONDS = 30.0  # a quiet connection is checked this often
PAYLOAD_MAX = 255  # node names are at most 255 characters; NOTIFY allows 8000 bytes

Handler = Callable[[str], None]


def is_postgresql(db: AsyncSession | AsyncEngine) -> bool:
    engine = db if isinstance(db, AsyncEngine) else db.get_bind()
    return engine.dialect.name == "postgresql"


async def announce(db: AsyncSession, channel: str, payload: str = "") -> None:
    """Queue a NOTIFY on ``channel`` in ``db``'s transaction (sent at commit; PostgreSQL
    only). The payload is a name, never a secret: every listener on the database sees it."""
    if is_postgresql(db):
        await db.execute(select(func.pg_notify(channel, payload[:PAYLOAD_MAX])))


class Listener:
    """One LISTEN connection with its handlers, reconnecting until cancelled.

    ``on_connect`` runs after every (re)connection: notifications sent while the connection
    was down are lost, so the caller catches up by looking at once.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        handlers: Mapping[str, Handler],
        *,
        connect_timeout: float,
        on_connect: Callable[[], None] = lambda: None,
        name: str = "conduit-listen",
    ) -> None:
        self._engine = engine
        self._handlers = dict(handlers)
        self._timeout = connect_timeout
        self._on_connect = on_connect
        self._name = name
        self.connected = asyncio.Event()

    async def _connect(self) -> Any:
        import asyncpg  # type: ignore[import-untyped]  # PostgreSQL only

        _, params = self._engine.dialect.create_connect_args(self._engine.url)
        server_settings = {"application_name": self._name[:63]}
        return await asyncpg.connect(
            **params, timeout=self._timeout, server_settings=server_settings
        )

    def _dispatch(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        handler = self._handlers.get(channel)
        if handler is None:
            return
        try:
            handler(payload)
        except Exception:  # a broken handler must not stop the others; the poll covers it
            log.exception("notification handler for %s failed", channel)

    async def _until_closed(self, conn: Any, closed: asyncio.Event) -> None:
        """Return when the connection ends; a silently dead one (no RST) is found by a
        probe every ``PROBE_SECONDS``."""
        while not closed.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PROBE_SECONDS):
                    await closed.wait()
                    return
            async with asyncio.timeout(self._timeout):
                await conn.fetchval("SELECT 1")

    async def _listen(self, conn: Any) -> None:
        """Listen on ``conn`` until it ends."""
        closed = asyncio.Event()
        conn.add_termination_listener(lambda _c: closed.set())
        for channel in self._handlers:
            await conn.add_listener(channel, self._dispatch)
        self.connected.set()
        self._on_connect()
        await self._until_closed(conn, closed)

    async def run(self) -> None:
        while True:
            try:
                conn = await self._connect()
            except Exception as exc:  # OSError, TimeoutError or asyncpg's own errors
                log.warning("cannot listen for notifications (%s); polling meanwhile", exc)
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            try:
                await self._listen(conn)
                log.warning("notification connection lost; reconnecting")
            except Exception:  # a failed LISTEN or probe: drop the connection, start again
                log.exception("listening for notifications failed")
            finally:
                self.connected.clear()
                if not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(RECONNECT_SECONDS)
