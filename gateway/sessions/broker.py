"""The broker: the single place where a session is decided, recorded, registered and ended.

``open`` runs the lifecycle of ARCHITECTURE.md for every protocol in three steps: ``_decide``
(rbac through the authorization service, the target account included; a refusal is audited
and looks like "not found"), ``_record`` (no recording, no session) and ``_register`` (live
registry, shared table, watchdog, ``session.start``). The ``Ticket`` it returns holds the
target from one read of the asset. ``connect_ssh`` and ``connect_tunnel`` check the ticket
(``check_ticket``; a refusal is audited) and reach the asset through the connector the front
end registered (this package imports no front end); ``close`` finalizes the recording and
audits ``session.end`` with the reason. Front ends translate; they never decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from gateway.authz import certificates, hostkeys
from gateway.authz.tables import Asset, modbus_port_of
from gateway.db.health import UNREACHABLE_TEXT
from gateway.errors import (
    ConduitError,
    HostKeyMismatch,
    NotFoundOrForbidden,
    TicketRefused,
    UpstreamError,
)
from gateway.recorder import SessionInfo
from gateway.services import Services
from gateway.sessions import store as live_store
from gateway.sessions import write_windows
from gateway.sessions.events import Change
from gateway.sessions.live import KillHandle, LiveSession
from gateway.sessions.tap import OutputTap
from gateway.sessions.ticket import Target, Ticket, check_ticket
from gateway.tasks import TaskSet
from gateway.vault import DEFAULT_ACCOUNT, Credential, credential_for
from rbac.modbus import is_modbus_action
from rbac.names import DESKTOP_ACTIONS, DESKTOP_GRANTS, TUNNEL_RE, account_of, with_account
from rbac.policy import Decision
from recordings import Kind
from recordings.terminal import TerminalEvent
from recordings.tunnel import TunnelEvent
from recordings.writer import RecordingWriter

if TYPE_CHECKING:
    import asyncssh

# How a front end reaches an asset over SSH once the broker has checked the ticket and
# fetched the credential: gateway.ssh.upstream.connect, registered by ``conduit serve``.
SSHConnector = Callable[
    [Ticket, Credential, dt.datetime], Awaitable["asyncssh.SSHClientConnection"]
]
# How a front end reaches an asset's desktop (VNC, or RDP through a renderer) once the broker
# has checked the ticket: gateway.desktop.upstream.connect, registered by ``conduit serve``.
# The credential is None when the asset has none vaulted (a VNC target without a password).
DesktopConnector = Callable[
    [Ticket, Credential | None, frozenset[str], tuple[int, int] | None], Awaitable[Any]
]

log = logging.getLogger(__name__)
# What a client may name as the destination of a tunnel to asset A: every one means A itself
# (as "localhost" means the server itself in a plain ``ssh -L``). The gateway always connects
# to A's configured host, so a tunnel can never be pointed at another machine.
TUNNEL_SELF_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
TUNNEL_CONNECT_TIMEOUT_SECONDS = 15
# An exec session's command line in session.start is cut here (an audit detail holds at most
# 16 KiB, and control characters grow sixfold in its JSON); ``command_length`` says how long
# it was. The recording keeps it whole: the SSH edge refuses commands over 64 KiB.
AUDIT_COMMAND_CHARS = 1024
KILLED = "killed"  # the end reason of a session a person ended (CLI, API)
# Sessions with a screen someone may watch: native SSH shells and commands, and the browser
# terminal. Their tickets carry an OutputTap the relay feeds.
TERMINAL_PROTOCOLS = frozenset({"ssh", "web-ssh"})


def tunnel_host_accepted(dest_host: str, asset: str, asset_host: str | None) -> bool:
    """Whether ``dest_host`` (as the client sent it) names ``asset``: a loopback name, the
    asset's name or its configured host (names compared without case)."""
    name = dest_host.lower()
    return (
        name in TUNNEL_SELF_NAMES
        or name == asset
        or (asset_host is not None and name == asset_host.lower())
    )


def ended_line(ticket: Ticket) -> str:
    """Why a session ended, as its user and its watchers see it: the fixed code, and a
    person's note after it (``killed: wrong asset, call me``)."""
    return f"{ticket.end_reason}: {ticket.end_note}" if ticket.end_note else ticket.end_reason


