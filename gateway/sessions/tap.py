"""A terminal session's output tap: recent output, its current size, and live watchers.

Every terminal session (native SSH or browser) gets one ``OutputTap`` from the broker; the
front end relaying the session feeds it each output chunk and each resize. A watcher that
subscribes gets the recent output (to redraw the current screen), the size, then everything
that follows and, last, the end reason. Cost per chunk: one deque append and, when the ring
is full, dropping the oldest chunks whole; nothing looks at single bytes.

Bounds, so a watcher never slows or grows the session:
- the ring keeps at least the last ``RING_BYTES`` of output (256 KiB: several full screens
  of a 250x70 terminal with colour escapes, more than the visible screen of any size this
  gateway accepts for text, and 50 MiB for 200 sessions at most);
- each watcher's queue holds at most ``WATCHER_QUEUE_BYTES``; a watcher that falls further
  behind is dropped (``Watcher.dropped`` says why) instead of holding the session back.

Does not decide who may watch (the web front end asks the authorizer) and does no I/O.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

RING_BYTES = 256 * 1024
WATCHER_QUEUE_BYTES = 1024 * 1024
# A snapshot that starts mid-way through the output starts after the first line end within
# this many bytes, so the redraw does not begin inside an escape sequence or a character.
RESYNC_WINDOW = 4096
FELL_BEHIND = "the watch fell behind the session's output and was stopped"


@dataclass
class Watcher:
    """One subscriber: what it has not been sent yet, and whether it was dropped or ended."""

    tap: OutputTap
    pending: deque[bytes | tuple[int, int]] = field(default_factory=deque)
    pending_bytes: int = 0
    ended: str = ""  # the session's end line, once it is over
    dropped: str = ""  # why this watcher was stopped (it fell behind)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self) -> list[bytes | tuple[int, int]]:
        """Everything queued (output chunks and ``(cols, rows)`` resizes), in order."""
        items = list(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        self.wake.clear()
        return items

    def close(self) -> None:
        """The watcher goes away (its socket closed)."""
        self.tap.unsubscribe(self)


class OutputTap:
    def __init__(
        self,
        cols: int = 80,
        rows: int = 24,
        *,
        ring_bytes: int = RING_BYTES,
        watcher_queue_bytes: int = WATCHER_QUEUE_BYTES,
    ) -> None:
        self.cols, self.rows = cols, rows
        self._ring: deque[bytes] = deque()
        self._ring_size = 0
        self._ring_bytes = ring_bytes
        self._trimmed = False
        self._queue_bytes = watcher_queue_bytes
        self._watchers: list[Watcher] = []
        self.ended = ""

    def feed(self, data: bytes) -> None:
        """One output chunk from the session (called by the relay, on the event loop)."""
        self._ring.append(data)
        self._ring_size += len(data)
        # Keep at least ring_bytes: drop the oldest chunks while the rest still covers it.
        while self._ring_size - len(self._ring[0]) >= self._ring_bytes:
            self._ring_size -= len(self._ring.popleft())
            self._trimmed = True
        if self._watchers:
            self._publish(data, len(data))

    def resize(self, cols: int, rows: int) -> None:
        self.cols, self.rows = cols, rows
        if self._watchers:
            self._publish((cols, rows), 0)

    def _publish(self, item: bytes | tuple[int, int], size: int) -> None:
        for watcher in list(self._watchers):
            if watcher.pending_bytes + size > self._queue_bytes:
                watcher.dropped = FELL_BEHIND
                self.unsubscribe(watcher)
                watcher.wake.set()
                continue
            watcher.pending.append(item)
            watcher.pending_bytes += size
            watcher.wake.set()

    def snapshot(self) -> bytes:
        """The recent output, to replay on a reset terminal of the current size."""
        data = b"".join(self._ring)
        if self._trimmed:
            cut = data.find(b"\n", 0, RESYNC_WINDOW)
            data = data[cut + 1 :] if cut >= 0 else data
        return data

    def subscribe(self) -> tuple[Watcher, bytes]:
        """A new watcher and the snapshot it starts from (nothing is lost in between: both
        are taken in the same step of the event loop)."""
        watcher = Watcher(self)
        if self.ended:
            watcher.ended = self.ended
            watcher.wake.set()
        else:
            self._watchers.append(watcher)
        return watcher, self.snapshot()

    def unsubscribe(self, watcher: Watcher) -> None:
        if watcher in self._watchers:
            self._watchers.remove(watcher)

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def end(self, line: str) -> None:
        """The session is over: every watcher gets ``line`` (the reason) and is released."""
        if self.ended:
            return
        self.ended = line
        for watcher in self._watchers:
            watcher.ended = line
            watcher.wake.set()
        self._watchers.clear()
