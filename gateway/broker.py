"""The broker: the single place where a session is decided, recorded, registered and ended.

``open`` runs the lifecycle of ARCHITECTURE.md for every protocol: decide (rbac through the
authorization service; a refusal is audited and looks like "not found"), record (no
recording, no session), register with a watchdog, audit ``session.start``; ``connect_ssh``
and ``connect_tunnel`` reach the asset only with the Authorization; ``close`` finalizes the
recording and audits ``session.end`` with the reason. Front ends translate; they never decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncssh
from sqlalchemy import select

from gateway import live_store
from gateway.authz.tables import Asset
from gateway.errors import ConduitError, NotFoundOrForbidden
from gateway.events import Change
from gateway.live import KillHandle, LiveSession
from gateway.recordings_index import SessionInfo
from gateway.services import Services
from gateway.ssh import hostkeys, upstream
from gateway.tasks import TaskSet
from gateway.vault import DEFAULT_ACCOUNT, credential_for
from rbac.names import TUNNEL_RE
from rbac.policy import Authorization, Decision
from recordings import Kind
from recordings.writer import RecordingWriter

log = logging.getLogger(__name__)
# What a client may name as the destination of a tunnel to asset A: every one means A itself
# (as "localhost" means the server itself in a plain ``ssh -L``). The gateway always connects
# to A's configured host, so a tunnel can never be pointed at another machine.
TUNNEL_SELF_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
TUNNEL_CONNECT_TIMEOUT_SECONDS = 15
KILLED = "killed"  # the end reason of a session a person ended (CLI, API)
MARKER_EVENT = 4  # the marker event type in terminal and tunnel recordings (FORMAT.md)


def tunnel_host_accepted(dest_host: str, asset: str, asset_host: str | None) -> bool:
    """Whether ``dest_host`` (as the client sent it) names ``asset``: a loopback name, the
    asset's name or its configured host (names compared without case)."""
    name = dest_host.lower()
    return (
        name in TUNNEL_SELF_NAMES
        or name == asset
        or (asset_host is not None and name == asset_host.lower())
    )


@dataclass
class Ticket:
    """An open, authorized, recorded session."""

    session_id: str
    username: str
    asset: str
    action: str
    protocol: str
    source: str
    proof: Authorization
    writer: RecordingWriter
    live: LiveSession
    record_input: bool
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    recheck: asyncio.Event = field(default_factory=asyncio.Event)
    end_reason: str = ""
    # A person's kill: who, and their text (verbatim, at most live_store.KILL_NOTE_MAX characters),
    # kept apart from the end reason, which is a fixed code (FORMAT.md footer, metrics).
    killed_by: str = ""
    end_note: str = ""
    last_activity: float = 0.0
    # Other actions that also keep this session open (an SFTP session lives while the user
    # may read or write); each file operation is still checked on its own (``permits``).
    also: tuple[str, ...] = ()
    watchdog: asyncio.Task[None] | None = None


