"""The audit spool: events recorded while the database was unreachable, on local disk, in order.

One JSON object per line in ``<data_dir>/audit-spool.jsonl`` (0600), each written, flushed and
``fsync``'d before ``append`` returns, so an event the caller was told about survives a crash
of the process or the machine. Each carries a random ``spool_id`` (also in the event's
detail, made before the event's first attempt) that makes draining idempotent:
``AuditLog.drain_spool`` skips an event whose id the chain already holds, so neither a crash
mid-drain nor an append whose commit answer was lost duplicates. ``batches`` reads the spool
a bounded batch at a time. Processes sharing the
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
# An event's line is at most a 16 KiB detail (escaped as a JSON string: up to 6 bytes per
# byte of it) plus its bounded fields; anything longer is not a line this spool wrote.
MAX_LINE = 128 * 1024


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
    # When a direct append of this event was tried before it was spooled: that attempt may
    # have committed with its answer lost, so the drain looks for ``spool_id`` in the chain
    # between this instant and ``time`` too. None: never tried (spooled straight away).
    tried: dt.datetime | None = None

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
        if self.tried is not None:
            fields["tried"] = format_time(self.tried)
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
        when = _parse_time(value["time"])
        tried = _parse_time(value["tried"]) if "tried" in value else None
    except (ValueError, KeyError, TypeError):
        return None
    return SpooledEvent(spool_id=spool_id, time=when, detail=detail, tried=tried, **fields)


def _parse_time(value: object) -> dt.datetime:
    if not isinstance(value, str):
        raise TypeError("time: not a string")
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)


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
        """Every whole event in order; lines that are not one are reported, not fatal.
        The whole spool in memory: for tests and small spools (the drain uses ``batches``)."""
        events: list[SpooledEvent] = []
        damaged: list[int] = []
        for contents in self.batches(1 << 30):
            events += contents.events
            damaged += contents.damaged
        return SpoolContents(events, damaged)

    def batches(self, size: int) -> Iterator[SpoolContents]:
        """The spool in order, ``size`` events at a time, reading one line at a time (a
        spool can hold up to ``max_bytes``; the drain must not hold it all in memory). A line
        longer than any event can be (``MAX_LINE``) is damage, skipped without being held."""
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return
        with handle:
            events: list[SpooledEvent] = []
            damaged: list[int] = []
            number = 0
            while raw := handle.readline(MAX_LINE):
                number += 1
                if not raw.endswith(b"\n"):
                    damaged.append(number)  # torn by a crash, or too long: skip its rest
                    while (rest := handle.readline(MAX_LINE)) and not rest.endswith(b"\n"):
                        pass
                elif (event := _parse(raw[:-1])) is None:
                    damaged.append(number)
                else:
                    events.append(event)
                if len(events) >= size:
                    yield SpoolContents(events, damaged)
                    events, damaged = [], []
            if events or damaged:
                yield SpoolContents(events, damaged)

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
