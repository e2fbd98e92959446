"""Relaying one SSH session channel between the vendor's client and the asset.

Low-level asyncssh sessions on both legs (the streams API measured ~35% slower), bytes
only. Both directions go to the recorder (input unless the asset turns it off) with
timestamps. Back-pressure is passed along: when one side's send buffer fills, reading from
the other side pauses, and a paused channel's window re-opens only for data passed on
(``flow.py``), so a slow client never makes the gateway buffer without bound.
Exit status and exit signal are passed back; window changes, signals and breaks are passed
on. Output and window changes also go to the session's tap (live watchers). Does not
authenticate or decide: the broker has done that before a relay exists.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncssh
from asyncssh.packet import SSHPacket

from gateway.errors import ConduitError
from gateway.sessions.broker import Broker
from gateway.sessions.ticket import Ticket
from gateway.ssh.flow import ReadGate, bound_receive_window, discard_unsent_output, record_paced
from recordings.terminal import TerminalEvent, resize_payload

log = logging.getLogger(__name__)
ENV_ALLOWED = ("LANG", "LANGUAGE", "TZ")
ENV_PREFIX_ALLOWED = ("LC_",)
TermSize = tuple[int, int, int, int]


def allowed_env(env: Mapping[Any, Any]) -> dict[str | bytes, str | bytes]:
    """Only locale and timezone variables pass: nothing that changes what a program runs."""
    allowed: dict[str | bytes, str | bytes] = {}
    for key, value in env.items():
        if not (isinstance(key, str) and isinstance(value, str)) or len(value) > 256:
            continue
        if key in ENV_ALLOWED or key.startswith(ENV_PREFIX_ALLOWED):
            allowed[key] = value
    return allowed


@dataclass
class Request:
    """What the client asked for on this channel, before anything is opened."""

    command: str | None = None
    term_type: str | None = None
    term_size: TermSize = (80, 24, 0, 0)
    term_modes: Mapping[int, int] = field(default_factory=dict)
    env: dict[str | bytes, str | bytes] = field(default_factory=dict)


EOW = b"eow@openssh.com"
# After eow, stderr still goes to the client, but no more than this may wait to be sent.
EOW_STDERR_QUEUE = 64 * 1024


def install_eow_handler(chan: asyncssh.SSHServerChannel[bytes], on_eow: Callable[[], None]) -> None:
    """Handle ``eow@openssh.com`` on one channel (OpenSSH PROTOCOL section 2.1).

    asyncssh answers unknown channel requests by ignoring them, and dispatches by looking up
    ``_process_<name>_request`` on the channel, so the handler is attached to this channel
    object. Without it ``ssh gw 'cmd' | head`` never ends (shared/SSH-RELAY.md trap 2).
    """

    def handler(packet: SSHPacket) -> bool:
        packet.check_end()
        on_eow()
        return False  # eow never asks for a reply

    setattr(chan, "_process_eow_at_openssh_dot_com_request", handler)  # noqa: B010


def _resize(cols: int, rows: int) -> bytes:
    """A resize event; the client's u32 sizes are clipped to the recording's u16 fields."""
    return resize_payload(min(max(cols, 0), 0xFFFF), min(max(rows, 0), 0xFFFF))


def end_session(
    chan: asyncssh.SSHServerChannel[bytes] | None,
    upstream: asyncssh.SSHClientConnection | None,
    reason: str,
) -> None:
    """A kill: the vendor sees a one-line reason, then the channel and the asset leg close."""
    if chan is not None:
        chan.write_stderr(f"\r\nconduit: session ended: {reason}\r\n".encode())
        chan.exit(255)
    if upstream is not None:
        upstream.close()


def client_end_reason(exc: Exception | None, closed: str = "client_closed") -> str:
    """Why the vendor's connection ended, for session.end: a packet that failed its
    integrity check, another protocol violation, or ``closed`` (a plain close)."""
    if isinstance(exc, asyncssh.MACError):
        return "client_integrity_failure"
    if isinstance(exc, asyncssh.ProtocolError):
        return "client_protocol_error"
    return closed


class UpstreamSide(asyncssh.SSHClientSession[bytes]):
    def __init__(self, relay: RelaySession) -> None:
        self._relay = relay
        self.exit_status: int | None = None
        self.exit_signal: tuple[str, bool, str, str] | None = None

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        # The asset writes as fast as it can; the relay pauses this channel while the vendor
        # lags, and only data passed on may re-open its window (flow.py).
        bound_receive_window(chan)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self._relay.from_upstream(data, datatype)

    def eof_received(self) -> bool:
        self._relay.upstream_eof()
        return True

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.exit_signal = (signal, core_dumped, msg, lang)

    def pause_writing(self) -> None:
        self._relay.pause_client()

    def resume_writing(self) -> None:
        self._relay.resume_client()

    def connection_lost(self, exc: Exception | None) -> None:
        self._relay.upstream_closed(self)


class RelaySession(asyncssh.SSHServerSession[bytes]):
    """The client-facing end; created per session channel by the SSH server."""

    def __init__(
        self,
        broker: Broker,
        username: str,
        asset: str,
        account: str,
        source: str,
        start: Callable[[RelaySession], Awaitable[None]],
    ) -> None:
        self.broker = broker
        self.username = username
        self.asset = asset
        self.account = account
        self.source = source
        self.request = Request()
        self._start = start
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._up_chan: asyncssh.SSHClientChannel[bytes] | None = None
        self._up_conn: asyncssh.SSHClientConnection | None = None
        self.ticket: Ticket | None = None
        self._pending_eof = False
        self._early: list[tuple[bytes, asyncssh.DataType]] = []
        self._client_eow = False
        self._task: asyncio.Task[None] | None = None
        self._client_reads = ReadGate()  # the vendor's channel
        self._asset_reads = ReadGate()  # the asset's channel

    # -- requests from the client ----------------------------------------------------------
    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan
        self._client_reads.bind(chan)
        bound_receive_window(chan)  # uploads to a slow asset: same bound as downloads
        install_eow_handler(chan, self._client_stopped_reading)

    def _client_stopped_reading(self) -> None:
        """eow@openssh.com: the client's stdout is gone (``ssh gw cmd | head``). Tell the
        asset, so the command gets SIGPIPE and ends, and stop sending the client output."""
        self._client_eow = True
        if self._chan is not None:
            # OpenSSH never re-opens the window for output it dropped, so what is queued here
            # could never be sent and the channel's close would wait for it forever.
            discard_unsent_output(self._chan)
        if self._up_chan is not None:
            self._up_chan._send_request(EOW)  # noqa: SLF001 - asyncssh has no public call
        self._asset_reads.release("client")  # stdout is dropped from now on (from_upstream)

    def pty_requested(
        self, term_type: str, term_size: TermSize, term_modes: Mapping[int, int]
    ) -> bool:
        self.request.term_type, self.request.term_size = term_type, term_size
        self.request.term_modes = term_modes
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        if len(command) > 65536 or "\0" in command:
            return False
        self.request.command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        return False  # SFTP goes through the gateway's own SFTP server, not a raw relay

    def session_started(self) -> None:
        assert self._chan is not None  # noqa: S101 - asyncssh calls connection_made first
        self.request.env = allowed_env(dict(self._chan.get_environment()))
        self._task = asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        try:
            await self._start(self)
        except ConduitError as exc:
            self.fail(exc.message)
        except Exception:
            log.exception("session set-up failed")
            self.fail("internal error")

    def fail(self, message: str) -> None:
        if self._chan is not None:
            self._chan.write_stderr(f"conduit: {message}\r\n".encode())
            self._chan.exit(1)

    async def attach(self, ticket: Ticket, conn: asyncssh.SSHClientConnection) -> None:
        """Open the upstream channel for this request and start relaying."""
        self.ticket, self._up_conn = ticket, conn
        r = self.request
        cols, rows = r.term_size[0], r.term_size[1]
        if r.term_type and cols > 0 and rows > 0:
            # The size the terminal starts at, before any output (FORMAT.md: a resize at the
            # start sizes an export and the search screen); later changes follow as resizes.
            ticket.writer.record(TerminalEvent.RESIZE, _resize(cols, rows))
            if ticket.tap is not None:
                ticket.tap.resize(cols, rows)
        chan, _ = await conn.create_session(
            lambda: UpstreamSide(self),
            r.command,
            term_type=r.term_type,
            term_size=r.term_size if r.term_type else None,
            term_modes=r.term_modes if r.term_type else None,
            env=r.env,
            encoding=None,
        )
        self._up_chan = chan
        self._asset_reads.bind(chan)
        early, self._early = self._early, []
        for data, datatype in early:
            self._forward(data, datatype)
        if self._pending_eof:
            chan.write_eof()
        self._client_reads.release("early")

    # -- client -> upstream ----------------------------------------------------------------
    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._up_chan is None or self.ticket is None:
            # Typed before the asset is connected: keep this one packet and stop delivery, so
            # the rest waits in asyncssh's window (bounded) and arrives in order later.
            self._early.append((data, datatype))
            self._client_reads.hold("early")
            return
        self._forward(data, datatype)

    def _forward(self, data: bytes, datatype: asyncssh.DataType) -> None:
        assert self._up_chan is not None and self.ticket is not None  # noqa: S101
        ticket = self.ticket
        ticket.live.bytes_up += len(data)
        self.broker.activity(ticket)
        if ticket.record_input:
            record_paced(ticket.writer, TerminalEvent.INPUT, data, self._client_reads,
                         self.broker.tasks)  # fmt: skip
        self._up_chan.write(data, datatype)

    def eof_received(self) -> bool:
        if self._up_chan is None:
            self._pending_eof = True
        else:
            self._up_chan.write_eof()
        return True

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self._up_chan is not None and self.ticket is not None:
            self.ticket.writer.record(TerminalEvent.RESIZE, _resize(width, height))
            if self.ticket.tap is not None and width > 0 and height > 0:
                self.ticket.tap.resize(width, height)
            self._up_chan.change_terminal_size(width, height, pixwidth, pixheight)

    def signal_received(self, signal: str) -> None:
        if self._up_chan is not None:
            self._up_chan.send_signal(signal)

    def break_received(self, msec: int) -> bool:
        if self._up_chan is not None:
            self._up_chan.send_break(msec)
            return True
        return False

    def pause_writing(self) -> None:
        # After eow the client may never re-open its window: pausing the asset would then
        # hold its exit and close back for good; from_upstream bounds what is queued instead.
        if not self._client_eow:
            self._asset_reads.hold("client")

    def resume_writing(self) -> None:
        self._asset_reads.release("client")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._up_conn is not None:
            self._up_conn.close()
        self._finish(client_end_reason(exc))

    # -- upstream -> client ----------------------------------------------------------------
    def from_upstream(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._chan is None or self.ticket is None:
            return
        self.ticket.live.bytes_down += len(data)
        self.broker.activity(self.ticket)
        record_paced(self.ticket.writer, TerminalEvent.OUTPUT, data, self._asset_reads,
                     self.broker.tasks)  # fmt: skip
        if self.ticket.tap is not None:  # watchers: one append, never a wait (tap.py)
            self.ticket.tap.feed(data)
        if self._client_eow and (
            datatype != asyncssh.EXTENDED_DATA_STDERR
            or self._chan.get_write_buffer_size() > EOW_STDERR_QUEUE
        ):
            return  # the client no longer reads stdout; the asset has been told
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self._chan.write_stderr(data)
        else:
            self._chan.write(data)

    def upstream_eof(self) -> None:
        if self._chan is not None:
            self._chan.write_eof()

    def pause_client(self) -> None:
        self._client_reads.hold("asset")

    def resume_client(self) -> None:
        self._client_reads.release("asset")

    def upstream_closed(self, side: UpstreamSide) -> None:
        chan = self._chan
        if chan is not None:
            if side.exit_signal is not None:
                signal, core, msg, lang = side.exit_signal
                chan.exit_with_signal(signal, core, msg, lang)
            elif side.exit_status is not None:
                chan.exit(side.exit_status)
            else:
                chan.close()
        if self._up_conn is not None:
            self._up_conn.close()
        self._finish("closed")

    def _finish(self, reason: str) -> None:
        ticket, self.ticket = self.ticket, None
        if ticket is not None:
            self.broker.schedule_close(ticket, reason)

    async def kill(self, reason: str) -> None:
        """The kill handle registered with the live registry."""
        end_session(self._chan, self._up_conn, reason)
