"""Recording storage quota: how full the store is, the 80% warning and the 100% refusal.

Usage is the catalog's sum of closed recordings' sizes (measured from the file at close),
so checking costs one query per session start; a recording still being written counts once
it is closed. At or above ``WARN_FRACTION`` a warning is logged and reported; at or above
the quota new recordings are refused, and so are their sessions (fail closed). Does not
delete anything (see ``retention``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker

from gateway.recorder import catalog
from recordings import RecordingUnavailable

log = logging.getLogger(__name__)

WARN_FRACTION = 0.8


@dataclass(frozen=True)
class QuotaStatus:
    used_bytes: int
    quota_bytes: int  # 0: no quota

    @property
    def fraction(self) -> float:
        return self.used_bytes / self.quota_bytes if self.quota_bytes else 0.0

    @property
    def warning(self) -> bool:
        return bool(self.quota_bytes) and self.fraction >= WARN_FRACTION

    @property
    def exceeded(self) -> bool:
        return bool(self.quota_bytes) and self.used_bytes >= self.quota_bytes

    def describe(self) -> str:
        if not self.quota_bytes:
            return f"{self.used_bytes} bytes used, no quota"
        return f"{self.used_bytes} of {self.quota_bytes} bytes used ({self.fraction:.0%})" + (
            "; new recordings are refused" if self.exceeded else ""
        )


class QuotaExceeded(RecordingUnavailable):
    """The recordings quota is used up: the recording, and so the session, is refused."""

    def __init__(self, status: QuotaStatus) -> None:
        super().__init__(f"recording quota exceeded: {status.describe()}")
        self.status = status


async def quota_status(sessions: async_sessionmaker[Any], quota_bytes: int) -> QuotaStatus:
    """Current usage against ``quota_bytes``; logs a warning from 80% on."""
    async with sessions() as db:
        used = await catalog.total_size(db)
    status = QuotaStatus(used, quota_bytes)
    if status.warning:
        log.warning("recordings storage: %s", status.describe())
    return status
