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
import contextlib
import datetime as dt
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import ColumnElement, and_, func, insert, or_, select, text
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
# How long an append (or a drain batch) may wait on the database before the event is spooled
# instead; serving processes pass one derived from the settings (gateway.services).
APPEND_TIMEOUT_SECONDS = 10.0

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
        append_timeout_seconds: float = APPEND_TIMEOUT_SECONDS,
    ) -> None:
        self._sessions = sessions
        self._signing_key = signing_key
        self._clock = clock
        # With a spool (PostgreSQL serving processes), events that cannot reach the
        # database are kept on local disk and drained into the chain later (spool.py).
        self._spool = spool
        self._health = health or DatabaseHealth(None, grace_seconds=0)
        self._append_timeout = append_timeout_seconds
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
        # With a spool, the idempotency id is made before the first attempt and stored with
        # the event whichever way it goes: an append that committed but whose answer was
        # lost is then spooled as the same event, and the drain skips it. Encoding it here
        # also makes the size limit the same on both paths (room for the id is taken now).
        spool_id = new_spool_id() if self._spool is not None else ""
        with_id = {**(detail or {}), "spool_id": spool_id} if spool_id else detail
        detail_text = encode_detail(with_id)
        event = {"actor": actor, "source": source, "action": action, "target": target,
                 "result": result}  # fmt: skip
        async with self._local_head:
            # Once one event is spooled, every later one is too until the drain has put
            # them in the chain: otherwise the chain's order would not be the events' order.
            if self._spool is not None and (not self._health.up or self._spool.pending()):
                return await self._to_spool(event, detail_text, spool_id, None)
            if self._spool is None:
                return await self._append(event, detail_text, None)
            tried = self._now()
            try:
                # A database that went silent (packets dropped, nothing reset) would hold
                # this append, and every event queued behind ``_local_head``, for minutes.
                async with asyncio.timeout(self._append_timeout):
                    return await self._append(event, detail_text, None)
            except Exception as error:
                if not self._health.failed(error):  # a timeout counts as unreachable
                    raise
                log.warning("audit %s spooled: the database is unreachable", action)
                return await self._to_spool(event, detail_text, spool_id, tried)

    async def _append(
        self, event: Mapping[str, str], detail_text: str, when: dt.datetime | None
    ) -> int:
        """Insert one event at the head of the chain (the caller holds ``_local_head``);
        ``when`` is a spooled event's own time, else now."""
        async with self._sessions() as db, db.begin():
            await _lock_head(db)
            return await self._insert_at_head(db, [(event, detail_text, when)])

    async def _insert_at_head(
        self,
        db: AsyncSession,
        events: Sequence[tuple[Mapping[str, str], str, dt.datetime | None]],
    ) -> int:
        """Insert ``events`` after the chain head in ``db``'s transaction, which holds the head
        lock; returns the last id."""
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
            # Read the clock under the lock so the events this process appends directly
            # never run backwards along ids. A drained event keeps its own, older time and
            # gets an id after whatever other nodes appended meanwhile: along ids, time
            # increases only within a node's direct appends (docs/decisions/0023).
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

    async def _to_spool(
        self,
        event: Mapping[str, str],
        detail_text: str,
        spool_id: str,
        tried: dt.datetime | None,
    ) -> int:
        """Keep the event on local disk (fsync'd) for ``drain_spool``; returns 0 (no id yet)."""
        assert self._spool is not None  # noqa: S101 - only called with a spool
        spooled = SpooledEvent(
            spool_id=spool_id, time=self._now(), detail=detail_text, tried=tried, **event
        )
        await asyncio.to_thread(self._spool.append, spooled)
        return 0

    async def drain_spool(self) -> int:
        """Put the spooled events into the chain, in order, with their own times; then drop
        the spool. Returns how many were added. Idempotent: an event whose ``spool_id`` the
        chain holds already (a drain a crash cut short, or an append whose answer was lost)
        is skipped, so none is doubled. Each batch is bounded by the append deadline; when
        one times out the database is marked down and the spool stays for the next drain."""
        spool = self._spool
        if spool is None or not spool.pending():
            return 0
        added = 0
        async with self._local_head, _holding(spool):
            batches = spool.batches(DRAIN_BATCH)
            damaged: list[int] = []
            count = 0
            try:
                while (contents := await asyncio.to_thread(next, batches, None)) is not None:
                    damaged += contents.damaged[: 100 - len(damaged)]
                    count += len(contents.damaged)
                    if contents.events:
                        async with asyncio.timeout(self._append_timeout):
                            added += await self._drain_batch(contents.events)
                if damaged:
                    # What a crash tore was never acknowledged; the chain still says so.
                    event = {"actor": "system", "source": "", "action": "audit.spool.damaged",
                             "target": spool.path.name, "result": "error"}  # fmt: skip
                    text = encode_detail({"lines": damaged, "count": count})
                    async with asyncio.timeout(self._append_timeout):
                        await self._append(event, text, None)
            except TimeoutError as error:
                self._health.failed(error)  # silent again: the spool waits for its return
                raise
            await asyncio.to_thread(spool.remove)
        if added:
            log.warning("audit spool drained: %d events added to the chain", added)
        return added

    async def _drain_batch(self, batch: list[SpooledEvent]) -> int:
        """Add the events of ``batch`` the chain does not hold yet, in one transaction;
        the check is made under the head lock, so no append can land in between."""
        async with self._sessions() as db, db.begin():
            await _lock_head(db)
            held = await _held_spool_ids(db, batch)
            rows = [
                ({"actor": e.actor, "source": e.source, "action": e.action,
                  "target": e.target, "result": e.result}, e.detail, e.time)
                for e in batch
                if e.spool_id not in held
            ]  # fmt: skip
            if rows:
                await self._insert_at_head(db, rows)
        return len(rows)

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