class Broker:
    def __init__(self, services: Services) -> None:
        self._s = services
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
    ) -> Ticket:
        """Open a session for ``action``, or for the first of ``also`` that is allowed."""
        s = self._s
        decision = await self._decide(username, asset, (action, *also))
        if decision.allowed and decision.authorization is not None:
            also = tuple(a for a in (action, *also) if a != decision.authorization.action)
            action = decision.authorization.action
        if not decision.allowed or decision.authorization is None:
            await s.audit.record(
                actor=username,
                action="session.denied",
                result="denied",
                target=asset,
                source=source,
                detail={
                    "protocol": protocol,
                    "action_requested": action,
                    "reason": decision.reason,
                },
            )
            raise NotFoundOrForbidden(decision.reason)
        session_id = s.live.new_id()
        async with s.sessions() as db:
            record_input = bool(
                (await db.execute(select(Asset.record_input).where(Asset.name == asset))).scalar()
            )

        def recording_failed(reason: str) -> None:
            ticket = self._tickets.get(session_id)
            if ticket is not None:
                s.tasks.start(f"kill-{session_id}", self.kill(session_id, "recording_failed"))

        try:
            writer = await s.recordings.start(
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
        now = s.clock()
        live = LiveSession(
            session_id=session_id,
            node=s.node,
            username=username,
            asset=asset,
            protocol=protocol,
            started_at=now,
            valid_until=decision.valid_until,
            kill=kill,
        )
        ticket = Ticket(
            session_id,
            username,
            asset,
            action,
            protocol,
            source,
            decision.authorization,
            writer,
            live,
            record_input,
            last_activity=asyncio.get_running_loop().time(),
            also=also,
        )
        try:
            async with s.sessions() as db, db.begin():
                await live_store.add(db, live)
        except Exception:
            # Not visible to operators means not killable from outside: refuse (fail closed).
            await s.recordings.close(writer, "refused")
            raise
        self._tickets[session_id] = ticket
        s.live.register(live)
        await s.audit.record(
            actor=username,
            action="session.start",
            result="success",
            target=asset,
            source=source,
            detail={
                "session_id": session_id,
                "protocol": protocol,
                "grant_id": decision.grant_id or "",
                "recording_id": writer.recording_id,
                "valid_until": decision.valid_until.isoformat() if decision.valid_until else "",
            },
        )
        ticket.watchdog = s.tasks.start(f"watchdog-{session_id}", self._watch(ticket))
        return ticket

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
    def tasks(self) -> TaskSet:
        """The task set owning work started from synchronous protocol callbacks."""
        return self._s.tasks

    async def connect_ssh(
        self, ticket: Ticket, account: str = DEFAULT_ACCOUNT
    ) -> asyncssh.SSHClientConnection:
        s = self._s
        async with s.sessions() as db:
            row = (await db.execute(select(Asset).where(Asset.name == ticket.asset))).scalar_one()
            pins = await hostkeys.pinned(db, ticket.asset)
            credential = await credential_for(db, s.keys.master_key, ticket.proof, account)
        try:
            return await upstream.connect(ticket.proof, row.host, row.port, credential, pins)
        except upstream.UpstreamError as exc:
            mismatch = isinstance(exc, upstream.HostKeyMismatch)
            if mismatch:  # a man in the middle, or a rebuilt asset nobody re-pinned
                s.metrics.alert("hostkey_mismatch", exc.detail)
            await self._audit(
                ticket,
                "upstream.hostkey_mismatch" if mismatch else "upstream.failed",
                "failure",
                {"session_id": ticket.session_id, "reason": exc.detail},
            )
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
        async with self._s.sessions() as db:
            asset_host = (await db.execute(select(Asset.host).where(Asset.name == asset))).scalar()
        if not tunnel_host_accepted(dest_host, asset, asset_host):
            shown = dest_host[:255]
            reason = f"tunnel destination {shown!r} is not asset {asset}"
            await self._s.audit.record(
                actor=username,
                action="session.denied",
                result="denied",
                target=asset,
                source=source,
                detail={
                    "protocol": "tunnel",
                    "action_requested": action,
                    "destination": f"{shown}:{dest_port}",
                    "reason": reason,
                },
            )
            raise NotFoundOrForbidden(reason)
        return await self.open(
            username, asset, action, protocol="tunnel", source=source, kill=kill, kind=Kind.TUNNEL
        )

    async def connect_tunnel(
        self, ticket: Ticket, protocol_factory: Callable[[], asyncio.Protocol]
    ) -> asyncio.Transport:
        """TCP to the port the ticket's Authorization names (``tunnel:<port>``) on the asset's
        configured host: nothing the client sent chooses where the connection goes."""
        s = self._s
        match = TUNNEL_RE.fullmatch(ticket.proof.action)
        if match is None:
            raise ConduitError(
                "not a tunnel session", f"{ticket.proof.action} is not tunnel:<port>"
            )
        port = int(match.group(1))
        async with s.sessions() as db:
            host = (
                await db.execute(select(Asset.host).where(Asset.name == ticket.asset))
            ).scalar_one()
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
            raise upstream.UpstreamError("the asset is not reachable", detail) from None
        return transport

    def activity(self, ticket: Ticket) -> None:
        ticket.last_activity = asyncio.get_running_loop().time()

    async def serve_kill_requests(self) -> None:
        """End this node's sessions that someone marked for killing (CLI, API, other node)."""
        async with self._s.sessions() as db:
            requests = await live_store.kill_requests(db, self._s.node)
        for session_id, note, actor in requests:
            ticket = self._tickets.get(session_id)
            if ticket is None:
                continue
            await self._s.audit.record(
                actor=actor or "system",
                action="session.kill",
                result="success",
                target=ticket.asset,
                detail={"session_id": session_id, "reason": KILLED, "note": note},
            )
            await self.kill(session_id, KILLED, note=note, by=actor)

    async def kill(self, session_id: str, reason: str, *, note: str = "", by: str = "") -> bool:
        """End a live session with ``reason``, a fixed code (``killed``, ``revoked``,
        ``expired``, ``shutdown``...); a person's ``note`` travels beside it, never in it."""
        ticket = self._tickets.get(session_id)
        if ticket is None:
            return False
        if not ticket.end_reason:
            ticket.end_reason, ticket.killed_by = reason, by
            ticket.end_note = note[: live_store.KILL_NOTE_MAX]
        shown = f"{ticket.end_reason}: {ticket.end_note}" if ticket.end_note else ticket.end_reason
        await ticket.live.kill(shown)
        return True

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
            ticket.writer.record(MARKER_EVENT, label.encode())
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
                decision = await self._decide(
                    ticket.username, ticket.asset, (ticket.action, *ticket.also)
                )
                if not decision.allowed:
                    until = ticket.live.valid_until
                    expired = until is not None and s.clock() >= until
                    await self.kill(ticket.session_id, "expired" if expired else "revoked")
                    return
                ticket.live.valid_until = decision.valid_until
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
