"""The SSH listener: host keys, login timeout, unauthenticated-connection cap, use banner.

Every asyncssh hook refuses by default. Until the jump-host front end (routing, MFA,
relay) is plugged in, no authentication method succeeds, so the listener fails closed.
"""

from __future__ import annotations

import logging

import asyncssh

from gateway.services import Services

log = logging.getLogger(__name__)


class _Gate:
    """Counts connections that have not finished authenticating."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending = 0


class GatewaySSHServer(asyncssh.SSHServer):
    def __init__(self, services: Services, gate: _Gate) -> None:
        self._services = services
        self._gate = gate
        self._conn: asyncssh.SSHServerConnection | None = None
        self._counted = False

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        peer = conn.get_extra_info("peername")
        if self._gate.pending >= self._gate.limit:
            self._services.metrics.ssh_refused.labels("unauthenticated_cap").inc()
            log.warning("ssh: refusing %s: too many unauthenticated connections", peer)
            conn.close()
            return
        self._gate.pending += 1
        self._counted = True
        self._services.metrics.ssh_connections.inc()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self._gate.pending -= 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._uncount()

    def auth_completed(self) -> None:
        self._uncount()

    def begin_auth(self, username: str) -> bool:
        banner = self._services.settings.ssh.banner or self._services.settings.portal.banner
        if banner and self._conn is not None:
            self._conn.send_auth_banner(banner + "\r\n")
        return True  # authentication is always required

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False


async def start_ssh_listener(services: Services) -> asyncssh.SSHAcceptor:
    settings = services.settings
    listen = settings.ssh_listen
    gate = _Gate(settings.ssh.max_unauthenticated)
    return await asyncssh.create_server(
        lambda: GatewaySSHServer(services, gate),
        listen.host,
        listen.port,
        server_host_keys=list(services.keys.ssh_host_keys),
        login_timeout=settings.ssh.login_timeout_seconds,
        # No forwarding of any kind until the broker grants it per session.
        agent_forwarding=False,
        x11_forwarding=False,
        allow_scp=False,
        reuse_address=True,
    )