@dataclass(frozen=True)
class Reachable:
    """An asset (and account) a user may open a session on now, and until when."""

    asset: str
    account: str
    valid_until: dt.datetime | None


class Broker:
    def __init__(
        self,
        services: Services,
        *,
        ssh_connector: SSHConnector | None = None,
        desktop_connector: DesktopConnector | None = None,
    ) -> None:
        self._s = services
        self._ssh_connector = ssh_connector
        self._desktop_connector = desktop_connector
        self._tickets: dict[str, Ticket] = {}
        services.bus.subscribe(self._on_change)

    def _on_change(self, change: Change) -> None:
        for ticket in self._tickets.values():
            self._wake(ticket)

    def _wake(self, ticket: Ticket) -> None:
        ticket.recheck.set()

    async def open(
        self,
        username: str,
        asset: str,
        action: str,
        *,
        protocol: str,
        source: str,
        kill: KillHandle,
        kind: Kind = Kind.TERMINAL,
        also: tuple[str, ...] = (),
        account: str = DEFAULT_ACCOUNT,
        target: Target | None = None,
        command: str | None = None,
    ) -> Ticket:
        """Open a session for ``action`` (or the first of ``also`` that is allowed) as the
        asset's ``account``: decide, record, register. ``target`` is given by callers that
        read it already (a tunnel checks its destination against it first).

        ``command`` is an exec session's command line: evidence, so it goes to session.start
        and, as the first event, into the (encrypted) recording. It can hold a secret the
        user typed, so it never goes to a log line.
        """
        actions = tuple(with_account(a, account) for a in (action, *also))
        if not self._s.db_health.up:  # no database: nothing new opens (fail closed)
            if self._s.db_health.audit_refusal():
                await self._denied(username, asset, source, {
                    "protocol": protocol, "action_requested": actions[0], "account": account,
                    "reason": "database unreachable",
                })  # fmt: skip
            raise ConduitError(UNREACHABLE_TEXT, "database unreachable")
        decision = await self._decide(username, asset, actions)
        if not decision.allowed or decision.authorization is None:
            await self._denied(username, asset, source, {
                "protocol": protocol, "action_requested": actions[0], "account": account,
                "reason": decision.reason,
            })  # fmt: skip
            raise NotFoundOrForbidden(decision.reason)
        target = target or await self._target(asset, account)
        if target is None:  # removed since the policy was loaded
            raise NotFoundOrForbidden(f"asset:{asset} does not exist")
        session_id = self._s.live.new_id()
        writer = await self._record(session_id, username, asset, protocol, source, kind)
        if command is not None:
            writer.record(TerminalEvent.COMMAND, command.encode())
        live = LiveSession(
            session_id=session_id,
            node=self._s.node,
            worker=self._s.worker,
            username=username,
            asset=asset,
            protocol=protocol,
            started_at=self._s.clock(),
            valid_until=decision.valid_until,
            kill=kill,
        )
        chosen = decision.authorization.action
        ticket = Ticket(
            session_id,
            username,
            asset,
            chosen,
            protocol,
            source,
            decision.authorization,
            target,
            writer,
            live,
            last_activity=asyncio.get_running_loop().time(),
            also=tuple(a for a in actions if a != chosen),
            tap=OutputTap() if protocol in TERMINAL_PROTOCOLS else None,
        )
        await self._register(ticket, decision, command)
        return ticket

    async def _denied(self, username: str, asset: str, source: str, detail: dict[str, Any]) -> None:
        """A session refused before it opened (``session.denied``): the full reason here,
        "not found or not permitted" for the user."""
        await self._s.audit.record(
            actor=username, action="session.denied", result="denied", target=asset,
            source=source, detail=detail,
        )  # fmt: skip

    async def _target(self, asset: str, account: str, port: int | None = None) -> Target | None:
        """The session's target from one read of the asset and its host-key pins; ``port``
        replaces the asset's own (a tunnel's destination port, which its action names)."""
        async with self._s.sessions() as db:
            row = (await db.execute(select(Asset).where(Asset.name == asset))).scalar()
            if row is None:
                return None
            keys = await hostkeys.pinned_lines(db, asset)
            certs = await certificates.pinned(db, asset) if row.protocol in DESKTOP_ACTIONS else ()
        return Target(
            asset=asset,
            host=row.host,
            port=row.port if port is None else port,
            account=account,
            host_keys=keys,
            record_input=bool(row.record_input),
            protocol=row.protocol,
            certificate_pins=certs,
            modbus=port is not None and port == modbus_port_of(row),
        )

    async def _record(
        self, session_id: str, username: str, asset: str, protocol: str, source: str, kind: Kind
    ) -> RecordingWriter:
        """Open the session's recording; if it cannot be opened, the session is refused."""
        s = self._s

        def recording_failed(reason: str) -> None:
            if session_id in self._tickets:
                s.tasks.start(f"kill-{session_id}", self.kill(session_id, "recording_failed"))

        try:
            return await s.recordings.start(
                SessionInfo(
                    username=username, asset=asset, protocol=protocol, session_id=session_id
                ),
                kind=kind,
                on_failure=recording_failed,
            )
        except ConduitError as exc:
            await s.audit.record(
                actor=username,
                action="session.denied",
                result="error",
                target=asset,
                source=source,
                detail={"protocol": protocol, "reason": exc.detail},
            )
            raise

    async def _register(self, ticket: Ticket, decision: Decision, command: str | None) -> None:
        """Make the session visible and killable everywhere, audit it, start its watchdog."""
        s = self._s
        try:
            async with s.sessions() as db, db.begin():
                await live_store.add(db, ticket.live)
        except Exception:
            # Not visible to operators means not killable from outside: refuse (fail closed).
            await s.recordings.close(ticket.writer, "refused")
            raise
        self._tickets[ticket.session_id] = ticket
        s.live.register(ticket.live)
        until = decision.valid_until
        detail: dict[str, object] = {
            "session_id": ticket.session_id,
            "protocol": ticket.protocol,
            "action": ticket.action,
            # Which serving process owns it: behind a balancer, where the login landed.
            "node": ticket.live.node,
            "worker": ticket.live.worker,
            "account": ticket.target.account,
            "grant_id": decision.grant_id or "",
            "recording_id": ticket.writer.recording_id,
            "valid_until": until.isoformat() if until else "",
        }
        if command is not None:
            detail["command"] = command[:AUDIT_COMMAND_CHARS]
            detail["command_length"] = len(command)
        await self._audit(
            ticket,
            "session.start",
            "success",
            detail,
        )
        ticket.watchdog = s.tasks.start(f"watchdog-{ticket.session_id}", self._watch(ticket))

    async def reachable(self, username: str, action: str) -> list[Reachable]:
        """What ``username`` may open with ``action`` right now: each asset and account
        (``ssh`` on the default account, ``ssh:account=maint`` on ``maint``), sorted."""
        out = []
        for asset, granted, decision in await self._s.authz.reachable_now(username):
            if granted == action or granted.startswith(f"{action}:account="):
                out.append(Reachable(asset, account_of(granted), decision.valid_until))
        return sorted(out, key=lambda r: (r.asset, r.account != DEFAULT_ACCOUNT, r.account))

    async def _decide(self, username: str, asset: str, actions: tuple[str, ...]) -> Decision:
        """The first allowed decision among ``actions``, else the first refusal."""
        first: Decision | None = None
        for action in actions:
            decision = await self._s.authz.authorize(username, asset, action)
            if decision.allowed:
                return decision
            first = first or decision
        assert first is not None  # noqa: S101 - actions is never empty
        return first

    async def permits(self, ticket: Ticket, action: str, operation: str, target: str) -> bool:
        """One operation inside an open session (an SFTP write, say), checked on its own.

        A refusal is audited with the operation and what it was aimed at."""
        action = with_account(action, ticket.account)
        decision = await self._s.authz.authorize(ticket.username, ticket.asset, action)
        if decision.allowed:
            return True
        await self.refuse_operation(ticket, action, operation, target, decision.reason)
        return False

    async def refuse_operation(
        self, ticket: Ticket, action: str, operation: str, target: str, reason: str
    ) -> None:
        """Audit an operation refused inside an open session, by policy or by the protocol."""
        await self._audit(
            ticket,
            "operation.denied",
            "denied",
            {
                "session_id": ticket.session_id,
                "operation": operation,
                "path": target,
                "action_requested": action,
                "reason": reason,
            },
        )

    async def _audit(
        self, ticket: Ticket, action: str, result: str, detail: dict[str, Any]
    ) -> None:
        """An audit event about ``ticket``'s session: its user, asset and source."""
        await self._s.audit.record(
            actor=ticket.username,
            action=action,
            result=result,
            target=ticket.asset,
            source=ticket.source,
            detail=detail,
        )

    async def audit_operation(
        self, ticket: Ticket, action: str, paths: list[str], detail: dict[str, Any]
    ) -> None:
        """A completed operation inside a session (a file written, a directory removed)."""
        await self._audit(
            ticket,
            action,
            "failure" if "error" in detail else "success",
            {"session_id": ticket.session_id, "path": paths[0], **(
                {"to": paths[1]} if len(paths) > 1 else {}), **detail},
        )  # fmt: skip

    @property
    def clock(self) -> Callable[[], dt.datetime]:
        """The services' clock (what grant and write-window ends are compared with)."""
        return self._s.clock

    @property
    def tasks(self) -> TaskSet:
        """The task set owning work started from synchronous protocol callbacks."""
        return self._s.tasks

    async def _check(self, ticket: Ticket, *, login: bool = False, desktop: bool = False) -> None:
        """``check_ticket``, with a refusal audited (``upstream.refused``)."""
        try:
            check_ticket(ticket, self._s.clock(), login=login, desktop=desktop)
        except TicketRefused as exc:
            await self._audit(
                ticket, "upstream.refused", "denied", {"session_id": ticket.session_id,
                                                       "reason": exc.detail},
            )  # fmt: skip
            raise

    async def connect_ssh(self, ticket: Ticket) -> asyncssh.SSHClientConnection:
        """Log in to the ticket's target as its account, with the vaulted credential."""
        s = self._s
        if self._ssh_connector is None:
            raise ConduitError("SSH is not served here", "no SSH connector registered")
        await self._check(ticket, login=True)
        async with s.sessions() as db:
            credential = await credential_for(db, s.keys.master_key, ticket.proof)
        try:
            return await self._ssh_connector(ticket, credential, s.clock())
        except UpstreamError as exc:
            await self._upstream_failed(ticket, exc)
            raise

    async def _upstream_failed(self, ticket: Ticket, exc: UpstreamError) -> None:
        """Audit a failed connect; a key or certificate that is not pinned raises the alert."""
        mismatch = isinstance(exc, HostKeyMismatch)
        if mismatch:  # a man in the middle, or a rebuilt asset nobody re-pinned
            self._s.metrics.alert("hostkey_mismatch", exc.detail)
        await self._audit(
            ticket,
            "upstream.hostkey_mismatch" if mismatch else "upstream.failed",
            "failure",
            {"session_id": ticket.session_id, "reason": exc.detail},
        )

    async def open_desktop(
        self, username: str, asset: str, *, source: str, kill: KillHandle
    ) -> tuple[Ticket, frozenset[str]]:
        """A desktop session on ``asset`` with the action its protocol names (``vnc`` or
        ``rdp``), and which of ``DESKTOP_GRANTS`` it has (decided now, once)."""
        target = await self._target(asset, DEFAULT_ACCOUNT)
        protocol = target.protocol if target is not None else ""
        if protocol not in DESKTOP_ACTIONS:
            reason = f"asset:{asset} has no desktop" if target else f"asset:{asset} does not exist"
            await self._denied(username, asset, source, {
                "protocol": "desktop", "action_requested": "vnc|rdp", "reason": reason,
            })  # fmt: skip
            raise NotFoundOrForbidden(reason)
        ticket = await self.open(
            username, asset, protocol, protocol=protocol, source=source, kill=kill,
            kind=Kind.DESKTOP, target=target,
        )  # fmt: skip
        granted = []
        for grant in DESKTOP_GRANTS:
            if (await self._s.authz.authorize(username, asset, grant)).allowed:
                granted.append(grant)
        return ticket, frozenset(granted)

    async def connect_desktop(
        self, ticket: Ticket, grants: frozenset[str], size: tuple[int, int] | None = None
    ) -> Any:
        """Reach the ticket's desktop with the vaulted password (if the asset has one);
        ``size`` is the viewer's screen (an RDP desktop is drawn at it)."""
        s = self._s
        if self._desktop_connector is None:
            raise ConduitError("desktops are not served here", "no desktop connector registered")
        await self._check(ticket, desktop=True)
        async with s.sessions() as db:
            try:
                credential: Credential | None = await credential_for(
                    db, s.keys.master_key, ticket.proof
                )
            except NotFoundOrForbidden:
                credential = None  # no password vaulted: the target must need none
        try:
            return await self._desktop_connector(ticket, credential, grants, size)
        except UpstreamError as exc:
            await self._upstream_failed(ticket, exc)
            raise

    async def open_tunnel(
        self,
        username: str,
        asset: str,
        dest_host: str,
        dest_port: int,
        *,
        source: str,
        kill: KillHandle,
    ) -> Ticket:
        """One session per tunnelled connection: ``tunnel:<port>`` on ``asset``, decided,
        recorded and registered like any other. A destination host that does not name the
        asset (``tunnel_host_accepted``) is refused and audited before anything is decided."""
        action = f"tunnel:{dest_port}"
        target = await self._target(asset, DEFAULT_ACCOUNT, dest_port)
        if not tunnel_host_accepted(dest_host, asset, target.host if target else None):
            shown = dest_host[:255]
            reason = f"tunnel destination {shown!r} is not asset {asset}"
            await self._denied(username, asset, source, {
                "protocol": "tunnel", "action_requested": action,
                "destination": f"{shown}:{dest_port}", "reason": reason,
            })  # fmt: skip
            raise NotFoundOrForbidden(reason)
        if target is not None and target.modbus:
            return await self._open_modbus(username, asset, target, source=source, kill=kill)
        return await self.open(
            username,
            asset,
            action,
            protocol="tunnel",
            source=source,
            kill=kill,
            kind=Kind.TUNNEL,
            target=target,
        )

    async def _open_modbus(
        self, username: str, asset: str, target: Target, *, source: str, kill: KillHandle
    ) -> Ticket:
        """A tunnel to the asset's Modbus/TCP port: a ``modbus`` session, open while its user
        holds any Modbus action there (``rbac.modbus``); each request is judged by them in
        the tunnel (``gateway.ot.guard``). A blind ``tunnel:<port>`` grant does not open it."""
        grants = await self._s.authz.modbus_grants(username, asset)
        if not grants:
            reason = (
                f"user:{username} holds no Modbus action on asset:{asset} "
                f"(port {target.port} is Modbus/TCP)"
            )
            await self._denied(username, asset, source, {
                "protocol": "modbus", "action_requested": "modbus-read",
                "destination": f"{asset}:{target.port}", "reason": reason,
            })  # fmt: skip
            raise NotFoundOrForbidden(reason)
        actions = [action for action, _ in grants]
        ticket = await self.open(
            username, asset, actions[0], also=tuple(actions[1:]), protocol="modbus",
            source=source, kill=kill, kind=Kind.TUNNEL, target=target,
        )  # fmt: skip
        ticket.modbus_grants = tuple((a, d.valid_until) for a, d in grants)
        return ticket

    async def _modbus_decision(self, ticket: Ticket) -> Decision:
        """A Modbus session's grants, read again (into the ticket, for its guard); the one
        that lasts longest keeps the session open, none ends it."""
        grants = await self._s.authz.modbus_grants(ticket.username, ticket.asset)
        ticket.modbus_grants = tuple((a, d.valid_until) for a, d in grants)
        if not grants:
            return await self._decide(ticket.username, ticket.asset, (ticket.action,))
        never = dt.datetime.max.replace(tzinfo=dt.UTC)
        return max((d for _, d in grants), key=lambda d: d.valid_until or never)

    async def modbus_event(self, ticket: Ticket, kind: str, detail: dict[str, Any]) -> None:
        """Audit what a Modbus session's guard saw (its recording has it already): a write
        (``modbus.write``, with its result), a refusal (``operation.denied``), a device's
        identification (stored on the asset; ``asset.inventory`` when it changed), the read
        counts at the end (``modbus.reads``)."""
        full = {"session_id": ticket.session_id, **detail}
        if kind == "write":
            result = detail.get("result", "")
            outcome = "success" if result == "ok" else (
                "denied" if detail.get("by") == "gateway" else "failure")  # fmt: skip
            await self._audit(ticket, "modbus.write", outcome, full)
        elif kind == "refused":
            await self._audit(ticket, "operation.denied", "denied", {
                **full, "operation": "modbus", "path": "", "action_requested": ticket.action,
            })  # fmt: skip
        elif kind == "identity":
            if await self._s.authz.record_inventory(ticket.asset, detail, self._s.clock()):
                await self._audit(ticket, "asset.inventory", "success", full)
        elif kind == "reads":
            await self._audit(ticket, "modbus.reads", "success", full)

    async def serve_write_windows(self) -> None:
        """Bring this process's Modbus sessions' write windows up to date (armed or closed
        anywhere); each change is a marker in the session's recording."""
        modbus = {sid: t for sid, t in self._tickets.items() if t.protocol == "modbus"}
        if not modbus:
            return
        async with self._s.sessions() as db:
            open_until = await write_windows.open_until(db, modbus, self._s.clock())
        for session_id, ticket in modbus.items():
            until = open_until.get(session_id)
            if until == ticket.write_until:
                continue
            ticket.write_until = until
            text = (
                f"write window open until {until.isoformat()}" if until else "write window closed"
            )
            ticket.writer.record(TunnelEvent.MARKER, text.encode())

    async def connect_tunnel(
        self, ticket: Ticket, protocol_factory: Callable[[], asyncio.Protocol]
    ) -> asyncio.Transport:
        """TCP to the port the ticket's Authorization names (``tunnel:<port>``, or for a
        Modbus action the asset's Modbus/TCP port) on the asset's configured host: nothing
        the client sent chooses where the connection goes."""
        match = TUNNEL_RE.fullmatch(ticket.proof.action)
        if match is not None:
            port = int(match.group(1))
        elif is_modbus_action(ticket.proof.action):
            port = ticket.target.port  # from the asset's row; _check: it is the Modbus port
        else:
            raise ConduitError(
                "not a tunnel session", f"{ticket.proof.action} is not tunnel:<port>"
            )
        await self._check(ticket)  # the target's port is the one the authorization names
        host = ticket.target.host
        try:
            async with asyncio.timeout(TUNNEL_CONNECT_TIMEOUT_SECONDS):
                transport, _ = await asyncio.get_running_loop().create_connection(
                    protocol_factory, host, port
                )
        except (OSError, TimeoutError) as exc:
            detail = f"{ticket.asset} {host}:{port}: {type(exc).__name__}: {exc}"
            await self._audit(
                ticket,
                "upstream.failed",
                "failure",
                {"session_id": ticket.session_id, "reason": detail},
            )
            raise UpstreamError("the asset is not reachable", detail) from None
        return transport

    def activity(self, ticket: Ticket) -> None:
        ticket.last_activity = asyncio.get_running_loop().time()

    async def serve_kill_requests(self) -> int:
        """End this process's sessions that someone marked for killing (CLI, API, other
        node); returns how many it ended."""
        async with self._s.sessions() as db:
            requests = await live_store.kill_requests(db, self._s.node, self._s.worker)
        served = 0
        for session_id, note, actor in requests:
            ticket = self._tickets.get(session_id)
            if ticket is None or ticket.end_reason:  # gone, or already ending
                continue
            served += 1
            await self._s.audit.record(
                actor=actor or "system",
                action="session.kill",
                result="success",
                target=ticket.asset,
                detail={"session_id": session_id, "reason": KILLED, "note": note},
            )
            await self.kill(session_id, KILLED, note=note, by=actor)
        return served

    async def kill(self, session_id: str, reason: str, *, note: str = "", by: str = "") -> bool:
        """End a live session with ``reason``, a fixed code (``killed``, ``revoked``,
        ``expired``, ``shutdown``...); a person's ``note`` travels beside it, never in it."""
        ticket = self._tickets.get(session_id)
        if ticket is None:
            return False
        if not ticket.end_reason:
            ticket.end_reason, ticket.killed_by = reason, by
            ticket.end_note = note[: live_store.KILL_NOTE_MAX]
        await ticket.live.kill(ended_line(ticket))
        return True

    async def end_all(self, reason: str) -> int:
        """End every session of this process with ``reason`` (a fixed code, which their
        ``session.end`` carries); returns how many were open. Callers bound the wait."""
        ending = [sid for sid, ticket in self._tickets.items() if not ticket.end_reason]
        for session_id in ending:
            try:
                await self.kill(session_id, reason)
            except Exception:  # one front end failing to end must not spare the others
                log.exception("ending session %s failed", session_id)
        return len(ending)

    def live_ticket(self, session_id: str) -> Ticket | None:
        """The open session ``session_id`` if this process relays it (for a watch)."""
        return self._tickets.get(session_id)

    def schedule_close(self, ticket: Ticket, reason: str) -> None:
        """``close`` from a synchronous asyncssh callback, owned by the task set."""
        self._s.tasks.start(f"close-{ticket.session_id}", self.close(ticket, reason))

    async def close(self, ticket: Ticket, reason: str) -> None:
        """Called once by the front end when the session is over, whatever ended it."""
        if self._tickets.pop(ticket.session_id, None) is None:
            return
        reason = ticket.end_reason or reason
        ticket.end_reason = reason
        if reason == "client_integrity_failure":  # a packet altered on its way to us
            self._s.metrics.alert(
                "client_integrity_failure",
                f"session {ticket.session_id} of {ticket.username} to {ticket.asset}",
            )
        ticket.ended.set()
        ticket.recheck.set()
        if ticket.tap is not None:
            ticket.tap.end(ended_line(ticket))
        if ticket.watchdog is not None and ticket.watchdog is not asyncio.current_task():
            ticket.watchdog.cancel()
        self._s.live.unregister(ticket.session_id)
        try:
            async with self._s.sessions() as db, db.begin():
                await live_store.remove(db, ticket.session_id)
        except Exception:  # the row is cleared when this node starts next
            log.exception("could not remove live session row %s", ticket.session_id)
        recording_id = ticket.writer.recording_id
        if ticket.killed_by or ticket.end_note:
            # The header is written at the start; the kill's who and why go in as a marker,
            # inside the signed chain (and in an export), beside the footer's end reason.
            label = f"{reason} by {ticket.killed_by or 'system'}"
            label += f": {ticket.end_note}" if ticket.end_note else ""
            ticket.writer.record(TerminalEvent.MARKER, label.encode())
        try:
            await self._s.recordings.close(ticket.writer, reason)
        except Exception:  # the catalog row stays open; recovery closes it at next start
            log.exception("closing recording %s failed", recording_id)
        detail: dict[str, Any] = {
            "session_id": ticket.session_id,
            "reason": reason,
            "recording_id": recording_id,
            "bytes_up": ticket.live.bytes_up,
            "bytes_down": ticket.live.bytes_down,
        }
        if ticket.killed_by or ticket.end_note:
            detail.update(note=ticket.end_note, killed_by=ticket.killed_by)
        await self._audit(ticket, "session.end", "success", detail)

    async def _watch(self, ticket: Ticket) -> None:
        """End the session at valid_until, on revoke, on idle and at max duration.

        Wakes at the earliest deadline or when a change event sets ``recheck``; every wake
        asks the authorization service again, so a revoke or an edited window binds at once.
        """
        s = self._s
        limits = s.settings.sessions
        loop = asyncio.get_running_loop()
        started_mono = loop.time() - (s.clock() - ticket.live.started_at).total_seconds()
        first = True
        while not ticket.ended.is_set():
            if not first:
                try:
                    decision = (
                        await self._modbus_decision(ticket) if ticket.protocol == "modbus"
                        else await self._decide(ticket.username, ticket.asset,
                                                (ticket.action, *ticket.also))
                    )  # fmt: skip
                except Exception as error:
                    if not s.db_health.failed(error):
                        raise
                    # No database, no new decision: the last one stands (its valid_until
                    # included, enforced from memory) until the outage grace ends it.
                    decision = None
                if decision is None:
                    until = ticket.live.valid_until
                    if until is not None and s.clock() >= until:
                        await self.kill(ticket.session_id, "expired")
                        return
                elif not decision.allowed:
                    until = ticket.live.valid_until
                    expired = until is not None and s.clock() >= until
                    await self.kill(ticket.session_id, "expired" if expired else "revoked")
                    return
                else:
                    ticket.live.valid_until = decision.valid_until
                    if decision.authorization is not None:
                        ticket.proof = decision.authorization
            first = False
            deadlines = [
                started_mono + limits.max_duration_seconds,
                ticket.last_activity + limits.idle_timeout_seconds,
            ]
            if ticket.live.valid_until is not None:
                remaining = (ticket.live.valid_until - s.clock()).total_seconds()
                deadlines.append(loop.time() + max(0.0, remaining))
            wait = max(0.0, min(deadlines) - loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await ticket.recheck.wait()
            ticket.recheck.clear()
            if ticket.ended.is_set():
                return
            now_mono = loop.time()
            if now_mono >= started_mono + limits.max_duration_seconds:
                await self.kill(ticket.session_id, "max_duration")
                return
            if now_mono >= ticket.last_activity + limits.idle_timeout_seconds:
                await self.kill(ticket.session_id, "idle")
                return
