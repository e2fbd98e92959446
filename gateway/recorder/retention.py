"""Retention: delete recordings older than the configured number of days, each audited.

A recording expires when it is closed and started more than ``retention_days`` ago (open
recordings are never deleted). For each one an audit event is written *before* anything
is removed (no audit, no deletion), then its data key is deleted (crypto-shredding: the
content is unreadable even if the file cannot be removed), then its file, then its text
index and catalog row. A failure is audited and the next recording is tried. Does not
schedule itself (the serving process or ``conduit recordings retention`` calls it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass, field

from gateway.recorder import catalog
from gateway.recorder.files import delete_data_key, delete_recording_file
from gateway.recorder.service import RecordingService

log = logging.getLogger(__name__)


@dataclass
class RetentionReport:
    deleted: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


async def apply_retention(
    service: RecordingService, retention_days: int, *, actor: str = "system"
) -> RetentionReport:
    """Delete every expired recording; ``retention_days`` 0 keeps everything."""
    report = RetentionReport()
    if retention_days <= 0:
        return report
    now = service.clock()
    cutoff = now - dt.timedelta(days=retention_days)
    async with service.sessions() as db:
        expired = await catalog.closed_before(db, cutoff)
    for entry in expired:
        detail: dict[str, object] = {
            "reason": "retention",
            "retention_days": retention_days,
            "started_at": entry.started_at.isoformat(),
            "user": entry.username,
            "asset": entry.asset,
            "size_bytes": entry.size_bytes,
        }
        await service.audit.record(
            actor=actor,
            action="recording.delete",
            result="success",
            target=entry.id,
            detail=detail,
        )
        try:
            await asyncio.to_thread(delete_data_key, service.keys_root, entry.data_key_id)
            await asyncio.to_thread(
                delete_recording_file, service.store.root, entry.id, entry.started_at
            )
            async with service.sessions() as db, db.begin():
                await catalog.delete_entry(db, entry.id)
        except Exception as exc:  # one bad recording must not stop retention for the rest
            log.warning("retention could not delete recording %s: %s", entry.id, exc)
            await service.audit.record(
                actor=actor,
                action="recording.delete",
                result="error",
                target=entry.id,
                detail={"reason": "retention", "error": type(exc).__name__},
            )
            report.failed.append((entry.id, str(exc)))
            continue
        report.deleted.append(entry.id)
    return report
