"""A bare asyncssh relay: the baseline that says what asyncssh itself costs on this machine.

The issue's "throwaway asyncssh relay": an asyncssh server that lets anyone in (no
authentication, no policy, no recording), opens an asyncssh client connection to the target
for each session channel with the same command and pty, and passes bytes both ways with
flow control. ``--fastpath`` installs the gateway's own packet fast path
(``gateway.ssh.fastpath``) first, so ``bench.ssh_relay`` can show separately what asyncssh
costs, what the fast path saves, and what the product (authentication, policy, recording)
adds on top. Bench only: it accepts every client and trusts every host key. Listens on
127.0.0.1; prints ``listening <port>`` once ready.

``python -m bench.bare_relay --target-port P --client-key K [--fastpath] [--event-loop uvloop]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

import asyncssh

CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"]


class Upstream(asyncssh.SSHClientSession[bytes]):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        chan = self.relay.chan
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            chan.write_stderr(data)
        else:
            chan.write(data)

    def eof_received(self) -> bool:
        self.relay.chan.write_eof()
        return True

    def exit_status_received(self, status: int) -> None:
        self.relay.status = status

    def pause_writing(self) -> None:
        self.relay.chan.pause_reading()

    def resume_writing(self) -> None:
        self.relay.chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.chan.exit(self.relay.status if self.relay.status is not None else 255)


class Relay(asyncssh.SSHServerSession[bytes]):
    def __init__(self, target: tuple[str, int, asyncssh.SSHKey]) -> None:
        self.target = target
        self.chan: asyncssh.SSHServerChannel[bytes] = None  # type: ignore[assignment]
        self.up: asyncssh.SSHClientChannel[bytes] | None = None
        self.conn: asyncssh.SSHClientConnection | None = None
        self.command: str | None = None
        self.pty: tuple[str, tuple[int, int, int, int], Any] | None = None
        self.status: int | None = None
        self.task: asyncio.Task[None] | None = None  # held: the loop keeps only weak refs

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan = chan

    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        self.pty = (term_type, term_size, term_modes)
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self.command = command
        return True

    def session_started(self) -> None:
        self.chan.pause_reading()  # until the target is connected
        self.task = asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        host, port, key = self.target
        try:
            self.conn = await asyncssh.connect(
                host, port, username="root", client_keys=[key], known_hosts=None,
                encryption_algs=CIPHERS, compression_algs=["none"], config=None,
                agent_path=None, preferred_auth=["publickey"],
            )  # fmt: skip
            pty: dict[str, Any] = {}
            if self.pty is not None:
                term_type, term_size, term_modes = self.pty
                pty = {"term_type": term_type, "term_size": term_size, "term_modes": term_modes}
            self.up, _ = await self.conn.create_session(
                lambda: Upstream(self), self.command, encoding=None, **pty
            )
        except (OSError, asyncssh.Error) as exc:
            self.chan.write_stderr(f"bare relay: {exc}\r\n".encode())
            self.chan.exit(255)
            return
        self.chan.resume_reading()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self.up is not None:
            self.up.write(data, datatype)

    def eof_received(self) -> bool:
        if self.up is not None:
            self.up.write_eof()
        return True

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self.up is not None:
            self.up.change_terminal_size(width, height, pixwidth, pixheight)

    def pause_writing(self) -> None:
        if self.up is not None:
            self.up.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None:
            self.up.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.conn.close()


class Server(asyncssh.SSHServer):
    def __init__(self, target: tuple[str, int, asyncssh.SSHKey]) -> None:
        self.target = target

    def begin_auth(self, username: str) -> bool:
        return False  # no authentication: this measures the relay, not the login

    def session_requested(self) -> Relay:
        return Relay(self.target)


async def serve(args: argparse.Namespace) -> None:
    if args.fastpath:
        from gateway.ssh import fastpath

        fastpath.install()
    target = ("127.0.0.1", args.target_port, asyncssh.read_private_key(args.client_key))
    server = await asyncssh.create_server(
        lambda: Server(target), "127.0.0.1", 0,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        encryption_algs=CIPHERS, compression_algs=["none"], line_editor=False,
        allow_pty=True, agent_forwarding=False, x11_forwarding=False, encoding=None,
    )  # fmt: skip
    print(f"listening {server.get_port()}", flush=True)
    await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--client-key", required=True)
    parser.add_argument("--fastpath", action="store_true", help="install gateway.ssh.fastpath")
    parser.add_argument("--event-loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    loop_factory = None
    if args.event_loop == "uvloop":  # as ``conduit serve`` does
        import uvloop

        loop_factory = uvloop.new_event_loop
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=loop_factory) as r:
        r.run(serve(args))


if __name__ == "__main__":
    main()
