"""The audit log: append chained events, sign checkpoints, read, verify and export them.

Appends are serialised on the chain head across tasks, processes and nodes: PostgreSQL takes
a transaction-scoped advisory lock, SQLite takes the database write lock up front with
``BEGIN IMMEDIATE``. Does not decide what is audited (callers do) and does not schedule
checkpoints (the serving process calls ``checkpoint()`` on its own timer).

While the database is unreachable (PostgreSQL), ``record`` keeps events in a local spool
(``spool.py``, fsync'd) and ``drain_spool`` adds them to the chain in order once it is back
(docs/decisions/0023).

Details must never contain secrets: callers pass identifiers (user ids, asset names, key
fingerprints), and ``record`` refuses detail keys named like passwords, tokens, codes or keys.
One exception is asked for as evidence: ``session.start`` of an exec session carries its
command line (``gateway.sessions.broker``), which can hold something the user typed; like every
detail it is also in the SIEM export.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.audit.chain import (
    GENESIS_HASH,
    AuditError,
    AuditEvent,
    Checkpoint,
    check_code_fields,
    checkpoint_message,
    clean_fields,
    encode_detail,
    event_hash,
)
from gateway.audit.spool import AuditSpool, SpooledEvent, new_spool_id
from gateway.audit.syslog import SyslogSender, format_syslog
from gateway.audit.tables import AuditCheckpointRow, AuditEventRow
from gateway.audit.verify import AuditVerifyResult, ChainVerifier
from gateway.db.health import DatabaseHealth

log = logging.getLogger(__name__)
Clock = Callable[[], dt.datetime]
Progress = Callable[[int, int], None]

# One lock id for the chain head in every Conduit process sharing a PostgreSQL database:
# the ASCII of "CondAudt", so it is recognisable in pg_locks.
PG_HEAD_LOCK = 0x436F6E6441756474
READ_BATCH = 1000
DRAIN_BATCH = 500  # spooled events added per transaction

_EVENT_COLUMNS = (
    AuditEventRow.id,
    AuditEventRow.time,
    AuditEventRow.actor,
    AuditEventRow.source,
    AuditEventRow.action,
    AuditEventRow.target,
    AuditEventRow.result,
    AuditEventRow.detail,
    AuditEventRow.prev_hash,
    AuditEventRow.hash,
)


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short stable name of a public key: hex SHA-256 of its raw bytes, first 16 bytes."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


async def _lock_head(db: AsyncSession) -> None:
    """Hold the chain head until this transaction ends; must be the first statement."""
    if db.get_bind().dialect.name == "postgresql":
        await db.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_HEAD_LOCK})
    else:
        # pysqlite would only begin (deferred) at the INSERT, after we read a head that
        # another writer may already have moved; IMMEDIATE takes the write lock now and
        # waits for it through the busy timeout.
        await db.execute(text("BEGIN IMMEDIATE"))


class AuditLog:
    """Hash-chained, append-only audit events in the gateway database."""

    def __init__(
        self,
        sessions: async_sessionmaker[Any],
        signing_key: Ed25519PrivateKey,
        clock: Clock,
        *,
        spool: AuditSpool | None = None,
        health: DatabaseHealth | None = None,
    ) -> None:
        self._sessions = sessions
        self._signing_key = signing_key
        self._clock = clock
        # With a spool (PostgreSQL serving processes), events that cannot reach the
        # database are kept on local disk and drained into the chain later (spool.py).
        self._spool = spool
        self._health = health or DatabaseHealth(None, grace_seconds=0)
        # Tasks of this process queue here, not in the database: otherwise each waiting
        # append would hold a pooled connection (starving every other query) and SQLite
        # writers would poll the busy handler with sleeps. The database lock still
        # serialises this process against other processes and nodes.
        self._local_head = asyncio.Lock()

    def _now(self) -> dt.datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the audit clock returned a naive datetime")
        return now.astimezone(dt.UTC)

    async def record(
        self,
        *,
        actor: str,
        action: str,
        result: str,
        target: str = "",
        source: str = "",
        detail: Mapping[str, object] | None = None,
    ) -> int:
        """Append one event and return its id (0 when it was spooled: see ``drain_spool``).

        ``ValueError`` for a malformed action or result and for secret-like detail keys;
        control characters in actor, source and target are escaped, overlong values cut.
        """
        check_code_fields(actor=actor, action=action, result=result)
        actor, source, target = clean_fields(actor=actor, source=source, target=target)
        detail_text = encode_detail(detail)
        event = {"actor": actor, "source": source, "action": action, "target": target,
                 "result": result}  # fmt: skip
        async with self._local_head:
            # Once one event is spooled, every later one is too until the drain has put
            # them in the chain: otherwise the chain's order would not be the events' order.
            if self._spool is not None and (not self._health.up or self._spool.pending()):
                return await self._to_spool(event, detail)
            try:
                return await self._append(event, detail_text, None)
            except Exception as error:
                if self._spool is None or not self._health.failed(error):
                    raise
                log.warning("audit %s spooled: the database is unreachable", action)
                return await self._to_spool(event, detail)

    async def _append(
        self, event: Mapping[str, str], detail_text: str, when: dt.datetime | None
    ) -> int:
        """Insert one event at the head of the chain (the caller holds ``_local_head``);
        ``when`` is a spooled event's own time, else now."""
        return await self._append_all([(event, detail_text, when)])

    async def _append_all(
        self, events: list[tuple[Mapping[str, str], str, dt.datetime | None]]
    ) -> int:
        """Insert ``events`` at the head of the chain in one transaction (all or none);
        returns the last id."""
        async with self._sessions() as db, db.begin():
            await _lock_head(db)
            last = (
                await db.execute(
                    select(AuditEventRow.id, AuditEventRow.hash)
                    .order_by(AuditEventRow.id.desc())
                    .limit(1)
                )
            ).first()
            prev_id, prev_hash = (last[0], last[1]) if last is not None else (0, GENESIS_HASH)
            rows = []
            for event, detail_text, when in events:
                # Read the clock under the lock so event times never run backwards along ids.
                fields: dict[str, Any] = {
                    "id": prev_id + 1,
                    "time": when or self._now(),
                    **event,
                    "detail": detail_text,
                    "prev_hash": prev_hash,
                }
                prev_id, prev_hash = prev_id + 1, event_hash(**fields)
                rows.append({**fields, "hash": prev_hash})
            # Core INSERT: the ORM unit of work would add a flush cycle to every append.
            await db.execute(insert(AuditEventRow), rows)
        return prev_id

    async def _to_spool(self, event: Mapping[str, str], detail: Mapping[str, object] | None) -> int:
        """Keep the event on local disk (fsync'd) for ``drain_spool``; returns 0 (no id yet)."""
        assert self._spool is not None  # noqa: S101 - only called with a spool
        spool_id = new_spool_id()
        spooled = SpooledEvent(
            spool_id=spool_id,
            time=self._now(),
            detail=encode_detail({**(detail or {}), "spool_id": spool_id}),
            **event,
        )
        await asyncio.to_thread(self._spool.append, spooled)
        return 0

    async def drain_spool(self) -> int:
        """Put the spooled events into the chain, in order, with their own times; then drop
        the spool. Returns how many were added. Idempotent: an event whose ``spool_id`` the
        chain holds already (a drain a crash cut short) is skipped, so none is doubled."""
        spool = self._spool
        if spool is None or not spool.pending():
            return 0
        added = 0
        async with self._local_head:
            lock = spool.locked()
            await asyncio.to_thread(lock.__enter__)
            try:
                contents = await asyncio.to_thread(spool.read)
                # Batches of a fixed size from the spool's start, each one transaction. A
                # batch whose first event the chain holds was drained before a crash, whole
                # as it then was; events spooled since may follow it: only those are added.
                for start in range(0, len(contents.events), DRAIN_BATCH):
                    batch = contents.events[start : start + DRAIN_BATCH]
                    if await self._holds(batch[0]):
                        batch = [e for e in batch if not await self._holds(e)]
                        if not batch:
                            continue
                    await self._append_all([
                        ({"actor": e.actor, "source": e.source, "action": e.action,
                          "target": e.target, "result": e.result}, e.detail, e.time)
                        for e in batch
                    ])  # fmt: skip
                    added += len(batch)
                if contents.damaged:
                    # What a crash tore was never acknowledged; the chain still says so.
                    damage = {"actor": "system", "source": "", "action": "audit.spool.damaged",
                              "target": spool.path.name, "result": "error"}  # fmt: skip
                    text = encode_detail({"lines": contents.damaged[:100],
                                          "count": len(contents.damaged)})  # fmt: skip
                    await self._append(damage, text, None)
                await asyncio.to_thread(spool.remove)
            finally:
                lock.__exit__(None, None, None)
        if added:
            log.warning("audit spool drained: %d events added to the chain", added)
        return added

    async def _holds(self, spooled: SpooledEvent) -> bool:
        """Whether the chain has ``spooled`` already (by its time, indexed, and spool id)."""
        async with self._sessions() as db:
            found = await db.scalar(
                select(AuditEventRow.id)
                .where(
                    AuditEventRow.time == spooled.time,
                    AuditEventRow.detail.contains(
                        f'"spool_id":"{spooled.spool_id}"', autoescape=True
                    ),
                )
                .limit(1)
            )
        return found is not None

    async def checkpoint(self) -> Checkpoint:
        """Sign the current chain head; returns the existing checkpoint if it is current."""
        async with self._local_head, self._sessions() as db, db.begin():
            await _lock_head(db)
            head = (
                await db.execute(
                    select(AuditEventRow.id, AuditEventRow.hash)
                    .order_by(AuditEventRow.id.desc())
                    .limit(1)
                )
            ).first()
            if head is None:
                raise AuditError("the audit log is empty: nothing to checkpoint")
            latest = await db.scalar(
                select(AuditCheckpointRow).order_by(AuditCheckpointRow.id.desc()).limit(1)
            )
            if latest is not None and latest.event_id == head[0] and latest.event_hash == head[1]:
                return _checkpoint(latest)
            when = self._now()
            row = AuditCheckpointRow(
                id=(latest.id if latest is not None else 0) + 1,
                event_id=head[0],
                event_hash=head[1],
                time=when,
                key_id=key_id(self._signing_key.public_key()),
                signature=self._signing_key.sign(checkpoint_message(head[0], head[1], when)),
            )
            db.add(row)
        return _checkpoint(row)

    async def events(
        self, *, since: dt.datetime | None = None, until: dt.datetime | None = None
    ) -> AsyncIterator[AuditEvent]:
        """Events in id order, ``since <= time < until``, read in batches by id."""
        after = 0
        while True:
            query = select(*_EVENT_COLUMNS).where(AuditEventRow.id > after)
            if since is not None:
                query = query.where(AuditEventRow.time >= since)
            if until is not None:
                query = query.where(AuditEventRow.time < until)
            async with self._sessions() as db:
                rows = (await db.execute(query.order_by(AuditEventRow.id).limit(READ_BATCH))).all()
            for row in rows:
                yield AuditEvent(*row)
            if len(rows) < READ_BATCH:
                return
            after = rows[-1][0]

    async def latest(self, *, action: str, actor: str, limit: int) -> list[AuditEvent]:
        """The newest ``limit`` events of ``action`` by ``actor``, newest first."""
        query = (
            select(*_EVENT_COLUMNS)
            .where(AuditEventRow.action == action, AuditEventRow.actor == actor)
            .order_by(AuditEventRow.id.desc())
            .limit(limit)
        )
        async with self._sessions() as db:
            return [AuditEvent(*row) for row in (await db.execute(query)).all()]

    async def checkpoints(self) -> list[Checkpoint]:
        async with self._sessions() as db:
            rows = await db.scalars(select(AuditCheckpointRow).order_by(AuditCheckpointRow.id))
            return [_checkpoint(row) for row in rows]

    async def verify(
        self,
        progress: Progress | None = None,
        *,
        public_key: Ed25519PublicKey | None = None,
    ) -> AuditVerifyResult:
        """Check every event's hash and link, every id, and every checkpoint's signature.

        ``public_key`` defaults to this log's signing key; an auditor may pass another.
        """
        key = public_key if public_key is not None else self._signing_key.public_key()
        checkpoints = await self.checkpoints()
        async with self._sessions() as db:
            total = int(await db.scalar(select(func.count()).select_from(AuditEventRow)) or 0)
        verifier = ChainVerifier(key, key_id(key), checkpoints)
        async for event in self.events():
            verifier.feed(event)
            if progress is not None:
                progress(verifier.checked, max(total, verifier.checked))
        return verifier.finish()

    async def export_jsonl(
        self,
        out: TextIO | str | Path,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> int:
        """Write one JSON object per event; returns how many were written.

        A path is created (0600 under the CLI's umask) and closed; a stream is flushed only.
        """
        if not isinstance(out, str | Path):
            return await self._write_jsonl(out, since, until)
        handle = await asyncio.to_thread(Path(out).open, "w", encoding="utf-8")
        try:
            return await self._write_jsonl(handle, since, until)
        finally:
            await asyncio.to_thread(handle.close)

    async def _write_jsonl(
        self, out: TextIO, since: dt.datetime | None, until: dt.datetime | None
    ) -> int:
        count = 0
        lines: list[str] = []
        async for event in self.events(since=since, until=until):
            lines.append(json.dumps(event.as_json(), ensure_ascii=False, sort_keys=True) + "\n")
            count += 1
            if len(lines) >= READ_BATCH:
                # File writes happen off the loop so a slow disk never stalls the gateway.
                await asyncio.to_thread(out.writelines, lines)
                lines = []
        await asyncio.to_thread(out.writelines, lines)
        await asyncio.to_thread(out.flush)
        return count

    async def export_syslog(
        self,
        sender: SyslogSender,
        *,
        hostname: str,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> int:
        """Send each event as one RFC 5424 message; returns how many were sent."""
        count = 0
        async for event in self.events(since=since, until=until):
            await sender.send(format_syslog(event, hostname=hostname))
            count += 1
        return count


def _checkpoint(row: AuditCheckpointRow) -> Checkpoint:
    return Checkpoint(
        id=row.id,
        event_id=row.event_id,
        event_hash=row.event_hash,
        time=row.time,
        key_id=row.key_id,
        signature=bytes(row.signature),
    )
