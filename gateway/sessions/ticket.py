"""What an open session carries: the ``Ticket`` a front end gets from ``Broker.open`` and the
``Target`` in it, and the check every upstream connect makes on it.

The target is read once, when the session opens, from the asset's row and its host-key pins:
where to connect, as which account, which host keys to trust, whether typed input is
recorded. ``check_ticket`` refuses a ticket whose target is not what its ``Authorization``
(made only by ``rbac``) covers, or whose authorization has run out. Does not decide access
(``rbac`` does) and does not connect anywhere (the front ends' upstream modules do).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field

from gateway.errors import TicketRefused
from gateway.sessions.live import LiveSession
from gateway.sessions.tap import OutputTap
from rbac.modbus import is_modbus_action
from rbac.names import DESKTOP_ACTIONS, TUNNEL_RE, account_of, logs_in
from rbac.policy import Authorization
from recordings.writer import RecordingWriter


@dataclass(frozen=True)
class Target:
    """Where a session goes, from one read of its asset (never from what the client sent)."""

    asset: str
    host: str
    port: int
    account: str
    host_keys: tuple[str, ...]  # pinned OpenSSH public key lines; none means no SSH connect
    record_input: bool
    protocol: str = "ssh"  # the asset's: ssh, vnc, rdp, modbus
    certificate_pins: tuple[str, ...] = ()  # SHA-256 of pinned TLS certificates (desktops)
    modbus: bool = False  # the port is the asset's Modbus/TCP port (a protocol-aware tunnel)


@dataclass
class Ticket:
    """An open, authorized, recorded, registered session."""

    session_id: str
    username: str
    asset: str
    action: str
    protocol: str
    source: str
    proof: Authorization
    target: Target
    writer: RecordingWriter
    live: LiveSession
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    recheck: asyncio.Event = field(default_factory=asyncio.Event)
    end_reason: str = ""
    # A person's kill: who, and their text (verbatim, at most store.KILL_NOTE_MAX characters),
    # kept apart from the end reason, which is a fixed code (FORMAT.md footer, metrics).
    killed_by: str = ""
    end_note: str = ""
    last_activity: float = 0.0
    # Other actions that also keep this session open (an SFTP session lives while the user
    # may read or write); each file operation is still checked on its own (``permits``).
    also: tuple[str, ...] = ()
    watchdog: asyncio.Task[None] | None = None
    # Recent output and live watchers of a terminal session (shell or command); None for
    # file transfers and tunnels, which have no screen to watch.
    tap: OutputTap | None = None
    # A Modbus session (protocol "modbus"): the Modbus actions (rbac.modbus) its user holds
    # on the asset now, each with when it ends, and when the armed write window ends. The
    # broker keeps both current (watchdog, kill poll); the tunnel's guard reads them.
    modbus_grants: tuple[tuple[str, dt.datetime | None], ...] = ()
    write_until: dt.datetime | None = None

    @property
    def record_input(self) -> bool:
        return self.target.record_input

    @property
    def account(self) -> str:
        return self.target.account


def check_ticket(
    ticket: Ticket, now: dt.datetime, *, login: bool = False, desktop: bool = False
) -> None:
    """Refuse (``TicketRefused``) a ticket that does not hold at ``now``.

    Its target must be the asset and the account its authorization names, the session's
    own asset, and the authorization must still be in force. ``login``: the connect logs in
    to an account, which only an ``ssh``/``sftp-*`` authorization covers (not a tunnel's).
    ``desktop``: the connect opens the asset's desktop, which only a ``vnc`` or ``rdp``
    authorization covers, and only the one naming the asset's own protocol."""
    proof, target = ticket.proof, ticket.target
    problems = []
    if login and not logs_in(proof.action):
        problems.append(f"{proof.action} does not log in to an account")
    if desktop and (proof.action not in DESKTOP_ACTIONS or proof.action != target.protocol):
        problems.append(f"{proof.action} does not open a {target.protocol} desktop")
    if proof.obj != f"asset:{target.asset}" or ticket.asset != target.asset:
        problems.append(f"target asset {target.asset} is not the authorized {proof.obj}")
    tunnel = TUNNEL_RE.fullmatch(proof.action)
    if tunnel is not None and int(tunnel.group(1)) != target.port:
        problems.append(f"target port {target.port} is not the authorized {proof.action}")
    if tunnel is not None and target.modbus:
        problems.append(f"port {target.port} is Modbus/TCP: {proof.action} does not cover it")
    if is_modbus_action(proof.action) and not target.modbus:
        problems.append(f"target port {target.port} is not the asset's Modbus/TCP port")
    if account_of(proof.action) != target.account:
        problems.append(f"account {target.account} is not covered by the authorized {proof.action}")
    if proof.subject != f"user:{ticket.username}":
        problems.append(f"authorization is for {proof.subject}, not user:{ticket.username}")
    if proof.valid_until is not None and now >= proof.valid_until:
        problems.append(f"authorization ended at {proof.valid_until.isoformat()}")
    if ticket.ended.is_set():
        problems.append("the session has ended")
    if problems:
        raise TicketRefused(
            "not found or not permitted",
            f"session {ticket.session_id}: upstream refused: {'; '.join(problems)}",
        )
