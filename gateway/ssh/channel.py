"""One SSH session channel, handed to the right handler once the client says what it wants.

A client opens a session channel first and only then asks for a shell, a command or a
subsystem. Shells and commands are relayed to the asset (``RelaySession``); the ``sftp``
subsystem and ``scp`` commands go to the file-transfer bridge (``FileSession``), so a
file operation is checked and audited on its own and never passes as raw bytes. Every
channel callback is passed to the chosen handler. Agent and X11 forwarding requests are
refused by the server's options; ``audit_refused_requests`` makes each one reach the audit
log too, as other subsystems and malformed commands do. Does not decide access.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import asyncssh

from gateway.ssh.files import FileSession
from gateway.ssh.relay import RelaySession, TermSize

# Channel requests the server refuses (agent_forwarding=False, x11_forwarding=False), by the
# asyncssh handler that answers them; asyncssh offers no public hook for either.
REFUSED_REQUESTS = {
    "_process_auth_agent_req_at_openssh_dot_com_request": "agent forwarding",
    "_process_x11_req_request": "X11 forwarding",
}


def audit_refused_requests(chan: Any, refused: Callable[[str], None]) -> None:
    """Call ``refused(what)`` for each agent or X11 request on ``chan``, then let asyncssh
    refuse it as before (the answer to the client is unchanged)."""
    for name, what in REFUSED_REQUESTS.items():
        original = getattr(chan, name, None)
        if original is None:  # a newer asyncssh: the refusal stands, unaudited
            continue

        def handler(packet: Any, _original: Any = original, _what: str = what) -> Any:
            refused(_what)
            return _original(packet)

        setattr(chan, name, handler)


class SessionChannel(asyncssh.SSHServerSession[bytes]):
    def __init__(
        self,
        relay: RelaySession,
        files: Callable[[], FileSession],
        refused: Callable[[str], None],
    ) -> None:
        self._handler: asyncssh.SSHServerSession[bytes] = relay
        self._files = files
        self._refused = refused
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None

    def _to_files(self) -> FileSession:
        files = self._files()
        assert self._chan is not None  # noqa: S101 - asyncssh calls connection_made first
        files.connection_made(self._chan)
        self._handler = files
        return files

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan
        audit_refused_requests(chan, self._refused)
        self._handler.connection_made(chan)

    def pty_requested(
        self, term_type: str, term_size: TermSize, term_modes: Mapping[int, int]
    ) -> bool:
        return self._handler.pty_requested(term_type, term_size, term_modes)

    def shell_requested(self) -> bool:
        return self._handler.shell_requested()

    def exec_requested(self, command: str) -> bool:
        if command.startswith("scp "):
            return bool(self._to_files().exec_requested(command))
        if self._handler.exec_requested(command):
            return True
        self._refused("command longer than 64 KiB or with a NUL byte")
        return False

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem == "sftp":
            return bool(self._to_files().subsystem_requested(subsystem))
        # Only SFTP goes through (the gateway's own server); a netconf or other subsystem
        # would be raw bytes past every per-operation check.
        self._refused(f"subsystem {subsystem[:64]!r}")
        return False

    def session_started(self) -> None:
        self._handler.session_started()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self._handler.data_received(data, datatype)

    def eof_received(self) -> bool:
        return self._handler.eof_received()

    def soft_eof_received(self) -> None:
        self._handler.soft_eof_received()

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        self._handler.terminal_size_changed(width, height, pixwidth, pixheight)

    def signal_received(self, signal: str) -> None:
        self._handler.signal_received(signal)

    def break_received(self, msec: int) -> bool:
        return self._handler.break_received(msec)

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._handler.connection_lost(exc)
