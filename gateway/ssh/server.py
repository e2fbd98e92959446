"""The SSH jump host: authentication with MFA, username routing, and session dispatch.

Every asyncssh hook refuses unless it is one we handle. Authentication is MFA always:
keyboard-interactive asks for the password, then a verification code, both unechoed (works
for ssh, scp, sftp, PuTTY, WinSCP), and goes through the same ``Authenticator`` as the
portal, so the lockout is shared. A one-time connect code from the portal (made after MFA,
bound to user and asset) may be given at that first prompt, or as the password method's
password, and logs in by itself. A refused password or code login ends the connection with
one line naming the lock as a possible cause, the same for every reason (``login_refused``):
stock clients would otherwise ask again (OpenSSH three times, then its password method;
PuTTY forever), each failure counting toward the lock. Sessions are opened through the
broker; ``ssh -L`` reaches only granted ports of the routed asset (``gateway.ssh.tunnel``);
remote forwarding, agent and X11 forwarding are refused. A public key logs in only with a
certificate from this gateway's user CA (``gateway.ssh.certificates``). Does not decide
access itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

import asyncssh
from asyncssh.auth import KbdIntChallenge, KbdIntResponse

from gateway.config import LockoutSettings
from gateway.db.health import UNREACHABLE_TEXT
from gateway.errors import ConduitError
from gateway.identity.login import AuthenticationFailed, Authenticator, Identity
from gateway.services import Services
from gateway.sessions.broker import Broker
from gateway.ssh import fastpath
from gateway.ssh.admission import RefusalLog, UnauthenticatedGate
from gateway.ssh.certificates import CertificateLogin
from gateway.ssh.channel import SessionChannel
from gateway.ssh.files import FileSession
from gateway.ssh.proxy_gate import ProxyListener
from gateway.ssh.relay import RelaySession
from gateway.ssh.routing import Route, parse_route
from gateway.ssh.tunnel import open_tunnel
from gateway.vault import DEFAULT_ACCOUNT

log = logging.getLogger(__name__)
T = TypeVar("T")
# Advertised after "SSH-2.0-": OpenSSH clients send eow@openssh.com only to peers whose
# version starts with "OpenSSH" (shared/SSH-RELAY.md, trap 2), and without eow
# `ssh gw 'cmd' | head` never ends. The comment after the space says what we really are.
SERVER_VERSION = "OpenSSH_9.9 Conduit_0.1"


# What we end a connection for before it logs in, by asyncssh's exception: a refusal each,
# counted and audited with the admission refusals (admission.py). A client that leaves, or
# that fails to log in (audited as login.failure), is not here.
_PROTOCOL_VIOLATIONS = (
    asyncssh.ProtocolError,
    asyncssh.KeyExchangeFailed,
    asyncssh.MACError,
    asyncssh.CompressionError,
    asyncssh.ProtocolNotSupported,
    asyncssh.ServiceNotAvailable,
    asyncssh.IllegalUserName,
)


def ended_before_login(exc: Exception | None) -> str | None:
    """The refusal reason for a connection that ended with ``exc`` before logging in."""
    if isinstance(exc, asyncssh.ConnectionLost) and "timeout" in exc.reason.lower():
        return "login_timeout"
    if isinstance(exc, _PROTOCOL_VIOLATIONS):
        return "protocol_error"
    return None


# Keyboard-interactive asks one thing at a time, echo off for both: a code on the screen is
# as good as the password to whoever sees it within its 30 seconds.
_PASSWORD_CHALLENGE: KbdIntChallenge = ("Conduit login", "", "", [("Password: ", False)])
_PASSWORD_OR_CODE_CHALLENGE: KbdIntChallenge = (
    "Conduit login", "Password, or a one-time connect code from the portal", "",
    [("Password: ", False)],
)  # fmt: skip
_CODE_CHALLENGE: KbdIntChallenge = ("Conduit login", "", "", [("Verification code: ", False)])


def login_refused(lockout: LockoutSettings) -> str:
    """The one line every refused password or code login ends with, whatever the reason
    (unknown name, wrong password or code, locked, disabled): it names the lock without
    telling anyone which accounts exist or are locked. The audit log has the reason."""
    minutes = max(1, -(-lockout.lock_seconds // 60))
    return (
        "Permission denied: wrong username, password or code, or the account is locked "
        f"({lockout.max_failures} failures lock it for {minutes} min)"
    )


class GatewaySSHServer(asyncssh.SSHServer):
    def __init__(
        self,
        services: Services,
        gate: UnauthenticatedGate,
        broker: Broker,
        authenticator: Authenticator,
    ) -> None:
        self._s = services
        self._gate = gate
        self._broker = broker
        self._auth = authenticator
        self._conn: asyncssh.SSHServerConnection | None = None
        self._counted = False
        self._route: Route | None = None
        self._identity: Identity | None = None
        self._source = ""
        self._certs = CertificateLogin(services)
        self._password: str | None = None  # the first keyboard-interactive answer, if not a code

    # -- connection ----------------------------------------------------------------------
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        peer = conn.get_extra_info("peername")
        self._source = str(peer[0]) if peer else ""
        if not self._gate.admit(self._source, self):  # counted and logged by the gate
            # After our version line has gone out (asyncssh sends it when this returns), so
            # the client can show the reason instead of "invalid banner".
            asyncio.get_running_loop().call_soon(self._turn_away, "too many connections")
            return
        self._counted = True
        self._s.metrics.ssh_connections.inc()

    def evict(self) -> None:
        """The gate needs this one's place for a connection from a quieter source."""
        self._counted = False  # the gate has already let go of it
        self._turn_away("too many connections, try again")

    def _turn_away(self, reason: str) -> None:
        if self._conn is not None:
            self._conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, reason)

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self._gate.release(self._source, self)

    def connection_lost(self, exc: Exception | None) -> None:
        pending = self._counted  # admitted, not evicted, not logged in
        self._uncount()
        ended = ended_before_login(exc) if pending and self._identity is None else None
        if ended is not None:
            self._gate.ended_before_login(self._source, ended)
        refused = self._certs.failure_detail() if self._identity is None else None
        if refused is not None:  # keys or certificates were refused and nothing logged in
            self._audit_key_refusals("login.failure", self._user(), refused)

    def auth_completed(self) -> None:
        self._uncount()
        if self._identity is None:
            # No hook runs when asyncssh accepts a certificate: the one way left to get here.
            self._identity = self._certs.identity(self._s.clock())
            if self._identity is None:
                if self._conn is not None:
                    self._conn.close()
                return
            self._s.tasks.start("audit-ssh-login", self._audit_certificate_login(self._identity))
        refused = self._certs.failure_detail()
        if refused is not None:
            # Keys refused before this login (an agent's other keys, a stale certificate):
            # refusals, audited, but not a failed login.
            detail = {**refused, "logged_in_by": self._identity.factor}
            self._audit_key_refusals("ssh.key.refused", self._identity.username, detail)

    def _audit_key_refusals(self, action: str, actor: str, detail: dict[str, object]) -> None:
        asset = self._route.asset if self._route is not None else None
        self._s.tasks.start(
            "audit-ssh-key-refusal",
            self._s.audit.record(
                actor=actor,
                action=action,
                result="failure",
                target=asset or "",
                source=self._source,
                detail=detail,
            ),
        )

    async def _audit_certificate_login(self, identity: Identity) -> None:
        asset = self._route.asset if self._route is not None else None
        try:
            await self._s.audit.record(
                actor=identity.username,
                action="login.success",
                result="success",
                target=asset or "",
                source=self._source,
                detail={"channel": "ssh", "factor": identity.factor,
                        "serial": str(self._certs.serial)},
            )  # fmt: skip
        except Exception:
            log.exception("ssh: certificate login of %s not audited: closing", identity.username)
            if self._conn is not None:
                self._conn.close()

    # -- authentication ------------------------------------------------------------------
    async def begin_auth(self, username: str) -> bool:
        self._route = parse_route(username)
        if not self._s.db_health.up:
            await self._refuse_unreachable()
            return True
        banner = self._s.settings.ssh.banner or self._s.settings.portal.banner
        if banner and self._conn is not None:
            self._conn.send_auth_banner(banner + "\r\n")
        if self._conn is not None:
            user = self._route.user if self._route is not None else None
            await self._certs.prepare(self._conn, user)
        return True  # authentication is always required

    async def _refuse_unreachable(self) -> None:
        """No database, no login (fail closed): disconnect with the reason, audited."""
        if self._conn is not None:
            self._conn.disconnect(asyncssh.DISC_SERVICE_NOT_AVAILABLE, UNREACHABLE_TEXT)
        await self._audit_unreachable()

    async def _audit_unreachable(self) -> None:
        self._s.metrics.ssh_refused.labels("database").inc()
        if self._s.db_health.audit_refusal():
            asset = self._route.asset if self._route is not None else None
            try:
                await self._s.audit.record(
                    actor=self._user(), action="login.refused", result="error",
                    target=asset or "", source=self._source,
                    detail={"channel": "ssh", "reason": "database unreachable"},
                )  # fmt: skip
            except Exception:  # the spool is full: the refusal stands, counted
                log.exception("ssh: login refusal not audited")

    def _user(self) -> str:
        return self._route.user if self._route is not None else "?"

    def kbdint_auth_supported(self) -> bool:
        return True

    def get_kbdint_challenge(self, username: str, lang: str, submethods: str) -> KbdIntChallenge:
        self._password = None  # each keyboard-interactive attempt starts at the password
        if self._route is not None and self._route.asset is not None:
            return _PASSWORD_OR_CODE_CHALLENGE  # connect codes are made for an asset
        return _PASSWORD_CHALLENGE

    async def validate_kbdint_response(
        self, username: str, responses: KbdIntResponse
    ) -> KbdIntChallenge | bool:
        if len(responses) != 1:
            await self._audit_failure(f"{len(responses)} answers to the 1 login prompt")
            raise self._refused()
        answer = responses[0]
        if self._password is None:
            # The first answer: a connect code logs in by itself; anything else is taken as
            # the password, and the code is asked for whether or not it was right.
            identity = await self._unless_unreachable(self._connect_code(answer))
            if identity is not None:
                self._identity = identity
                return True
            self._password = answer
            return _CODE_CHALLENGE
        password, self._password = self._password, None
        try:
            self._identity = await self._unless_unreachable(
                self._auth.verify_password_and_code(
                    self._user(), password, answer, "ssh", self._source, self._s.clock()
                )
            )
        except AuthenticationFailed:
            raise self._refused() from None
        return self._route is not None

    async def _unless_unreachable(self, check: Awaitable[T]) -> T:
        """``check``, a login step that reads the database; if the database turns out to be
        away (the outage began since ``begin_auth``), the login is refused with the reason."""
        try:
            return await check
        except Exception as error:
            if not self._s.db_health.failed(error):
                raise
        await self._audit_unreachable()
        raise asyncssh.ServiceNotAvailable(UNREACHABLE_TEXT)

    def password_auth_supported(self) -> bool:
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        """A one-time connect code as the password: bound to this user and this asset."""
        route = self._route
        if route is None or route.asset is None:
            await self._audit_failure("connect code without an asset in the username")
            raise self._refused()
        identity = await self._unless_unreachable(self._connect_code(password))
        if identity is None:
            await self._audit_failure("connect code not valid for this user and asset")
            raise self._refused()
        self._identity = identity
        return True

    async def _connect_code(self, answer: str) -> Identity | None:
        """The identity ``answer`` logs in as a connect code for the routed asset, or None
        when it is none (the account's lock is checked in ``connect_code_login``)."""
        route = self._route
        if route is None or route.asset is None:
            return None
        try:
            return await self._auth.connect_code_login(
                route.user, route.asset, answer, "ssh", self._source, self._s.clock()
            )
        except AuthenticationFailed:  # a valid code for a locked or disabled account
            raise self._refused() from None

    def _refused(self) -> asyncssh.PermissionDenied:
        """Ends the connection with ``login_refused``: raised from an auth hook, asyncssh
        sends it as the disconnect reason, which OpenSSH and PuTTY show."""
        return asyncssh.PermissionDenied(login_refused(self._s.settings.lockout))

    async def _audit_failure(self, reason: str) -> None:
        await self._s.audit.record(
            actor=self._user(),
            action="login.failure",
            result="failure",
            source=self._source,
            detail={"channel": "ssh", "reason": reason},
        )

    def public_key_auth_supported(self) -> bool:
        return True  # certificates from our CA (trusted in begin_auth); bare keys are refused

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        self._certs.refuse_key(key)
        return False

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        self._certs.refuse_ca(key)
        return False

    # -- channels ------------------------------------------------------------------------
    def session_requested(self) -> asyncssh.SSHServerSession[Any] | bool:
        if self._identity is None or self._route is None:
            return False
        route = self._route
        if route.asset is None:
            return MenuSession(
                self._broker, self._identity.username, self._s.settings.ssh_listen.port
            )
        username, asset = self._identity.username, route.asset
        account = route.account or DEFAULT_ACCOUNT
        relay = RelaySession(
            self._broker, username, asset, account, self._source, self._start_relay
        )
        return SessionChannel(
            relay,
            lambda: FileSession(
                self._broker, username, asset, account, self._source, self._broker.connect_ssh
            ),
            lambda what: self._refuse(what, asset, "refused by the gateway"),
        )

    async def _start_relay(self, session: RelaySession) -> None:
        ticket = await self._broker.open(
            session.username,
            session.asset,
            "ssh",
            protocol="ssh",
            source=session.source,
            kill=session.kill,
            account=session.account,
            command=session.request.command,
        )
        try:
            conn = await self._broker.connect_ssh(ticket)
            await session.attach(ticket, conn)
        except (ConduitError, asyncssh.Error, OSError):
            await self._broker.close(ticket, "upstream_failed")
            raise

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        """``ssh -R``: never; nothing in the plant may open connections back to a vendor."""
        self._refuse("remote forwarding", f"{listen_host[:255]}:{listen_port}")
        return False

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Awaitable[asyncssh.SSHTCPSession[bytes]]:
        """``ssh -L``: one tunnel session per connection to a granted port of the routed
        asset; asyncssh awaits the set-up before it answers the channel open."""
        target = f"{dest_host[:255]}:{dest_port}"
        if self._identity is None or self._route is None or self._conn is None:
            self._refuse("direct-tcpip", target, "not authenticated")
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "refused")
        if self._route.asset is None:
            self._refuse("direct-tcpip", target, "no asset in the username")
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "not found or not permitted"
            )
        return open_tunnel(
            self._broker,
            self._conn,
            self._identity.username,
            self._route.asset,
            (dest_host, dest_port),
            self._source,
        )

    def _refuse(self, what: str, target: str, reason: str = "not permitted") -> None:
        self._s.tasks.start(
            "audit-refusal",
            self._s.audit.record(
                actor=self._identity.username if self._identity else self._user(),
                action="ssh.refused",
                result="denied",
                target=target,
                source=self._source,
                detail={"request": what, "reason": reason},
            ),
        )


