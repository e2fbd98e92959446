"""Filtered reads of the audit log: one page newest first (keyset by id), or every match
in id order in batches (for exports), and a verification of the chain run off the event loop.

Filters are exact matches on actor, action (or a set of actions), target and result, a time
range, and a session id found in the detail JSON. The session filter is a substring match on
the canonical detail text (``"session_id":"ID"``), which no index serves, so callers bound it
with a time range (the session's recording gives one). Does not decide who may read (the
web pages check the capability) and does not format events (``AuditEvent.as_json`` and
``syslog.format_syslog`` do).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from gateway.audit.chain import AuditEvent
from gateway.audit.log import _EVENT_COLUMNS, READ_BATCH, AuditLog
from gateway.audit.tables import AuditEventRow
from gateway.audit.verify import AuditVerifyResult
from gateway.config import Settings
from gateway.db.engine import make_engine, make_sessionmaker

# Session ids are hex today (``sessions.live``); the catalog allows 64 characters. Anything
# else is refused before it reaches a LIKE pattern, so it can hold no wildcard.
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class AuditFilter:
    """What to select; empty strings and None mean "any"."""

    actor: str = ""
    action: str = ""
    actions: tuple[str, ...] = ()
    target: str = ""
    result: str = ""
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    session_id: str = ""

    def __post_init__(self) -> None:
        if self.session_id and SESSION_ID.fullmatch(self.session_id) is None:
            raise ValueError("session id must be letters, digits, '-' or '_' (at most 64)")


def _where(query: Any, f: AuditFilter) -> Any:
    """``query`` (a SELECT over audit_events) narrowed by ``f``."""
    row = AuditEventRow
    for column, value in ((row.actor, f.actor), (row.action, f.action),
                          (row.target, f.target), (row.result, f.result)):  # fmt: skip
        if value:
            query = query.where(column == value)
    if f.actions:
        query = query.where(row.action.in_(f.actions))
    if f.since is not None:
        query = query.where(row.time >= f.since)
    if f.until is not None:
        query = query.where(row.time < f.until)
    if f.session_id:
        # Canonical detail JSON (sorted keys, no spaces) writes this exact text.
        query = query.where(row.detail.contains(f'"session_id":"{f.session_id}"'))
    return query


async def page(
    sessions: async_sessionmaker[Any], f: AuditFilter, *, before: int | None, limit: int
) -> list[AuditEvent]:
    """At most ``limit`` matching events with id < ``before``, newest first."""
    query = _where(select(*_EVENT_COLUMNS), f)
    if before is not None:
        query = query.where(AuditEventRow.id < before)
    query = query.order_by(AuditEventRow.id.desc()).limit(limit)
    async with sessions() as db:
        return [AuditEvent(*row) for row in (await db.execute(query)).all()]


async def matching(
    sessions: async_sessionmaker[Any], f: AuditFilter, *, max_events: int
) -> AsyncIterator[AuditEvent]:
    """Every matching event in id order (at most ``max_events``), read in batches by id."""
    after, sent = 0, 0
    while sent < max_events:
        batch = min(READ_BATCH, max_events - sent)
        query = _where(select(*_EVENT_COLUMNS), f).where(AuditEventRow.id > after)
        async with sessions() as db:
            rows = (await db.execute(query.order_by(AuditEventRow.id).limit(batch))).all()
        for row in rows:
            yield AuditEvent(*row)
        sent += len(rows)
        if len(rows) < batch:
            return
        after = rows[-1][0]


async def verify_elsewhere(
    settings: Settings, signing_key: Ed25519PrivateKey, clock: Callable[[], dt.datetime]
) -> AuditVerifyResult:
    """``AuditLog.verify`` in a worker thread with its own event loop and engine, so hashing
    a long chain never stalls the serving loop (SQLite and PostgreSQL alike)."""

    async def run() -> AuditVerifyResult:
        engine = make_engine(settings)
        try:
            return await AuditLog(make_sessionmaker(engine), signing_key, clock).verify()
        finally:
            await engine.dispose()

    return await asyncio.to_thread(lambda: asyncio.run(run()))
