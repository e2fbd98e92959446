"""A kill that needs no database: a unix socket per serving process, for the node's operator.

While PostgreSQL is unreachable nobody can sign in to the portal and a ``conduit sessions
kill`` request cannot be stored, yet an operator must still be able to end a session. Each
``conduit serve`` process listens on ``<data_dir>/ctl-<node hash>-<worker>.sock`` (0600, inside
the 0700 data directory) and accepts only peers whose uid (``SO_PEERCRED``) is root or its own:
whoever can already read the node's keys. ``conduit sessions kill ID --local`` asks every
such socket; the process relaying the session ends it from memory (the live registry) with
reason ``killed``, then audits ``session.kill`` (into the audit spool while the database is
away; the kill never waits for the audit). One JSON line each way, at most ``MAX_REQUEST``
bytes. Does nothing but kill: listing and other control go through the database as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import pwd
import re
import socket
import struct
from pathlib import Path

from gateway.errors import ConduitError
from gateway.services import Services
from gateway.sessions import store as live_store
from gateway.sessions.broker import KILLED, Broker

log = logging.getLogger(__name__)
MAX_REQUEST = 4096
REQUEST_TIMEOUT_SECONDS = 5.0
SESSION_ID = re.compile(r"^[0-9a-f]{24}$")


def socket_path(data_dir: Path, node: str, worker: int) -> Path:
    # Nodes may share a data directory (a shared mount), so the node is in the name; hashed
    # and short: a unix socket path is at most 107 bytes, and data directories can be deep.
    tag = hashlib.sha256(node.encode()).hexdigest()[:8]
    return data_dir / f"ctl-{tag}-{worker}.sock"


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


def parse_request(raw: bytes) -> tuple[str, str]:
    """(session id, note) from a request line; ``ValueError`` for anything else."""
    value = json.loads(raw)
    if not isinstance(value, dict) or set(value) != {"kill", "note"}:
        raise ValueError("expected {kill, note}")
    session_id, note = value["kill"], value["note"]
    if not isinstance(session_id, str) or not SESSION_ID.match(session_id):
        raise ValueError("kill: not a session id")
    limit = live_store.KILL_NOTE_MAX
    if not isinstance(note, str) or len(note) > limit or (note and not note.isprintable()):
        raise ValueError(f"note: at most {limit} printable characters")
    return session_id, note


class LocalControl:
    def __init__(self, services: Services, broker: Broker) -> None:
        self._s = services
        self._broker = broker

    async def serve(self) -> None:
        """Listen until cancelled; the socket file is removed at the end."""
        path = socket_path(self._s.settings.data_dir, self._s.node, self._s.worker)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by this node's process of this number, which crashed
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            os.chmod(path, 0o600)  # before listen: nobody else can connect in between
        except OSError as exc:
            sock.close()
            log.error("no local kill socket at %s: %s", path, exc.strerror or exc)
            return
        server = await asyncio.start_unix_server(self._handle, sock=sock)
        try:
            await server.serve_forever()
        finally:
            server.close()
            with contextlib.suppress(OSError):
                path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            uid = _peer_uid(writer)
            if uid is None or uid not in (0, os.getuid()):
                await self._refuse(writer, uid, "peer not root or the service user")
                return
            async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
                raw = await reader.readline()
            if len(raw) > MAX_REQUEST or not raw.endswith(b"\n"):
                await self._refuse(writer, uid, "request too long or cut")
                return
            try:
                session_id, note = parse_request(raw)
            except ValueError as exc:
                await self._refuse(writer, uid, str(exc))
                return
            ended = await self.kill(session_id, note, f"local:{_user_name(uid)}")
            await self._answer(writer, {"ended": ended})
        except (OSError, TimeoutError, ValueError):  # a peer that went away or sent junk
            pass
        finally:
            writer.close()

    async def _refuse(self, writer: asyncio.StreamWriter, uid: int | None, why: str) -> None:
        """Answer the refusal, and audit it (``local.refused``) without waiting for the audit."""
        log.warning("local control: refused (uid %s): %s", uid, why)
        actor = f"local:{_user_name(uid)}" if uid is not None else "local:unknown"
        self._s.tasks.start(
            "audit-local-refusal",
            self._audit(actor, "local.refused", "denied", self._s.node, {"why": why}),
        )
        await self._answer(writer, {"error": why})

    async def _answer(self, writer: asyncio.StreamWriter, body: dict[str, object]) -> None:
        writer.write(json.dumps(body).encode() + b"\n")
        await writer.drain()

    async def kill(self, session_id: str, note: str, actor: str) -> bool:
        """End ``session_id`` if this process relays it; audited (spooled if need be).

        The session ends first and the answer does not wait for the audit: the kill is
        what the operator came for, and an append to a database that has gone silent takes
        its whole deadline before the event is spooled. The audit runs as a task of the
        process's task set (``services.tasks``)."""
        ticket = self._broker.live_ticket(session_id)
        if ticket is None or ticket.end_reason:
            return False
        ended = await self._broker.kill(session_id, KILLED, note=note, by=actor)
        detail: dict[str, object] = {
            "session_id": session_id,
            "reason": KILLED,
            "note": note,
            "via": "local",
        }
        self._s.tasks.start(
            f"audit-local-kill-{session_id}",
            self._audit(
                actor, "session.kill", "success" if ended else "error", ticket.asset, detail
            ),
        )
        return ended

    async def _audit(
        self, actor: str, action: str, result: str, target: str, detail: dict[str, object]
    ) -> None:
        try:
            await self._s.audit.record(
                actor=actor, action=action, result=result, target=target, detail=detail
            )
        except Exception:  # the answer is given; the record of it could not be kept
            log.exception("local control: %s not audited", action)


def request_kill(data_dir: Path, session_id: str, note: str) -> bool:
    """Ask every serving process of ``data_dir`` to end ``session_id``; True if one did.

    ``ConduitError`` when no process answers (none running, or not permitted)."""
    request = json.dumps({"kill": session_id, "note": note}).encode() + b"\n"
    answered = False
    for path in sorted(data_dir.glob("ctl-*.sock")):
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(REQUEST_TIMEOUT_SECONDS + 1)
                sock.connect(str(path))
                sock.sendall(request)
                reply = sock.makefile("rb").readline(MAX_REQUEST)
        except OSError:
            continue  # a socket a stopped process left behind
        try:
            answer = json.loads(reply or b"{}")
        except ValueError:
            continue
        if not isinstance(answer, dict):
            continue
        if "error" in answer:
            raise ConduitError(f"local control: {answer['error']}")
        answered = True
        if answer.get("ended") is True:
            return True
    if not answered:
        raise ConduitError(f"no serving process answers in {data_dir}")
    return False
