"""The audit spool: events recorded while the database was unreachable, on local disk, in order.

One JSON object per line in ``<data_dir>/audit-spool.jsonl`` (0600), each written, flushed and
``fsync``'d before ``append`` returns, so an event the caller was told about survives a crash
of the process or the machine. Each carries a random ``spool_id`` (also put in the event's
detail) that makes draining idempotent: ``AuditLog.drain_spool`` skips an event whose id the
chain already holds, so a crash mid-drain neither loses nor duplicates. Processes sharing the
data directory (workers of a node) serialise on ``audit-spool.lock`` (``flock``), a file that
is never removed, so an appender can never write into a spool a drain has just unlinked.

A crash can tear the last line. ``read`` reports such a line (and any malformed one) as
damage instead of stopping, and ``append`` cuts a torn tail before writing, so a new event
is never glued onto it. The spool is bounded (``max_bytes``): when full ``append`` raises
``SpoolFull`` and the caller fails closed. Does not talk to the database (``AuditLog`` does).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.audit.chain import AuditError, format_time

log = logging.getLogger(__name__)
SPOOL_NAME = "audit-spool.jsonl"
LOCK_NAME = "audit-spool.lock"
SPOOL_VERSION = 1


class SpoolFull(AuditError):
    """The spool reached its size limit: the event cannot be kept, so the action is refused."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            "the gateway cannot keep an audit record now; try again shortly",
            f"audit spool full ({limit} bytes) while the database is unreachable",
        )


@dataclass(frozen=True)
class SpooledEvent:
    """An event as spooled: the chain's fields but its id, previous hash and hash."""

    spool_id: str
    time: dt.datetime
    actor: str
    source: str
    action: str
    target: str
    result: str
    detail: str  # canonical JSON text, holding ``spool_id``; inserted exactly as it is

    def line(self) -> bytes:
        fields = {
            "v": SPOOL_VERSION,
            "spool_id": self.spool_id,
            "time": format_time(self.time),
            "actor": self.actor,
            "source": self.source,
            "action": self.action,
            "target": self.target,
            "result": self.result,
            "detail": self.detail,
        }
        return json.dumps(fields, sort_keys=True, ensure_ascii=False).encode() + b"\n"


@dataclass(frozen=True)
class SpoolContents:
    events: list[SpooledEvent]
    damaged: list[int]  # 1-based numbers of lines that were not a whole event (torn, corrupt)


def new_spool_id() -> str:
    return secrets.token_hex(16)


def _parse(raw: bytes) -> SpooledEvent | None:
    try:
        value = json.loads(raw)
        if not isinstance(value, dict) or value.get("v") != SPOOL_VERSION:
            return None
        fields = {k: value[k] for k in ("actor", "source", "action", "target", "result")}
        if not all(isinstance(v, str) for v in fields.values()):
            return None
        spool_id, detail = value["spool_id"], value["detail"]
        if not isinstance(spool_id, str) or not isinstance(detail, str):
            return None
        if len(spool_id) != 32 or any(c not in "0123456789abcdef" for c in spool_id):
            return None
        when = dt.datetime.strptime(value["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    except (ValueError, KeyError, TypeError):
        return None
    return SpooledEvent(spool_id=spool_id, time=when, detail=detail, **fields)


class AuditSpool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.path = directory / SPOOL_NAME
        self._lock_path = directory / LOCK_NAME
        self.max_bytes = max_bytes

    def pending(self) -> bool:
        """Whether events wait to be drained. A ``stat`` (microseconds, no thread hop): it is
        asked on every append to the chain, which must follow any spooled event."""
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive use of the spool against the other processes of this data directory."""
        fd = os.open(self._lock_path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def append(self, event: SpooledEvent) -> None:
        """Write ``event`` durably (fsync) at the end of the spool; ``SpoolFull`` when full."""
        line = event.line()
        with self.locked():
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size:
                    size = self._cut_torn_tail(fd, size)
                if size + len(line) > self.max_bytes:
                    log.error(
                        "audit spool %s full (%d bytes): refusing what cannot be audited",
                        self.path,
                        self.max_bytes,
                    )
                    raise SpoolFull(self.max_bytes)
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            if size == 0:  # a new file: its directory entry must survive a crash too
                self._sync_directory()

    def _cut_torn_tail(self, fd: int, size: int) -> int:
        """A spool not ending in a newline was torn by a crash mid-write: that line was
        never acknowledged to anyone, so it is cut (and logged) before the next append."""
        if os.pread(fd, 1, size - 1) == b"\n":
            return size
        start = max(0, size - 65536)
        tail = os.pread(fd, size - start, start)
        keep = start + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
        log.warning("audit spool: cutting a torn last line (%d bytes)", size - keep)
        os.ftruncate(fd, keep)
        os.fsync(fd)
        return keep

    def read(self) -> SpoolContents:
        """Every whole event in order; lines that are not one are reported, not fatal."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return SpoolContents([], [])
        events: list[SpooledEvent] = []
        damaged: list[int] = []
        lines = data.split(b"\n")
        for number, raw in enumerate(lines, start=1):
            if not raw:
                continue  # the empty piece after the final newline
            event = _parse(raw) if number < len(lines) else None  # no newline: torn
            if event is None:
                damaged.append(number)
            else:
                events.append(event)
        return SpoolContents(events, damaged)

    def remove(self) -> None:
        """Drop the drained spool; the directory is synced so it stays gone after a crash."""
        self.path.unlink(missing_ok=True)
        self._sync_directory()

    def _sync_directory(self) -> None:
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
