"""PROXY protocol v2 in front of the SSH listener, accepted only from configured load
balancers (``ssh.proxy_protocol_from``).

``ProxyListener`` is what asyncssh calls a tunnel listener: asyncssh asks it for the
listening server, and it puts a ``ProxyGate`` before each connection's SSH protocol. From a
configured balancer address the gate waits (within the login timeout) for a v2 header,
refuses anything else, and starts the SSH connection with the client's address from the
header as its peer address, so the audit log, per-source limits and lockouts see the
vendor, not the balancer. From any other address the SSH connection starts at once, as
without a gate, and a connection whose first bytes are a PROXY header (v1 or v2) is
refused: nobody may claim another address. Either way the gate then hands the transport
to the SSH connection (``set_protocol``) and is out of the data path. Refusals go to
``refused(reason, source)`` (counted and audited by the caller). Decides nothing else.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Sequence
from typing import Any, cast

from gateway.ssh.proxy_protocol import MAX_HEADER, ProxyHeaderError, looks_like_proxy, parse

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Refused = Callable[[str, str], None]


def _address(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        found = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


class ProxyListener:
    def __init__(
        self,
        balancers: Sequence[Network],
        refused: Refused,
        timeout: float,
        *,
        reuse_port: bool = False,  # worker processes of one node share the port
    ) -> None:
        self._balancers = tuple(balancers)
        self.refused = refused
        self.timeout = timeout
        self._reuse_port = reuse_port

    def is_balancer(self, peer: str) -> bool:
        address = _address(peer)
        return address is not None and any(address in net for net in self._balancers)

    async def create_server(
        self, session_factory: Callable[[str, int], Any], host: str, port: int
    ) -> asyncio.AbstractServer:
        """asyncssh's tunnel-listener hook: our server, each connection behind a gate."""
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            lambda: ProxyGate(lambda: session_factory("", 0), self),
            host or None,
            port,
            reuse_address=True,
            reuse_port=self._reuse_port or None,
        )


class ProxyGate(asyncio.Protocol):
    def __init__(self, make_connection: Callable[[], Any], listener: ProxyListener) -> None:
        self._make = make_connection
        self._listener = listener
        self._transport: asyncio.Transport | None = None
        self._conn: Any = None  # asyncssh's SSHServerConnection, once started
        self._buf = b""
        self._peer = ""
        self._waiting_header = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if peer else ""
        if self._listener.is_balancer(self._peer):
            self._waiting_header = True
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._listener.timeout, self._too_slow)
        else:
            self._start(None)  # the SSH banner goes out now, as without a gate

    def _start(self, source: tuple[str, int] | None) -> None:
        conn = self._make()
        if source is not None:
            conn.set_extra_info(peername=source)  # what the gateway asks for the peer
        self._conn = conn
        conn.connection_made(self._transport)

    def _hand_over(self) -> None:
        assert self._transport is not None  # noqa: S101
        self._transport.set_protocol(self._conn)

    def _refuse(self, reason: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._waiting_header = False
        self._listener.refused(reason, self._peer)
        if self._transport is not None:
            self._transport.abort()

    def _too_slow(self) -> None:
        self._timer = None
        if self._waiting_header:
            self._refuse("proxy_header_timeout")

    def data_received(self, data: bytes) -> None:
        if self._waiting_header:
            self._buf += data
            try:
                header = parse(self._buf[:MAX_HEADER])
            except ProxyHeaderError:
                self._refuse("proxy_header_invalid")
                return
            if header is None:
                return
            if self._timer is not None:
                self._timer.cancel()
            self._waiting_header = False
            rest, self._buf = self._buf[header.length :], b""
            self._start(header.source)
            self._hand_over()
            if rest:
                self._conn.data_received(rest)
            return
        if self._conn is None:
            return  # refused already: the transport is closing
        if looks_like_proxy(data):
            self._refuse("proxy_header_not_allowed")
            return
        self._hand_over()
        self._conn.data_received(data)

    def eof_received(self) -> bool | None:
        if self._conn is not None:
            result: bool | None = self._conn.eof_received()
            return result
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._conn is not None:
            self._conn.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._conn is not None:
            self._conn.pause_writing()

    def resume_writing(self) -> None:
        if self._conn is not None:
            self._conn.resume_writing()
