"""Receive-window accounting for relayed channels: only consumed data re-opens the window.

asyncssh (checked against 2.24.1) re-opens a channel's receive window in ``_deliver_data``
to the full initial size whenever less than half is left, counting queued data as if it had
been consumed. A relay pauses reading a channel while the other leg cannot take more, and on
``resume_reading()`` the first packet delivered grants the peer a whole new window although
up to a window of data is still queued; every pause/resume cycle adds up to one more window
to the queue. Measured here (tests/test_ssh_flow.py): a vendor reading 4 MiB/s made the
gateway grow by ~500 MiB in 8 s, and ``ssh gw 'cat big' | head`` could hang
(shared/SSH-RELAY.md, trap 1).

``bound_receive_window(chan)`` replaces that one method on one channel: the window is
re-opened only by what the session has been handed (initial window - current window - queued
backlog), so what a peer can make the gateway hold for a channel is one window. asyncssh has
no public way to choose a channel's class for client sessions (``create_session`` builds an
``SSHClientChannel`` itself), hence a per-channel override of a private method, like the eow
handler in relay.py; tests/test_ssh_flow.py pins it.

``ReadGate`` and ``record_paced`` pause reading a side for as long as any reason holds it,
including a recording that has fallen behind the transfer.

``discard_unsent_output(chan)`` is for ``eow@openssh.com``: OpenSSH drops what it had buffered
for its closed stdout without ever re-opening the window for it, so output still queued in the
gateway can never be sent, and asyncssh's ``close()`` waits for it: the session hung after
``ssh gw 'cat big' | head`` whenever the vendor had been reading slowly. The relays decide
which reasons hold a side.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import asyncssh
from asyncssh.channel import SSHChannel
from asyncssh.constants import MSG_CHANNEL_WINDOW_ADJUST
from asyncssh.packet import UInt32

from gateway.tasks import TaskSet
from recordings.writer import RecordingWriter

log = logging.getLogger(__name__)
# The asyncssh internals this override reads and replaces (see the module docstring).
_INTERNALS = (
    "_deliver_data", "_recv_window", "_init_recv_window", "_recv_buf", "_decoder", "_session",
    "_send_buf", "_send_buf_len", "_flush_send_buf",
)  # fmt: skip


class _ConsumedWindow:
    """Re-opens one channel's receive window by the bytes handed to its session."""

    def __init__(self, chan: SSHChannel[Any]) -> None:
        self._chan = chan
        queued = sum(len(data) for data, _ in chan._recv_buf)  # noqa: SLF001
        # Received but neither acknowledged nor queued: already consumed (usually 0 here).
        self._consumed: int = chan._init_recv_window - chan._recv_window - queued  # noqa: SLF001

    def deliver(self, data: bytes, datatype: asyncssh.DataType) -> None:
        """asyncssh's ``SSHChannel._deliver_data`` with the window adjust corrected."""
        chan = self._chan
        self._consumed += len(data)
        # Same threshold as asyncssh (adjust once half the window is used), but the adjust is
        # what was consumed, not everything received: queued data keeps its window closed.
        if self._consumed > chan._init_recv_window // 2:  # noqa: SLF001
            chan.send_packet(MSG_CHANNEL_WINDOW_ADJUST, UInt32(self._consumed))
            chan._recv_window += self._consumed  # noqa: SLF001
            self._consumed = 0
        decoder = chan._decoder  # noqa: SLF001
        if decoder is not None:  # an encoding was set: deliver str, as asyncssh does
            try:
                decoded: Any = decoder.decode(data)
            except UnicodeDecodeError as exc:
                raise asyncssh.ProtocolError(str(exc)) from None
        else:
            decoded = data
        session = chan._session  # noqa: SLF001
        if session is not None:
            session.data_received(decoded, datatype)


def bound_receive_window(chan: SSHChannel[Any]) -> bool:
    """Make ``chan`` re-open its receive window only for consumed data.

    Call it when the session gets its channel (``connection_made``), before any data is
    delivered. Returns False, leaving asyncssh's behaviour, if asyncssh no longer has the
    internals this relies on (logged; the flow tests then fail).
    """
    if not all(hasattr(chan, name) for name in _INTERNALS):
        log.error("asyncssh %s: receive-window fix not applied", asyncssh.__version__)
        return False
    setattr(chan, "_deliver_data", _ConsumedWindow(chan).deliver)  # noqa: B010
    return True


def discard_unsent_output(chan: SSHChannel[Any]) -> int:
    """Drop stdout data queued on ``chan`` but not sent yet; stderr stays. Returns bytes dropped.

    Then flushes, which sends a pending EOF or close and calls the session's
    ``resume_writing`` if the queue fell below the low-water mark.
    """
    if not all(hasattr(chan, name) for name in _INTERNALS):
        log.error("asyncssh %s: unsent output not discarded", asyncssh.__version__)
        return 0
    queued = chan._send_buf  # noqa: SLF001
    kept: list[tuple[bytearray, asyncssh.DataType]] = [
        (buf, datatype) for buf, datatype in queued if datatype is not None
    ]
    dropped = chan._send_buf_len - sum(len(buf) for buf, _ in kept)  # noqa: SLF001
    chan._send_buf = kept  # noqa: SLF001
    chan._send_buf_len -= dropped  # noqa: SLF001
    chan._flush_send_buf()  # noqa: SLF001
    return dropped


# A relay stops reading the side that produces while this much waits for the recording's
# writer thread, and starts again once the writer has taken the backlog down to LOW. The
# writer ends a session at its hard bound (64 MiB); this keeps a fast transfer well below it.
RECORDER_HIGH = 16 << 20
RECORDER_LOW = 4 << 20


class Pausable(Protocol):
    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class ReadGate:
    """Reading from one side (a channel or a socket) is paused while any reason holds it:
    the other side's send buffer is full, the recording is behind, the asset is not yet
    connected. It resumes when the last reason is released, never before."""

    def __init__(self) -> None:
        self._target: Pausable | None = None
        self._reasons: set[str] = set()

    def bind(self, target: Pausable) -> None:
        self._target = target
        if self._reasons:
            target.pause_reading()

    def holds(self, reason: str) -> bool:
        return reason in self._reasons

    def hold(self, reason: str) -> None:
        if not self._reasons and self._target is not None:
            self._target.pause_reading()
        self._reasons.add(reason)

    def release(self, reason: str) -> None:
        if reason in self._reasons:
            self._reasons.discard(reason)
            if not self._reasons and self._target is not None:
                self._target.resume_reading()


def record_paced(
    writer: RecordingWriter, event: int, data: bytes, gate: ReadGate, tasks: TaskSet
) -> None:
    """Record ``data``; when the recording falls behind, hold ``gate`` until it catches up.

    Without this a transfer faster than the disk reaches the writer's hard bound and the
    session ends with ``recording_failed`` (seen at 256 MiB+ in bench/ssh_relay.py)."""
    writer.record(event, data)
    if writer.queued_bytes > RECORDER_HIGH and not gate.holds("recording"):
        gate.hold("recording")
        tasks.start(f"recording-room-{writer.recording_id}", _await_room(writer, gate))


async def _await_room(writer: RecordingWriter, gate: ReadGate) -> None:
    try:
        await writer.room(RECORDER_LOW)  # also returns when the recording stops
    finally:
        gate.release("recording")