async def _held_spool_ids(db: AsyncSession, batch: list[SpooledEvent]) -> set[str]:
    """The spool ids of ``batch`` that the chain holds already, by indexed time lookups only.

    A drained event keeps its spooled time, so one lookup of the batch's times finds the
    events of a drain a crash cut short. An event whose direct append was tried may have
    committed with its answer lost; it then holds a time between the attempt and the
    spooling (read by the same clock), a window of at most the append deadline: a range on
    the time index, narrowed by the spool id."""
    found: list[ColumnElement[bool]] = [AuditEventRow.time.in_({e.time for e in batch})]
    for e in batch:
        if e.tried is not None:
            found.append(and_(
                AuditEventRow.time >= e.tried, AuditEventRow.time <= e.time,
                AuditEventRow.detail.contains(f'"spool_id":"{e.spool_id}"', autoescape=True),
            ))  # fmt: skip
    held: set[str] = set()
    for detail in await db.scalars(select(AuditEventRow.detail).where(or_(*found))):
        try:
            value = json.loads(detail)
        except ValueError:
            continue
        if isinstance(value, dict) and isinstance(value.get("spool_id"), str):
            held.add(value["spool_id"])
    return held


@contextlib.asynccontextmanager
async def _holding(spool: AuditSpool) -> AsyncIterator[None]:
    """The spool's file lock, taken in a thread (``flock`` blocks). If the waiting task is
    cancelled, the thread still gets the lock later: it is then released at once, never
    kept by a task that is gone."""
    lock = spool.locked()
    taking = asyncio.ensure_future(asyncio.to_thread(lock.__enter__))
    try:
        await asyncio.shield(taking)
    except asyncio.CancelledError:
        taking.add_done_callback(lambda done: _release(lock, done))
        raise
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def _release(lock: contextlib.AbstractContextManager[None], taken: asyncio.Future[None]) -> None:
    if not taken.cancelled() and taken.exception() is None:
        lock.__exit__(None, None, None)


def _checkpoint(row: AuditCheckpointRow) -> Checkpoint:
    return Checkpoint(
        id=row.id,
        event_id=row.event_id,
        event_hash=row.event_hash,
        time=row.time,
        key_id=row.key_id,
        signature=bytes(row.signature),
    )
