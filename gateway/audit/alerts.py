"""Security alerts as the audit log holds them: the events behind each kind counted by
``conduit_security_alerts_total`` (``Metrics.alert``), newest first.

The counter lives only in the process that raised it; the audit event written beside each
``alert`` call is the durable record, so this module reads those events back instead of
keeping a store of its own. ``ALERT_KINDS`` maps each alert kind to the audit action and,
where that action also records ordinary outcomes, the detail ``reason`` that marks the alert.
Does not raise alerts (``gateway.services.Metrics.alert`` does) nor decide who may read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from gateway.audit.chain import AuditEvent
from gateway.audit.log import _EVENT_COLUMNS
from gateway.audit.tables import AuditEventRow


@dataclass(frozen=True)
class AlertSource:
    kind: str  # the label of conduit_security_alerts_total
    action: str  # the audit action written beside the alert
    reason: str  # the detail's "reason" that marks it ("" when every such event is one)
    meaning: str


ALERT_KINDS = (
    AlertSource("hostkey_mismatch", "upstream.hostkey_mismatch", "",
                "An asset offered a host key other than the pinned one: a man in the middle, "
                "or a rebuilt asset nobody pinned again."),
    AlertSource("client_integrity_failure", "session.end", "client_integrity_failure",
                "A packet of an SSH session was altered on its way to the gateway."),
    AlertSource("certificate_outside_register", "login.failure", "certificate-not-in-register",
                "A certificate signed with the gateway's CA key that the gateway never issued: "
                "the CA key has been used elsewhere."),
)  # fmt: skip


@dataclass(frozen=True)
class Alert:
    kind: str
    meaning: str
    event: AuditEvent
    detail: dict[str, Any]


def _kind_of(event: AuditEvent) -> tuple[AlertSource, dict[str, Any]] | None:
    detail = event.detail_object()
    for source in ALERT_KINDS:
        if event.action == source.action and (
            not source.reason or detail.get("reason") == source.reason
        ):
            return source, detail
    return None


async def recent_alerts(sessions: async_sessionmaker[Any], limit: int) -> list[Alert]:
    """The newest ``limit`` alerts of every kind, newest first."""
    row = AuditEventRow
    # Canonical detail JSON (sorted keys, no spaces) holds this exact text; the Python check
    # in ``_kind_of`` is the one that counts, the LIKE only keeps the scan small.
    matches = [
        (row.action == s.action) & row.detail.contains(f'"reason":"{s.reason}"')
        if s.reason
        else row.action == s.action
        for s in ALERT_KINDS
    ]
    query = select(*_EVENT_COLUMNS).where(or_(*matches)).order_by(row.id.desc()).limit(limit)
    async with sessions() as db:
        events = [AuditEvent(*r) for r in (await db.execute(query)).all()]
    alerts = []
    for event in events:
        found = _kind_of(event)
        if found is not None:
            alerts.append(Alert(found[0].kind, found[0].meaning, event, found[1]))
    return alerts
