"""Tunnels (``ssh -L``) through the gateway: one direct-tcpip channel to one granted port.

The vendor connects as ``user+asset`` and forwards a local port: each connection through it
is a direct-tcpip channel, and each channel is its own session, opened by the broker as
action ``tunnel:<port>`` on the routed asset (recorded as ``kind = tunnel``, registered,
killable, ended by the watchdog on revoke, expiry or idle). The destination host the client
names must name that asset (``broker.tunnel_host_accepted``); the broker connects to the
asset's configured host, so a client can never point a tunnel elsewhere. Refusals reach the
client as "administratively prohibited" and the audit log with the reason.

Bytes pass both ways over plain TCP from the gateway (the one door into the plant network),
counted into the live session and recorded with timestamps. Back-pressure is passed on in
both directions, and the SSH receive window is re-opened only for data actually passed on
(``gateway.ssh.flow``; shared/SSH-RELAY.md, trap 1). Does not decide access; remote, agent
and X11 forwarding are refused by the server, not here.

A tunnel to an asset's Modbus/TCP port (a ``modbus`` session) is protocol-aware: every batch
of bytes goes through the connection's ``gateway.ot.guard.ModbusGuard``, which forwards the
requests the session's grants cover, answers the others itself with a Modbus exception
(the PLC never sees them) and hands over evidence (``gateway.ot.evidence``). Input that is
not Modbus/TCP ends this connection only (end reason ``protocol_error``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import asyncssh

from gateway.errors import ConduitError, NotFoundOrForbidden
from gateway.ot.evidence import EvidenceSink
from gateway.ot.guard import ModbusGuard, Verdicts
from gateway.sessions.broker import Broker
from gateway.sessions.ticket import Ticket
from gateway.ssh.flow import ReadGate, bound_receive_window, record_paced
from gateway.ssh.relay import client_end_reason
from recordings.tunnel import TunnelEvent

log = logging.getLogger(__name__)
# A request forwarded to a PLC and not answered within this long is given up, so the ones a
# pipelining client queued behind it go on (gateway.ot.guard.ModbusGuard.overdue).
MODBUS_ANSWER_SECONDS = 10.0


class AssetSide(asyncio.Protocol):
    """The TCP connection to the asset's port; reading waits until the channel is open."""

    def __init__(self, tunnel: TunnelSession) -> None:
        self._tunnel = tunnel

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).pause_reading()

    def data_received(self, data: bytes) -> None:
        self._tunnel.from_asset(data)

    def eof_received(self) -> bool:
        self._tunnel.asset_eof()
        return True  # half-close: the client may still be sending

    def pause_writing(self) -> None:
        self._tunnel.pause_client()

    def resume_writing(self) -> None:
        self._tunnel.resume_client()

    def connection_lost(self, exc: Exception | None) -> None:
        self._tunnel.asset_closed()