class MenuSession(asyncssh.SSHServerSession[bytes]):
    """``ssh alice@gateway`` with no asset: what alice may reach now, and how."""

    def __init__(self, broker: Broker, username: str, port: int) -> None:
        self._broker = broker
        self._username = username
        self._port = port
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._gone = False

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone = True  # the client left before the menu was made: nothing to write to

    def eof_received(self) -> bool:
        # `ssh -n` sends EOF straight away. asyncssh's default answer (False) would half-close
        # our side too, and the menu written after it would raise BrokenPipeError and never
        # end the channel. The menu reads nothing, so EOF changes nothing here.
        return True

    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        return True

    def session_started(self) -> None:
        self._broker.tasks.start("ssh-menu", self._show())

    async def _show(self) -> None:
        chan = self._chan
        assert chan is not None  # noqa: S101 - set in connection_made
        reachable = await self._broker.reachable(self._username, "ssh")
        if not reachable:
            lines = [
                "You may not reach any asset over SSH right now.",
                "Request access in the portal.",
            ]
        else:
            lines = ["Assets you may reach over SSH now:"]
            for entry in reachable:
                until = entry.valid_until
                shown = until.strftime("%Y-%m-%d %H:%M UTC") if until else "no end"
                route = entry.asset if entry.account == DEFAULT_ACCOUNT else (
                    f"{entry.asset}+{entry.account}")  # fmt: skip
                lines.append(f"  {route:24} until {shown}")
            lines.append(f"Connect with: ssh -p {self._port} {self._username}+ASSET@<gateway>")
        if self._gone:
            return
        chan.write("".join(f"{line}\r\n" for line in lines).encode())
        chan.exit(0)


