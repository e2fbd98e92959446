"""The gateway's recordings service: start, close, recover, verify and read recordings.

Glue between the pure ``recordings`` library and the gateway: it builds the local store
and data-key ring under the recordings directory, registers every recording in the catalog
before the session may proceed (fail closed), updates the catalog at close, indexes
terminal text for search, recovers at start only the recordings the catalog says this node
left open, and audits every view or download before any plaintext is handed out. Does not
decide who may view (the caller checks authorization first) and does not apply retention
or quota rules (see ``retention``), though it asks them before starting a recording.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.audit.sink import AuditSink
from gateway.config import Settings
from gateway.db.health import is_unreachable
from gateway.keys import KeyRing
from gateway.recorder import catalog, offload, search
from gateway.recorder.catalog import CatalogEntry
from gateway.recorder.quota import QuotaExceeded, QuotaStatus, quota_status
from gateway.recorder.tables import STATE_CLOSED, RecordingRow
from gateway.tasks import TaskSet
from recordings import (
    DataKeyRing,
    Integrity,
    Kind,
    LocalDataKeyStore,
    LocalRecordingStore,
    MasterKey,
    RecordingNotFound,
    RecordingReader,
    RecordingUnavailable,
    RecordingWriter,
    VerifyResult,
    WriterPolicy,
    check_id,
    recover_recording,
    signing_key_id,
    start_recording,
    verify_recording,
)
from recordings.screen import TextLine, screen_lines
from recordings.terminal import DEFAULT_SIZE
from recordings.tunnel import decoded_lines

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]
# Output beyond this much per recording is not interpreted for search (bounded work).
INDEX_OUTPUT_BYTES = 64 << 20
# Recordings up to this size (stored, and output recorded: format 2 compresses, and the
# work of indexing grows with the output) are verified and indexed before ``close`` returns (so the
# session's end is audited with its recording searchable); larger ones are read in a child
# process after ``close`` returns, so neither the session's end nor other sessions wait.
INLINE_INDEX_BYTES = 4 << 20


class RecordingMissing(Exception):
    """No such recording in the catalog (or its file is gone)."""


def judged_closed(
    result: VerifyResult, end_reason: str | None, *, closed_size: int = 0, size: int = 0
) -> VerifyResult:
    """The verdict on a recording the catalog says was closed.

    The file alone cannot tell a crash from a cut (FORMAT.md, "Crash recovery"); the catalog
    can: a recording it closed got a footer then, or crash recovery signed one. So a closed
    recording without a footer has been cut off: truncated, never "incomplete".
    """
    if result.status is not Integrity.INCOMPLETE or result.end_reason is not None:
        return result
    sizes = f"; {closed_size} bytes at close, {size} now" if closed_size and size else ""
    return replace(
        result,
        status=Integrity.TRUNCATED,
        location="footer",
        detail=(
            f"closed recording has no footer (end reason {end_reason or 'unknown'}, "
            f"{result.intact_chunks} chunk(s) intact{sizes})"
        ),
    )


def master_key_id(master_key: bytes) -> str:
    """Stable, non-secret id of a master key: a domain-separated SHA-256 prefix."""
    digest = hashlib.sha256(b"conduit recordings master key id v1\x00" + master_key)
    return "mk-" + digest.hexdigest()[:24]


@dataclass(frozen=True)
class SessionInfo:
    """Who and what a recording is of: identifiers only, they travel in the clear header."""

    username: str
    asset: str
    protocol: str
    session_id: str


class RecordingService:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[Any],
        store_root: Path,
        master_key: bytes,
        signing_key: Ed25519PrivateKey,
        clock: Clock,
        audit: AuditSink,
        node: str = "local",
        worker: int = 0,
        monotonic: Callable[[], float] = time.monotonic,
        policy: WriterPolicy | None = None,
        older_master_keys: Mapping[str, bytes] | None = None,
        quota_bytes: int = 0,
    ) -> None:
        self.sessions = sessions
        self.audit = audit
        self.clock = clock
        self.node = node
        self.worker = worker  # the process of ``node`` (``conduit serve --workers N``)
        self.store = LocalRecordingStore(store_root)
        self.keys_root = self.store.root / "keys"
        self._key_store = LocalDataKeyStore(self.keys_root)
        master = MasterKey(master_key_id(master_key), master_key)
        older = {
            master_key_id(k): MasterKey(master_key_id(k), k)
            for k in (older_master_keys or {}).values()
        }
        self.data_keys = DataKeyRing(self._key_store, master, older)
        self._signing_key = signing_key
        public = signing_key.public_key()
        self.verify_keys: dict[str, Ed25519PublicKey] = {signing_key_id(public): public}
        self._monotonic = monotonic
        self._policy = policy
        self.quota_bytes = quota_bytes
        self._masters = {master.key_id: master.key, **{k: m.key for k, m in older.items()}}
        self._current_master = master.key_id
        self._pool: ProcessPoolExecutor | None = None
        self._background = TaskSet()
        # Ends whose catalog update the database refused (an outage): (id, reason, kind,
        # output bytes), retried in order by ``finish_deferred`` once it answers.
        self._deferred: list[tuple[str, str, str, int | None]] = []

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        keys: KeyRing,
        sessions: async_sessionmaker[Any],
        clock: Clock,
        audit: AuditSink,
    ) -> RecordingService:
        """The service as configured: store under ``recordings_dir``, node name, quota."""
        return cls(
            sessions=sessions,
            store_root=settings.recordings_dir,
            master_key=keys.master_key,
            signing_key=keys.signing_key,
            clock=clock,
            audit=audit,
            node=settings.server.node_name or socket.gethostname(),
            quota_bytes=settings.recordings.quota_bytes,
        )

    # -- writing -----------------------------------------------------------------------

    async def start(
        self,
        info: SessionInfo,
        *,
        kind: Kind,
        on_failure: Callable[[str], None],
        metadata: Mapping[str, str] | None = None,
    ) -> RecordingWriter:
        """Open a recording and register it; raise ``RecordingUnavailable`` to refuse.

        Refuses (``QuotaExceeded``, audited) when the store is at or over its quota.
        """
        # Without a quota (the default) there is nothing to sum: one query less per session.
        status = await self._quota() if self.quota_bytes else None
        if status is not None and status.exceeded:
            await self.audit.record(
                actor=info.username,
                action="recording.start",
                result="denied",
                target=info.asset,
                detail={
                    "reason": "recording quota exceeded",
                    "used_bytes": status.used_bytes,
                    "quota_bytes": status.quota_bytes,
                },
            )
            raise QuotaExceeded(status)
        started_at = self.clock()
        header_meta = {
            **(metadata or {}),
            "user": info.username,
            "asset": info.asset,
            "protocol": info.protocol,
            "session_id": info.session_id,
            "node": self.node,
        }
        writer = await start_recording(
            store=self.store,
            data_keys=self.data_keys,
            signing_key=self._signing_key,
            kind=kind,
            started_at=started_at,
            metadata=header_meta,
            clock=self._monotonic,
            on_failure=on_failure,
            policy=self._policy,
        )
        row = RecordingRow(
            id=writer.recording_id,
            kind=str(kind),
            username=info.username,
            asset=info.asset,
            protocol=info.protocol,
            session_id=info.session_id,
            node=self.node,
            worker=self.worker,
            data_key_id=writer.header.data_key_id,
            started_at=started_at,
            size_bytes=0,
            integrity="unverified",
            integrity_detail="",
            indexed_lines=0,
        )
        try:
            async with self.sessions() as db, db.begin():
                await catalog.register_open(db, row)
        except Exception as exc:
            # Not in the catalog means never recovered or found: refuse the session.
            await writer.close("recording_failed")
            raise RecordingUnavailable(f"cannot register recording: {type(exc).__name__}") from exc
        return writer

    async def _quota(self) -> QuotaStatus:
        try:
            return await quota_status(self.sessions, self.quota_bytes)
        except Exception as exc:  # no catalog, no recording: fail closed
            raise RecordingUnavailable(
                f"cannot check recording quota: {type(exc).__name__}"
            ) from exc

    async def close(self, writer: RecordingWriter, end_reason: str) -> CatalogEntry:
        """Finalize and sign, then record the end in the catalog and index the text."""
        outcome = await writer.close(end_reason)
        reason = outcome.end_reason if outcome.footer_written else "recording_failed"
        output = outcome.output_bytes if outcome.footer_written else None
        kind = str(writer.header.kind)
        try:
            return await self._finish(writer.recording_id, reason, kind=kind, output=output)
        except Exception as error:
            if is_unreachable(error):  # the file is closed and signed; only the row waits
                self._deferred.append((writer.recording_id, reason, kind, output))
            raise

    async def finish_deferred(self) -> int:
        """Catalog updates an outage held back, in order; returns how many were done. One
        that fails again stays (with those after it) for the next call."""
        done = 0
        while self._deferred:
            recording_id, reason, kind, output = self._deferred[0]
            await self._finish(recording_id, reason, kind=kind, output=output)
            self._deferred.pop(0)
            done += 1
        return done

    async def recover_open(
        self, node: str | None = None, worker: int = 0
    ) -> list[tuple[str, VerifyResult | None]]:
        """Close every recording the catalog says this process (node and worker) left open
        (crash recovery); never a sibling worker's, which are live.

        With ``node`` and ``worker`` (a dead member), the recordings it left open that this
        process can read on the shared store; one it cannot see stays open for that member's
        own next start."""
        async with self.sessions() as db:
            if node is None:
                entries = await catalog.open_on_node(db, self.node, self.worker)
            else:
                entries = await catalog.open_on_node(db, node, worker)
        done: list[tuple[str, VerifyResult | None]] = []
        for entry in entries:
            try:
                result: VerifyResult | None = await asyncio.to_thread(
                    recover_recording,
                    self.store,
                    entry.id,
                    self.data_keys.resolve,
                    self._signing_key,
                    self.verify_keys,
                )
            except RecordingNotFound:
                if node is not None:  # not on a store we share: its own node's next start
                    continue
                result = None
            except Exception as exc:  # leave it open: the next start tries again
                log.warning("cannot recover recording %s: %s", entry.id, exc)
                await self.audit.record(
                    actor="system",
                    action="recording.recover",
                    result="error",
                    target=entry.id,
                    detail={"error": type(exc).__name__},
                )
                continue
            reason = result.end_reason if result is not None and result.end_reason else "incomplete"
            await self._finish(entry.id, reason, missing=result is None, kind=entry.kind)
            await self.audit.record(
                actor="system",
                action="recording.recover",
                result="success" if result is not None else "failure",
                target=entry.id,
                detail={"status": str(result.status) if result is not None else "missing"},
            )
            done.append((entry.id, result))
        return done

    async def resume_indexing(self) -> list[str]:
        """Verify and index, in the background, the recordings this node closed but whose
        background verification a stop cut short (``aclose``); returns their ids."""
        async with self.sessions() as db:
            pending = await catalog.closed_unverified_on_node(db, self.node, self.worker)
        for recording_id in pending:
            self._background.start(f"index-{recording_id}", self._verify_and_index(recording_id))
        return pending

    async def _finish(
        self,
        recording_id: str,
        end_reason: str,
        *,
        kind: str,
        missing: bool = False,
        output: int | None = None,
    ) -> CatalogEntry:
        """Record the end in the catalog; verify and index now if the file is small.

        A small recording's end, verdict and text go in one transaction, after reading the
        file once (one thread hop): ending a session is on every session's path."""
        ended_at = self.clock()
        if missing:
            async with self.sessions() as db, db.begin():
                await catalog.mark_closed(
                    db, recording_id, ended_at=ended_at, end_reason=end_reason, size=0
                )
                await catalog.set_integrity(db, recording_id, "missing", "file not found", ended_at)
            return await self.entry(recording_id)
        try:
            size, checked = await asyncio.to_thread(
                self._size_and_check, recording_id, kind, output or 0
            )
        except Exception:
            # Unreadable now: still record the end; verification can be asked for later.
            async with self.sessions() as db, db.begin():
                await catalog.mark_closed(
                    db, recording_id, ended_at=ended_at, end_reason=end_reason,
                    size=await asyncio.to_thread(self._file_size, recording_id), output=output,
                )  # fmt: skip
            raise
        async with self.sessions() as db, db.begin():
            await catalog.mark_closed(
                db, recording_id, ended_at=ended_at, end_reason=end_reason, size=size,
                output=output,
            )  # fmt: skip
            if checked is not None:
                await self._store_check(db, recording_id, end_reason, *checked)
        if checked is None:  # large: interpreting its text takes a while, off the close path
            self._background.start(f"index-{recording_id}", self._verify_and_index(recording_id))
        return await self.entry(recording_id)

    def _size_and_check(
        self, recording_id: str, kind: str, output: int = 0
    ) -> tuple[int, tuple[VerifyResult, list[TextLine]] | None]:
        """The file's size and, if it is small enough to do now, its verdict and text."""
        size = self._file_size(recording_id)
        if max(size, output) > INLINE_INDEX_BYTES:
            return size, None
        if kind == str(Kind.TERMINAL):
            return size, self._read_text(recording_id, *DEFAULT_SIZE)
        if kind == str(Kind.TUNNEL):
            return size, self._read_decoded(recording_id)
        return size, (self._verify_file(recording_id), [])

    async def _store_check(
        self,
        db: AsyncSession,
        recording_id: str,
        end_reason: str | None,
        result: VerifyResult,
        lines: list[TextLine],
    ) -> None:
        result = judged_closed(result, end_reason)  # only closed recordings come here
        await catalog.set_integrity(
            db, recording_id, str(result.status), _describe(result), self.clock()
        )
        count = await search.index_lines(db, recording_id, lines)
        await catalog.set_indexed(db, recording_id, count)

    async def aclose(self) -> None:
        """Stop indexing in the background (``resume_indexing`` takes it up at the next
        start; until then it stays verifiable on demand)."""
        await self._background.cancel_all()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def _read_text_elsewhere(self, recording_id: str) -> tuple[VerifyResult, list[TextLine]]:
        if self._pool is None:
            self._pool = offload.new_pool()
        public = {
            kid: key.public_bytes(Encoding.Raw, PublicFormat.Raw)
            for kid, key in self.verify_keys.items()
        }
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, offload.read_text, self.store.root, self.keys_root, self._masters,
            self._current_master, public, recording_id, DEFAULT_SIZE, INDEX_OUTPUT_BYTES,
        )  # fmt: skip

    def _file_size(self, recording_id: str) -> int:
        with self.store.open_read(recording_id) as stream:
            return stream.seek(0, 2)

    def _read_text(
        self, recording_id: str, cols: int, rows: int
    ) -> tuple[VerifyResult, list[TextLine]]:
        with self.store.open_read(recording_id) as stream:
            reader = RecordingReader(stream, self.data_keys.resolve, self.verify_keys)
            lines = list(
                screen_lines(reader.events(), cols, rows, max_output_bytes=INDEX_OUTPUT_BYTES)
            )
        assert reader.result is not None  # noqa: S101 - events() exhausted sets it
        return reader.result, lines

    def _read_decoded(self, recording_id: str) -> tuple[VerifyResult, list[TextLine]]:
        """A tunnel recording's verdict and the lines of what the gateway decoded in it
        (Modbus writes, refusals, device identity: ``recordings.tunnel.decoded_lines``)."""
        with self.store.open_read(recording_id) as stream:
            reader = RecordingReader(stream, self.data_keys.resolve, self.verify_keys)
            lines = list(decoded_lines(reader.events()))
        assert reader.result is not None  # noqa: S101 - events() exhausted sets it
        return reader.result, lines

    async def _verify_and_index(self, recording_id: str) -> None:
        entry = await self.entry(recording_id)
        work = max(entry.size_bytes, entry.output_bytes or 0)
        if entry.kind == str(Kind.TERMINAL) and work > INLINE_INDEX_BYTES:
            result, lines = await self._read_text_elsewhere(recording_id)
        elif entry.kind == str(Kind.TERMINAL):
            result, lines = await asyncio.to_thread(self._read_text, recording_id, *DEFAULT_SIZE)
        elif entry.kind == str(Kind.TUNNEL):
            result, lines = await asyncio.to_thread(self._read_decoded, recording_id)
        else:
            result, lines = await asyncio.to_thread(self._verify_file, recording_id), []
        async with self.sessions() as db, db.begin():
            await self._store_check(db, recording_id, entry.end_reason, result, lines)

    # -- reading -----------------------------------------------------------------------

    def _verify_file(self, recording_id: str) -> VerifyResult:
        return self._verify_and_measure(recording_id)[0]

    def _verify_and_measure(self, recording_id: str) -> tuple[VerifyResult, int]:
        with self.store.open_read(recording_id) as stream:
            result = verify_recording(stream, self.data_keys.resolve, self.verify_keys)
            return result, stream.seek(0, 2)

    async def verify(self, recording_id: str) -> VerifyResult:
        """Verify the file in the light of the catalog and store the verdict there.

        A closed recording without a footer is truncated (``judged_closed``); an open one
        without a footer is still being written (its verdict stays ``incomplete``).
        """
        entry = await self.entry(recording_id)
        try:
            result, size = await asyncio.to_thread(self._verify_and_measure, recording_id)
        except RecordingNotFound as exc:
            async with self.sessions() as db, db.begin():
                await catalog.set_integrity(
                    db, recording_id, "missing", "file not found", self.clock()
                )
            raise RecordingMissing(recording_id) from exc
        if entry.state == STATE_CLOSED:
            result = judged_closed(
                result, entry.end_reason, closed_size=entry.size_bytes, size=size
            )
        async with self.sessions() as db, db.begin():
            await catalog.set_integrity(
                db, recording_id, str(result.status), _describe(result), self.clock()
            )
        return result

    async def entry(self, recording_id: str) -> CatalogEntry:
        check_id(recording_id)
        async with self.sessions() as db:
            found = await catalog.get_entry(db, recording_id)
        if found is None:
            raise RecordingMissing(recording_id)
        return found

    async def entries(self, *, limit: int | None = None) -> list[CatalogEntry]:
        async with self.sessions() as db:
            return await catalog.list_entries(db, limit=limit)

    async def search(
        self, query: str, *, actor: str, source: str = "", limit: int = 100
    ) -> list[search.SearchHit]:
        """Search every recording's text; the search itself is audited (it reveals content)."""
        await self.audit.record(
            actor=actor,
            action="recording.search",
            result="success",
            source=source,
            detail={"query": query[:200], "limit": limit},
        )
        async with self.sessions() as db:
            return await search.search_text(db, query, limit=limit)

    @contextlib.asynccontextmanager
    async def open_for_reading(
        self, recording_id: str, *, actor: str, source: str = "", purpose: str = "view"
    ) -> AsyncIterator[tuple[CatalogEntry, BinaryIO]]:
        """Audit, then open the raw recording file; ``purpose`` is ``view`` or ``download``.

        The audit event is written before any byte is read: no audit, no access.
        """
        if purpose not in ("view", "download"):
            raise ValueError("purpose must be view or download")
        entry = await self.entry(recording_id)
        try:
            stream = await asyncio.to_thread(self.store.open_read, recording_id)
        except RecordingNotFound as exc:
            await self.audit.record(
                actor=actor,
                action=f"recording.{purpose}",
                result="failure",
                target=recording_id,
                source=source,
                detail={"reason": "file not found"},
            )
            raise RecordingMissing(recording_id) from exc
        try:
            await self.audit.record(
                actor=actor,
                action=f"recording.{purpose}",
                result="success",
                target=recording_id,
                source=source,
                detail={"user": entry.username, "asset": entry.asset},
            )
            yield entry, stream
        finally:
            stream.close()

    def reader(self, stream: BinaryIO) -> RecordingReader:
        """A verifying reader over a stream from :meth:`open_for_reading`."""
        return RecordingReader(stream, self.data_keys.resolve, self.verify_keys)


def _describe(result: VerifyResult) -> str:
    if result.tampered_chunk is not None:
        return f"chunk {result.tampered_chunk}: {result.detail}"
    if result.location:
        return f"{result.location}: {result.detail}"
    return result.detail
