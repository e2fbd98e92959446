"""Recording writer: takes events from the relay loop and makes them durable, failing closed.

``record()`` never blocks: it stamps the event and appends it to a byte-bounded queue. One
writer thread per recording packs events into chunks, seals them (``recordings.container``)
and writes + fsyncs whenever ``max_unsynced_bytes`` have accumulated or the oldest unsynced
event nears ``max_unsynced_seconds``, so a crash loses at most that much while the disk keeps
up. A backlog is bounded by ``max_queued_bytes``: if the queue overflows or storage fails,
``on_failure`` is called once on the event loop and the session must end with
``recording_failed``. :meth:`RecordingWriter.room` lets a relay apply backpressure first.
``close()`` writes the signed footer. Does not choose file names (``recordings.store``) or
interpret event payloads (``recordings.terminal``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from recordings.container import (
    FORMAT_VERSION,
    MAX_EVENT_BYTES,
    ChunkSealer,
    ChunkSealerV2,
    Header,
    Kind,
    SubKeys,
    check_end_reason,
    encode_header,
    header_hash,
    new_sealer,
    signed_footer,
)
from recordings.events import event_prefix
from recordings.ids import new_recording_id
from recordings.keys import DataKeyRing, RecordingKeyError
from recordings.store import RecordingSink, RecordingStore, StoreError

RECORDING_FAILED = "recording_failed"
# Per-event bookkeeping charged against the queue bound, so floods of tiny events count too.
_EVENT_OVERHEAD = 64
# Seal when the oldest unsynced event reaches this share of the bound, leaving the rest of
# the interval for write + fsync: the bound is on data at risk, not on when we start.
_SEAL_SHARE = 0.9


class RecordingUnavailable(Exception):
    """The recording could not be opened; the session must be refused."""


@dataclass(frozen=True)
class WriterPolicy:
    max_unsynced_bytes: int = 64 << 10
    max_unsynced_seconds: float = 1.0
    max_queued_bytes: int = 64 << 20
    max_event_bytes: int = MAX_EVENT_BYTES

    def __post_init__(self) -> None:
        if not 0 < self.max_event_bytes <= MAX_EVENT_BYTES:
            raise ValueError("max_event_bytes must be positive and within the format limit")
        if self.max_unsynced_bytes <= 0 or self.max_unsynced_seconds <= 0:
            raise ValueError("flush thresholds must be positive")


@dataclass(frozen=True)
class CloseOutcome:
    footer_written: bool
    chunk_count: int
    end_reason: str
    failure: str | None
    # Event payload bytes recorded, and the bytes of the file (magic, header, chunks, footer):
    # what ``conduit recordings list`` shows side by side.
    output_bytes: int = 0
    stored_bytes: int = 0


_Queued = tuple[float, int, int, bytes]  # submitted at (clock), offset µs, type, payload


class RecordingWriter:
    """Use :meth:`start` (or :func:`start_recording`); the constructor does no I/O."""

    def __init__(
        self,
        sink: RecordingSink,
        header: Header,
        sealer: ChunkSealer | ChunkSealerV2,
        header_digest: bytes,
        signing_key: Ed25519PrivateKey,
        *,
        clock: Callable[[], float],
        on_failure: Callable[[str], None],
        policy: WriterPolicy,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.header = header
        self._sink = sink
        self._sealer = sealer
        self._header_digest = header_digest
        self._signing_key = signing_key
        self._clock = clock
        self._on_failure = on_failure
        self._policy = policy
        self._loop = loop
        self._t0 = clock()
        self._output_bytes = 0
        self._stored_bytes = 0
        # A plain lock (never taken twice by one thread) under the condition: ``with
        # self._lock`` is entered in C, ``with self._cond`` through two Python frames, and
        # record() takes it for every event the relay passes on.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: deque[_Queued] = deque()
        self._queued_bytes = 0
        self._armed = False  # the writer sleeps until a seal deadline (holds unsealed events)
        self._room_waiters: list[asyncio.Future[None]] = []
        self._accepting = True
        self._closing = False
        self._end_reason = ""
        self._failure: str | None = None
        self._done: concurrent.futures.Future[CloseOutcome] = concurrent.futures.Future()
        # Daemon: an unclosed recording must not keep the process alive; recovery handles it.
        self._thread = threading.Thread(
            target=self._run, name=f"recording-writer-{header.recording_id[:8]}", daemon=True
        )

    @classmethod
    async def start(
        cls,
        sink: RecordingSink,
        header: Header,
        data_key: bytes,
        signing_key: Ed25519PrivateKey,
        *,
        clock: Callable[[], float],
        on_failure: Callable[[str], None],
        policy: WriterPolicy | None = None,
    ) -> RecordingWriter:
        """Write and fsync the header, then start the writer thread.

        Raises :class:`RecordingUnavailable` if the header cannot be stored.
        """
        keys = SubKeys.derive(data_key)
        head = encode_header(header, keys)
        digest = header_hash(head, header.format_version)

        def write_head() -> None:
            sink.write(head)
            sink.sync()

        try:
            await asyncio.to_thread(write_head)
        except OSError as exc:
            sink.close()
            raise RecordingUnavailable(f"cannot write recording header: {exc}") from exc
        writer = cls(
            sink,
            header,
            new_sealer(header, keys, digest),
            digest,
            signing_key,
            clock=clock,
            on_failure=on_failure,
            policy=policy or WriterPolicy(),
            loop=asyncio.get_running_loop(),
        )
        writer._stored_bytes = len(head)
        writer._thread.start()
        return writer

    @property
    def recording_id(self) -> str:
        return self.header.recording_id

    @property
    def queued_bytes(self) -> int:
        """Bytes (plus per-event overhead) waiting for the writer thread: a snapshot, read
        without the lock (an int is read whole), as the relay asks after every event."""
        return self._queued_bytes

    async def room(self, max_queued_bytes: int) -> None:
        """Return once at most ``max_queued_bytes`` are queued, or the writer has stopped.

        Backpressure for a relay: pausing reads while the disk catches up is kinder than
        reaching the hard bound, which ends the session.
        """
        while True:
            with self._cond:
                if self._queued_bytes <= max_queued_bytes or not self._accepting:
                    return
                waiter = self._loop.create_future()
                self._room_waiters.append(waiter)
            await waiter

    def _wake_room_waiters(self) -> None:
        """Called with the lock held whenever the queue empties or the writer stops."""
        for waiter in self._room_waiters:
            self._loop.call_soon_threadsafe(_resolve, waiter)
        self._room_waiters.clear()

    def record(self, event_type: int, payload: bytes) -> bool:
        """Queue one event; never blocks. False if the recording no longer accepts events.

        Raises ValueError for an event type outside 0..255 (a programming error).
        """
        now = self._clock()
        offset_us = max(0, int((now - self._t0) * 1_000_000))
        if not 0 <= event_type <= 0xFF:  # inline check: this is the relay's hot path
            raise ValueError("event type must fit one byte")
        if type(payload) is not bytes:
            # A caller's bytearray/memoryview could change after we return.
            payload = bytes(payload)
        size = len(payload) + _EVENT_OVERHEAD
        with self._lock:
            if not self._accepting:
                return False
            if len(payload) > self._policy.max_event_bytes:
                reason = "event larger than the recording allows"
            elif self._queued_bytes + size > self._policy.max_queued_bytes:
                reason = "recording queue overflow: storage is falling behind"
            else:
                was_empty = not self._queue
                self._queue.append((now, offset_us, event_type, payload))
                self._queued_bytes += size
                # The writer sleeps on an empty queue. Holding unsealed events it wakes at
                # their seal deadline anyway, so it is woken early only for a full chunk's
                # worth: an interactive session wakes it about once a second, not twice per
                # keystroke (each wake-up also competed with the relay for the GIL).
                if (was_empty and not self._armed) or (
                    self._queued_bytes >= self._policy.max_unsynced_bytes
                    and self._queued_bytes - size < self._policy.max_unsynced_bytes
                ):
                    self._cond.notify()
                return True
            self._accepting = False
        self._report_failure(reason)
        return False

    async def close(self, end_reason: str) -> CloseOutcome:
        """Stop accepting events, write what is queued and the signed footer."""
        check_end_reason(end_reason)
        with self._cond:
            self._accepting = False
            self._wake_room_waiters()
            if not self._closing:
                self._closing = True
                self._end_reason = end_reason
                self._cond.notify()
        return await asyncio.wrap_future(self._done)

    def _report_failure(self, reason: str) -> None:
        with self._cond:
            if self._failure is not None:
                return
            self._failure = reason
            self._accepting = False
            self._wake_room_waiters()
        try:
            self._loop.call_soon_threadsafe(self._on_failure, reason)
        except RuntimeError:  # loop already closed: the session is gone anyway
            pass

    def _take(self, oldest: float | None) -> tuple[deque[_Queued], bool]:
        """Wait for events, close, or the seal deadline of the oldest unsealed event."""
        seal_after = self._policy.max_unsynced_seconds * _SEAL_SHARE
        with self._cond:
            self._armed = oldest is not None  # record() need not wake an armed writer
            while not self._queue and not self._closing:
                timeout = None if oldest is None else oldest + seal_after - self._clock()
                if timeout is not None and timeout <= 0:
                    break
                self._cond.wait(timeout)
            self._armed = False
            items, self._queue = self._queue, deque()
            self._queued_bytes = 0
            self._wake_room_waiters()
            return items, self._closing

    def _write(self, data: bytes | bytearray) -> None:
        self._sink.write(data)
        self._stored_bytes += len(data)

    def _run(self) -> None:
        policy = self._policy
        seal_after = policy.max_unsynced_seconds * _SEAL_SHARE
        buffer = bytearray()
        oldest: float | None = None
        footer_written = False
        try:
            while True:
                items, closing = self._take(oldest)
                sealed = False
                for submitted, offset_us, event_type, payload in items:
                    if oldest is None:
                        oldest = submitted
                    buffer += event_prefix(offset_us, event_type, len(payload))
                    buffer += payload
                    self._output_bytes += len(payload)
                    if len(buffer) >= policy.max_unsynced_bytes:
                        self._write(self._sealer.seal(buffer))
                        buffer.clear()
                        oldest, sealed = None, True
                if buffer and (closing or self._clock() - (oldest or 0.0) >= seal_after):
                    self._write(self._sealer.seal(buffer))
                    buffer.clear()
                    oldest, sealed = None, True
                if closing:
                    self._write(
                        signed_footer(
                            self._signing_key,
                            self.recording_id,
                            self._header_digest,
                            self._sealer.last_hash,
                            self._sealer.index,
                            self._end_reason,
                            self._sealer.format_version,
                        )
                    )
                    sealed = True
                if sealed:
                    # Group commit: one fsync per drained batch, however many chunks it held.
                    self._sink.sync()
                if closing:
                    footer_written = True
                    break
        except OSError as exc:
            self._report_failure(f"recording storage failed: {exc.strerror or exc}")
            # Wait for close() so the outcome carries the session's end reason.
            with self._cond:
                while not self._closing:
                    self._cond.wait()
        except BaseException as exc:  # never die silently: a dead writer must end the session
            self._report_failure(f"recording writer crashed: {type(exc).__name__}")
            raise
        finally:
            try:
                self._sink.close()
            except OSError:
                pass
            with self._cond:
                outcome = CloseOutcome(
                    footer_written,
                    self._sealer.index,
                    self._end_reason,
                    self._failure,
                    self._output_bytes,
                    self._stored_bytes,
                )
            if not self._done.done():
                self._done.set_result(outcome)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():  # the awaiting task may have been cancelled
        waiter.set_result(None)


async def start_recording(
    *,
    store: RecordingStore,
    data_keys: DataKeyRing,
    signing_key: Ed25519PrivateKey,
    kind: Kind,
    started_at: datetime,
    metadata: Mapping[str, str],
    clock: Callable[[], float],
    on_failure: Callable[[str], None],
    policy: WriterPolicy | None = None,
    format_version: int = FORMAT_VERSION,
) -> RecordingWriter:
    """Create a recording with a fresh id and data key; raise RecordingUnavailable if we can't.

    ``format_version`` 1 exists for compatibility tests and benchmarks; production writes 2.
    """
    recording_id = new_recording_id()

    def prepare() -> tuple[RecordingSink, Header, bytes]:
        data_key_id, data_key = data_keys.new_data_key()
        header = Header(
            recording_id=recording_id,
            kind=kind,
            started_at=started_at,
            data_key_id=data_key_id,
            metadata=dict(metadata),
            format_version=format_version,
        )
        return store.create(recording_id, started_at), header, data_key

    try:
        sink, header, data_key = await asyncio.to_thread(prepare)
    except (OSError, StoreError, RecordingKeyError) as exc:
        raise RecordingUnavailable(f"cannot create recording: {exc}") from exc
    return await RecordingWriter.start(
        sink, header, data_key, signing_key, clock=clock, on_failure=on_failure, policy=policy
    )
