"""Recent refusals and security alerts from the audit log, for the admin dashboard.

A refusal is an event whose action ends in ``.refused`` or ``.denied`` (``portal.refused``,
``api.refused``, ``ssh.refused``, ``operation.denied``...). A security alert is the audited
event behind each ``conduit_security_alerts_total`` kind (decision 0011): a host key that
did not match its pin, a certificate signed with our CA key but never issued here, and a
session ended by a client packet that failed its integrity check. Both reads are bounded to
events since an instant the caller gives (the ``time`` index) and to a row limit, newest
first. Does not raise alerts (``Metrics.alert``) and does not decide who may read them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from gateway.audit.chain import AuditEvent
from gateway.audit.log import _EVENT_COLUMNS
from gateway.audit.tables import AuditEventRow

# Canonical detail JSON (sorted keys, no spaces) writes these exact texts.
_CERTIFICATE = '"reason":"certificate-not-in-register"'
_INTEGRITY = '"reason":"client_integrity_failure"'


@dataclass(frozen=True)
class Alert:
    """An audited event that raised a security alert, with the alert's kind."""

    kind: str
    event: AuditEvent


def _alert_kind(event: AuditEvent) -> str:
    if event.action == "upstream.hostkey_mismatch":
        return "hostkey_mismatch"
    if _CERTIFICATE in event.detail:
        return "certificate_outside_register"
    return "client_integrity_failure"


async def _newest(
    sessions: async_sessionmaker[Any], condition: Any, since: dt.datetime, limit: int
) -> list[AuditEvent]:
    query = (
        select(*_EVENT_COLUMNS)
        .where(AuditEventRow.time >= since, condition)
        .order_by(AuditEventRow.id.desc())
        .limit(limit)
    )
    async with sessions() as db:
        return [AuditEvent(*row) for row in (await db.execute(query)).all()]


async def recent_refusals(
    sessions: async_sessionmaker[Any], since: dt.datetime, limit: int = 20
) -> list[AuditEvent]:
    """The newest ``limit`` refusals since ``since``, newest first."""
    action = AuditEventRow.action
    condition = or_(action.like("%.refused"), action.like("%.denied"))
    return await _newest(sessions, condition, since, limit)


async def recent_alerts(
    sessions: async_sessionmaker[Any], since: dt.datetime, limit: int = 20
) -> list[Alert]:
    """The newest ``limit`` security alerts since ``since``, newest first."""
    row = AuditEventRow
    condition = or_(
        row.action == "upstream.hostkey_mismatch",
        row.detail.contains(_CERTIFICATE),  # a login.failure or an ssh.key.refused
        and_(row.action == "session.end", row.detail.contains(_INTEGRITY)),
    )
    events = await _newest(sessions, condition, since, limit)
    return [Alert(_alert_kind(event), event) for event in events]