class RefusalAudit:
    """The admission refusal summaries (admission.py), each one ``ssh.connection.refused``
    audit event; ``close()`` writes what the last interval held, at shutdown."""

    def __init__(self, services: Services) -> None:
        self._s = services
        self.log = RefusalLog(report=self._report)
        self._writing: set[asyncio.Task[None]] = set()

    def _report(self, busiest: str, summary: Mapping[str, object]) -> None:
        record = self._s.audit.record(
            actor="anonymous",
            action="ssh.connection.refused",
            result="failure",
            source=busiest,
            detail=summary,
        )
        task = self._s.tasks.start("audit-ssh-refusals", record)
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def close(self) -> None:
        self.log.flush()
        if self._writing:
            await asyncio.wait(set(self._writing))


async def start_ssh_server(
    services: Services,
    broker: Broker,
    authenticator: Authenticator,
    refusals: RefusalAudit,
    *,
    reuse_port: bool = False,  # worker processes of one node share the port (SO_REUSEPORT)
) -> asyncssh.SSHAcceptor:
    settings = services.settings
    listen = settings.ssh_listen
    fastpath.install()  # both legs: these connections and the upstream ones (fastpath.py)
    gate = UnauthenticatedGate(
        settings.ssh.max_unauthenticated,
        settings.ssh.max_unauthenticated_per_source,
        lambda reason: services.metrics.ssh_refused.labels(reason).inc(),
        refusals.log,
    )
    return await asyncssh.create_server(
        lambda: GatewaySSHServer(services, gate, broker, authenticator),
        listen.host,
        listen.port,
        server_host_keys=list(services.keys.ssh_host_keys),
        server_version=SERVER_VERSION,
        login_timeout=settings.ssh.login_timeout_seconds,
        encryption_algs=[
            "aes128-gcm@openssh.com",
            "aes256-gcm@openssh.com",
            "chacha20-poly1305@openssh.com",
            "aes128-ctr",
            "aes256-ctr",
        ],
        agent_forwarding=False,
        x11_forwarding=False,
        allow_scp=False,
        line_editor=False,
        encoding=None,  # bytes end to end: the relay never decodes what it carries
        reuse_address=True,
        reuse_port=reuse_port or None,
        tunnel=(
            _proxy_listener(services, refusals, reuse_port)
            if settings.ssh.proxy_protocol_from
            else ()
        ),
    )


def _proxy_listener(
    services: Services, refusals: RefusalAudit, reuse_port: bool
) -> ProxyListener:
    """PROXY protocol v2 from the configured load balancers only (gateway.ssh.proxy_gate);
    its refusals are counted and audited like the admission gate's."""
    settings = services.settings.ssh

    def refused(reason: str, source: str) -> None:
        services.metrics.ssh_refused.labels(reason).inc()
        refusals.log.refused(reason, source)

    return ProxyListener(
        settings.proxy_networks(), refused, settings.login_timeout_seconds, reuse_port=reuse_port
    )