class TunnelSession(asyncssh.SSHTCPSession[bytes]):
    """The client's end of one tunnelled connection."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.ticket: Ticket | None = None
        self.killed = False
        self._chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self._asset: asyncio.Transport | None = None
        self._asset_gone = False
        self._client_reads = ReadGate()
        self._asset_reads = ReadGate()
        self._asset_reads.hold("starting")  # until the channel is open (session_started)
        self._guard: ModbusGuard | None = None
        self._evidence: EvidenceSink | None = None
        self._overdue: asyncio.TimerHandle | None = None

    def attach(self, transport: asyncio.Transport) -> None:
        ticket = self.ticket
        if ticket is not None and ticket.protocol == "modbus":
            self._guard = ModbusGuard(
                lambda: ticket.modbus_grants, lambda: ticket.write_until, self.broker.clock
            )
            self._evidence = EvidenceSink(self.broker, ticket)
        self._asset = transport
        self._asset_reads.bind(transport)
        peer = transport.get_extra_info("peername") or ("?", 0)
        self._marker(f"connected {peer[0]}:{peer[1]}")

    # -- client -> asset -------------------------------------------------------------------
    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self._chan = chan
        self._client_reads.bind(chan)
        bound_receive_window(chan)

    def session_started(self) -> None:
        if self._asset is None or self._asset_gone:
            if self._chan is not None:
                self._chan.close()
            return
        self._asset_reads.release("starting")

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        ticket, asset = self.ticket, self._asset
        if ticket is None or asset is None or self._asset_gone:
            return
        ticket.live.bytes_up += len(data)
        self.broker.activity(ticket)
        if self._guard is not None:
            self._modbus_request(self._guard, data)
            return
        if ticket.record_input:
            record_paced(ticket.writer, TunnelEvent.TO_ASSET, data, self._client_reads,
                         self.broker.tasks)  # fmt: skip
        asset.write(data)

    def eof_received(self) -> bool:
        self._marker("eof from client")
        if self._asset is not None and self._asset.can_write_eof():
            self._asset.write_eof()
        return True  # keep the channel open for what the asset still sends

    def pause_writing(self) -> None:
        self._asset_reads.hold("client")

    def resume_writing(self) -> None:
        self._asset_reads.release("client")

    def connection_lost(self, exc: Exception | None) -> None:
        self._chan = None
        if self._asset is not None:
            self._asset.close()  # what the client sent last is still delivered
        self._finish(client_end_reason(exc))

    # -- asset -> client -------------------------------------------------------------------
    def from_asset(self, data: bytes) -> None:
        chan, ticket = self._chan, self.ticket
        if chan is None or ticket is None:
            return
        ticket.live.bytes_down += len(data)
        self.broker.activity(ticket)
        if self._guard is not None:
            verdicts = self._guard.from_asset(data)
            data = verdicts.forward
            self._to_asset(ticket, verdicts.to_asset)
            self._handle(verdicts)
            if not data:
                return
        record_paced(ticket.writer, TunnelEvent.FROM_ASSET, data, self._asset_reads,
                     self.broker.tasks)  # fmt: skip
        chan.write(data)

    # -- Modbus ----------------------------------------------------------------------------
    def _modbus_request(self, guard: ModbusGuard, data: bytes) -> None:
        ticket, asset, chan = self.ticket, self._asset, self._chan
        if ticket is None or asset is None:
            return
        verdicts = guard.from_client(data)
        self._to_asset(ticket, verdicts.forward)
        if verdicts.reply and chan is not None:
            chan.write(verdicts.reply)  # the gateway's own answer: recorded as evidence
        self._handle(verdicts)

    def _to_asset(self, ticket: Ticket, data: bytes) -> None:
        """Requests the guard sends on to the PLC; the last one sent gets a deadline."""
        if not data or self._asset is None or self._guard is None:
            return
        if ticket.record_input:
            record_paced(ticket.writer, TunnelEvent.TO_ASSET, data, self._client_reads,
                         self.broker.tasks)  # fmt: skip
        self._asset.write(data)
        if self._overdue is not None:
            self._overdue.cancel()
        self._overdue = asyncio.get_running_loop().call_later(
            MODBUS_ANSWER_SECONDS, self._answer_overdue, self._guard.sent
        )

    def _answer_overdue(self, sent: int) -> None:
        ticket, guard = self.ticket, self._guard
        self._overdue = None
        if ticket is None or guard is None:
            return
        verdicts = guard.overdue(sent)
        if verdicts.to_asset or verdicts.evidence:
            self._marker(f"no answer from the asset in {MODBUS_ANSWER_SECONDS:g} s")
        self._to_asset(ticket, verdicts.to_asset)
        self._handle(verdicts)

    def _handle(self, verdicts: Verdicts) -> None:
        if self._evidence is not None and verdicts.evidence:
            self._evidence.add(verdicts.evidence)
        if verdicts.close:
            self._marker(f"ended: {verdicts.close}")
            if self._chan is not None:
                self._chan.close()
            if self._asset is not None:
                self._asset.close()
            self._finish("protocol_error")

    def asset_eof(self) -> None:
        self._marker("eof from asset")
        if self._chan is not None:
            self._chan.write_eof()

    def pause_client(self) -> None:
        self._client_reads.hold("asset")

    def resume_client(self) -> None:
        self._client_reads.release("asset")

    def asset_closed(self) -> None:
        self._asset_gone = True
        if self._chan is not None:
            self._chan.close()
        self._finish("closed")

    # -- ending ----------------------------------------------------------------------------
    def _marker(self, text: str) -> None:
        if self.ticket is not None:
            self.ticket.writer.record(TunnelEvent.MARKER, text.encode())

    def _finish(self, reason: str) -> None:
        ticket, self.ticket = self.ticket, None
        if ticket is None:
            return
        guard, sink = self._guard, self._evidence
        if self._overdue is not None:
            self._overdue.cancel()
        if guard is not None and sink is not None:
            sink.add(guard.finish())  # recorded now, before the recording closes
            self.broker.tasks.start(
                f"close-{ticket.session_id}", self._close_after(sink, ticket, reason)
            )
            return
        self.broker.schedule_close(ticket, reason)

    async def _close_after(self, sink: EvidenceSink, ticket: Ticket, reason: str) -> None:
        try:
            await sink.flushed()  # session.end comes after the connection's evidence
        finally:
            await self.broker.close(ticket, reason)

    async def kill(self, reason: str) -> None:
        """The kill handle: drop the channel and the asset connection at once."""
        self.killed = True
        if self._chan is not None:
            self._chan.abort()
        if self._asset is not None:
            self._asset.abort()
        self._finish(reason)


def _refused(exc: ConduitError) -> asyncssh.ChannelOpenError:
    if isinstance(exc, NotFoundOrForbidden):
        return asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, exc.message)
    return asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, exc.message)


async def open_tunnel(
    broker: Broker,
    conn: asyncssh.SSHServerConnection,
    username: str,
    asset: str,
    dest: tuple[str, int],
    source: str,
) -> TunnelSession:
    """Decide, record, register and connect one tunnel; what asyncssh awaits before it
    answers the channel open. Every failure becomes a ``ChannelOpenError`` (anything else
    would make asyncssh drop the whole SSH connection)."""
    tunnel = TunnelSession(broker)
    try:
        tunnel.ticket = await broker.open_tunnel(
            username, asset, *dest, source=source, kill=tunnel.kill
        )
    except ConduitError as exc:
        raise _refused(exc) from None
    except Exception:
        log.exception("tunnel set-up failed")
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "internal error") from None
    ticket = tunnel.ticket
    transport: asyncio.Transport | None = None
    try:
        if not tunnel.killed:
            transport = await broker.connect_tunnel(ticket, lambda: AssetSide(tunnel))
    except ConduitError as exc:
        await broker.close(ticket, "upstream_failed")
        raise _refused(exc) from None
    except Exception:
        log.exception("tunnel connect failed")
        await broker.close(ticket, "upstream_failed")
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "internal error") from None
    # Killed, revoked, asset gone or client gone while this was being set up: asyncssh would
    # never hand the session a channel, so nothing else would end it.
    if transport is None or tunnel.ticket is None or conn.is_closed():
        if transport is not None:
            transport.abort()
        await broker.close(ticket, "client_closed")
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "session ended")
    tunnel.attach(transport)
    return tunnel
