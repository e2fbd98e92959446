"""Live-session registry: who is connected where, and the kill switch.

Every protocol front end registers its sessions here with a kill handle; ``end_all`` is
what shutdown uses. Does not decide access (see ``rbac`` and ``gateway.sessions.broker``) and, for
now, knows only this process's sessions; the cross-process owner/heartbeat mechanism plugs
in behind the same methods.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

KillHandle = Callable[[str], Awaitable[None]]


@dataclass
class LiveSession:
    session_id: str
    node: str
    username: str
    asset: str
    protocol: str
    started_at: dt.datetime
    valid_until: dt.datetime | None
    kill: KillHandle = field(repr=False)
    bytes_up: int = 0
    bytes_down: int = 0
    worker: int = 0  # the process of ``node`` that relays it


class LiveRegistry:
    def __init__(self, node: str) -> None:
        self.node = node
        self._sessions: dict[str, LiveSession] = {}

    def new_id(self) -> str:
        # Hex, not urlsafe base64: an id starting with "-" was taken for an option by
        # `conduit sessions kill ID` (1 in 64 sessions could not be killed from the CLI).
        return secrets.token_hex(12)

    def register(self, session: LiveSession) -> None:
        self._sessions[session.session_id] = session

    def unregister(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def list(self) -> list[LiveSession]:
        return sorted(self._sessions.values(), key=lambda s: s.started_at)

    def __len__(self) -> int:
        return len(self._sessions)

    async def kill(self, session_id: str, reason: str) -> bool:
        session = self._sessions.get(session_id)
        if session is None:
            return False
        await session.kill(reason)
        self.unregister(session_id)
        return True

    async def end_all(self, reason: str) -> int:
        """End every session (in parallel) with ``reason``; returns how many were live.

        Callers bound the wait with ``asyncio.timeout``.
        """
        sessions = self.list()
        if not sessions:
            return 0
        results = await asyncio.gather(*(s.kill(reason) for s in sessions), return_exceptions=True)
        for session, result in zip(sessions, results, strict=True):
            if isinstance(result, BaseException):
                log.error("ending session %s failed: %r", session.session_id, result)
            self.unregister(session.session_id)
        return len(sessions)
