"""``AuditSink``: what a module needs from the audit log, so it can be typed and tested alone.

``gateway.audit.AuditLog`` satisfies it. Callers pass identifiers in ``detail``, never secrets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class AuditSink(Protocol):
    async def record(
        self,
        *,
        actor: str,
        action: str,
        result: str,
        target: str = "",
        source: str = "",
        detail: Mapping[str, object] | None = None,
    ) -> int: ...
