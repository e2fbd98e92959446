"""`ssh -L` tunnels through the gateway, and the forwardings it refuses, with real peers.

OpenSSH ssh is the vendor; a TCP echo server on 127.0.0.1 plays the PLC (asset ``plc1``,
host 127.0.0.1) and only its port is granted as ``tunnel:<port>``; the real sshd target
serves the agent/X11 checks. Every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyotp
import pytest

from gateway.config import Overrides, load_settings
from gateway.keys import load_keyring
from gateway.services import Services
from tests.sshd_target import SSHDTarget, free_port
from tests.support import CONDUIT, clean_env, conduit, init_data_dir, serving
from tests.test_ssh_jump import Gateway, _populate

USERS = ("alice", "bob", "carol", "dave", "erin")
MIB = 1 << 20
Forward = tuple[int, str, int]  # local port, destination host as the client names it, port


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server = self.server
        assert isinstance(server, Endpoint)
        server.accepted.append(self.request)
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:
            pass
        server.ended.set()


class _SlowSink(socketserver.BaseRequestHandler):
    """Reads CHUNK bytes every INTERVAL: an asset slower than the vendor's sender."""

    CHUNK, INTERVAL = 64 * 1024, 0.01

    def handle(self) -> None:
        server = self.server
        assert isinstance(server, Endpoint)
        server.accepted.append(self.request)
        while not server.stopping.wait(self.INTERVAL):
            try:
                data = self.request.recv(self.CHUNK)
            except OSError:
                return
            if not data:
                return
            server.received += len(data)


class _Flood(socketserver.BaseRequestHandler):
    """Sends as fast as the connection takes: an asset streaming to a slow vendor."""

    def handle(self) -> None:
        server = self.server
        assert isinstance(server, Endpoint)
        server.accepted.append(self.request)
        chunk = b"\x02" * MIB
        try:
            while not server.stopping.is_set():
                self.request.sendall(chunk)
                server.sent += len(chunk)
        except OSError:
            pass


class Endpoint(socketserver.ThreadingTCPServer):
    """A TCP server on 127.0.0.1 in a thread: the plant-side port a tunnel reaches."""

    daemon_threads = True

    def __init__(self, handler: type[socketserver.BaseRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.port: int = self.server_address[1]
        self.accepted: list[socket.socket] = []
        self.ended = threading.Event()
        self.stopping = threading.Event()
        self.received = 0
        self.sent = 0
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


@pytest.fixture
def echo() -> Iterator[Endpoint]:
    server = Endpoint(_Echo)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sink() -> Iterator[Endpoint]:
    server = Endpoint(_SlowSink)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def flood() -> Iterator[Endpoint]:
    server = Endpoint(_Flood)
    try:
        yield server
    finally:
        server.stop()


async def _grant_tunnels(data: Path, ports: list[int]) -> None:
    settings = load_settings(None, Overrides(data_dir=data), environ={})
    services = Services.build(settings, load_keyring(settings))
    try:
        await services.authz.add_asset("plc1", "127.0.0.1", 502, "ssh", actor="test")
        for port in ports:
            await services.authz.add_grant(
                subject_kind="org",
                subject="acme",
                object_kind="asset",
                obj="plc1",
                action=f"tunnel:{port}",
                actor="test",
            )
    finally:
        await services.close()


@pytest.fixture
def gateway(
    sshd: SSHDTarget, echo: Endpoint, sink: Endpoint, flood: Endpoint, tmp_path: Path
) -> Iterator[Gateway]:
    data = tmp_path / "data"
    init_data_dir(data)
    secrets = {name: pyotp.random_base32() for name in USERS}
    asyncio.run(_populate(data, sshd, secrets))
    asyncio.run(_grant_tunnels(data, [echo.port, sink.port, flood.port]))
    with serving(data) as (server, ssh_port):
        work = tmp_path / "client"
        work.mkdir()
        yield Gateway(data, server, ssh_port, secrets, work)


@contextmanager
def forwarding(
    gateway: Gateway, route: str, forwards: list[Forward], *extra: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``ssh -N -L ...`` for ``route`` running in the background; stderr goes to a log."""
    user = route.split("+")[0]
    args = ["-N", "-o", "ExitOnForwardFailure=yes", *extra]
    for local, host, port in forwards:
        args += ["-L", f"127.0.0.1:{local}:{host}:{port}"]
    argv = gateway.argv(route, "true", *args)[:-1]  # -N: no command
    log_path = gateway.work / f"{route}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, env=gateway.askpass(route, gateway.fresh_code(user)),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=log)  # fmt: skip
    proc.log_path = log_path  # type: ignore[attr-defined]  # for connect()'s failure message
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=10)


def client_log(gateway: Gateway, route: str) -> str:
    return (gateway.work / f"{route}.log").read_text(errors="replace")


def connect(port: int, proc: subprocess.Popen[bytes], deadline_s: float = 30) -> socket.socket:
    """A connection to ssh's forwarded port, once ssh has logged in and listens."""
    end = time.monotonic() + deadline_s
    while True:
        if proc.poll() is not None:
            log_path = getattr(proc, "log_path", None)
            said = log_path.read_text(errors="replace")[-2000:] if log_path else ""
            raise AssertionError(f"ssh exited {proc.returncode}: {said}")
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        except ConnectionRefusedError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)
            continue
        sock.settimeout(10)
        return sock


def echo_through(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def closed_without_data(sock: socket.socket) -> bool:
    """What a refused channel looks like from the forwarded port: closed, nothing read."""
    try:
        sock.sendall(b"read coils")
        return sock.recv(1024) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def events(gateway: Gateway, action: str, count: int = 1) -> list[dict[str, object]]:
    """The audit events named ``action`` once there are ``count`` of them (or the deadline)."""
    end = time.monotonic() + 15
    while True:
        found = [e for e in gateway.audit() if e["action"] == action]
        if len(found) >= count or time.monotonic() > end:
            return found
        time.sleep(0.2)


def detail(event: dict[str, object]) -> dict[str, object]:
    value = event["detail"]
    assert isinstance(value, dict)
    return value


def test_granted_port_carries_data_recorded_and_audited(gateway: Gateway, echo: Endpoint) -> None:
    local_a, local_b = free_port(), free_port()
    payload = b"modbus-request-" * 5000
    with forwarding(
        gateway, "alice+plc1", [(local_a, "localhost", echo.port), (local_b, "plc1", echo.port)]
    ) as proc:
        with connect(local_a, proc) as sock:
            assert echo_through(sock, payload) == payload
        with connect(local_b, proc) as sock:  # the asset's name is accepted too
            assert echo_through(sock, b"by name") == b"by name"
        ends = events(gateway, "session.end", 2)
    starts = [e for e in gateway.audit() if e["action"] == "session.start"]
    assert [detail(e)["protocol"] for e in starts] == ["tunnel", "tunnel"]
    assert {e["target"] for e in starts} == {"plc1"}
    assert len(ends) == 2
    by_size = sorted(ends, key=lambda e: int(str(detail(e)["bytes_up"])))
    assert [(detail(e)["bytes_up"], detail(e)["bytes_down"]) for e in by_size] == [
        (len(b"by name"), len(b"by name")),
        (len(payload), len(payload)),
    ]
    recording = str(detail(by_size[1])["recording_id"])
    exported = subprocess.run(
        [*CONDUIT, "recordings", "export", recording, "--format", "raw",
         "--data-dir", str(gateway.data)],
        capture_output=True, timeout=60, check=False, env=clean_env(),
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert f"connected 127.0.0.1:{echo.port}".encode() in exported.stdout
    # Both directions are in the signed recording. Raw export concatenates events in time
    # order, and the echo interleaves the directions, so a 15-byte unit can be cut where
    # they alternate: count units, allowing one cut per alternation (a few dozen at most).
    units = exported.stdout.count(b"modbus-request-")
    assert 2 * 5000 - 64 <= units <= 2 * 5000, units


def test_other_ports_and_hosts_are_refused_and_audited(gateway: Gateway, echo: Endpoint) -> None:
    other_port = free_port()  # not granted (and nothing listens there)
    local_port, local_host = free_port(), free_port()
    with forwarding(
        gateway,
        "bob+plc1",
        [(local_port, "localhost", other_port), (local_host, "10.255.0.1", echo.port)],
    ) as proc:
        with connect(local_port, proc) as sock:
            assert closed_without_data(sock)
        with connect(local_host, proc) as sock:
            assert closed_without_data(sock)
        denied = events(gateway, "session.denied", 2)
    assert "administratively prohibited" in client_log(gateway, "bob+plc1")
    assert not echo.accepted, "nothing reached the plant"
    by_action = {detail(e)["action_requested"]: e for e in denied}
    assert set(by_action) == {f"tunnel:{other_port}", f"tunnel:{echo.port}"}
    assert by_action[f"tunnel:{other_port}"]["target"] == "plc1"
    assert detail(by_action[f"tunnel:{echo.port}"])["destination"] == f"10.255.0.1:{echo.port}"
    assert not [e for e in gateway.audit() if e["action"] == "session.start"]


def test_tunnel_without_an_asset_in_the_username_is_refused(
    gateway: Gateway, echo: Endpoint
) -> None:
    local = free_port()
    with forwarding(gateway, "carol", [(local, "127.0.0.1", echo.port)]) as proc:
        with connect(local, proc) as sock:
            assert closed_without_data(sock)
        [refused] = events(gateway, "ssh.refused")
    assert refused["target"] == f"127.0.0.1:{echo.port}"
    assert detail(refused) == {"request": "direct-tcpip", "reason": "no asset in the username"}
    assert not echo.accepted


def test_kill_from_the_cli_closes_channel_and_asset_connection(
    gateway: Gateway, echo: Endpoint
) -> None:
    local = free_port()
    with forwarding(gateway, "dave+plc1", [(local, "localhost", echo.port)]) as proc:
        with connect(local, proc) as sock:
            assert echo_through(sock, b"before") == b"before"
            listing = conduit("sessions", "list", "--data-dir", str(gateway.data))
            [row] = [line for line in listing.stdout.splitlines() if " dave " in line]
            assert " tunnel " in row
            killed = conduit("sessions", "kill", row.split()[0], "--reason", "stop-plc-work",
                             "--data-dir", str(gateway.data))  # fmt: skip
            assert killed.returncode == 0, killed.stderr
            assert sock.recv(1024) == b""  # within the socket's 10 s timeout
        assert echo.ended.wait(10), "the connection to the asset was closed"
        [end] = events(gateway, "session.end")
        assert proc.poll() is None, "only that tunnel ended, not the SSH connection"
        with connect(local, proc) as sock:  # the grant still holds: a new tunnel works
            assert echo_through(sock, b"after") == b"after"
    assert (detail(end)["reason"], detail(end)["note"]) == ("killed", "stop-plc-work")


def test_revoked_grant_ends_the_tunnel(gateway: Gateway, echo: Endpoint) -> None:
    grants = conduit("grant", "list", "--data-dir", str(gateway.data)).stdout.splitlines()
    grant_id = next(line.split()[0] for line in grants if f"tunnel:{echo.port}" in line)
    local = free_port()
    with forwarding(gateway, "erin+plc1", [(local, "localhost", echo.port)]) as proc:
        with connect(local, proc) as sock:
            assert echo_through(sock, b"before") == b"before"
            revoked = conduit("grant", "revoke", grant_id, "--data-dir", str(gateway.data))
            assert revoked.returncode == 0, revoked.stderr
            assert sock.recv(1024) == b""
        [end] = events(gateway, "session.end")
    assert detail(end)["reason"] == "revoked"


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# Between vendor and asset sit kernel socket buffers, ssh's and the gateway's windows: some
# MiB. Without back-pressure the gateway takes all the fast side sends (measured here: over
# 200 MiB in flight and 400 MiB of gateway RSS after 4 s).
MAX_IN_FLIGHT = 64 * MIB
MAX_GROWTH = 100 * MIB


def test_slow_asset_holds_the_vendor_back(gateway: Gateway, sink: Endpoint) -> None:
    """The asset reads ~5 MB/s while the vendor sends as fast as it can."""
    local = free_port()
    pid = gateway.server.proc.pid
    with forwarding(gateway, "alice+plc1", [(local, "localhost", sink.port)]) as proc:
        sock = connect(local, proc)
        sent = 0

        def send() -> None:
            nonlocal sent
            chunk = b"\x01" * MIB
            try:
                while True:
                    sock.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                pass

        sender = threading.Thread(target=send, daemon=True)
        try:
            baseline, peak = _rss(pid), 0
            sender.start()
            end = time.monotonic() + 4
            while time.monotonic() < end:
                time.sleep(0.1)  # sampling, not waiting for an event
                peak = max(peak, _rss(pid))
            in_flight = sent - sink.received
        finally:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            sender.join(10)
    assert sink.received > MIB, "data flowed"
    assert in_flight < MAX_IN_FLIGHT, f"{in_flight / MIB:.0f} MiB between vendor and asset"
    assert peak - baseline < MAX_GROWTH, f"gateway grew {(peak - baseline) / MIB:.0f} MiB"


def test_slow_vendor_holds_the_asset_back(gateway: Gateway, flood: Endpoint) -> None:
    """The asset sends as fast as it can while the vendor reads ~5 MB/s."""
    local = free_port()
    pid = gateway.server.proc.pid
    with forwarding(gateway, "bob+plc1", [(local, "localhost", flood.port)]) as proc:
        with connect(local, proc) as sock:
            baseline, peak, received = _rss(pid), 0, 0
            end = time.monotonic() + 4
            while time.monotonic() < end:
                received += len(sock.recv(64 * 1024))
                time.sleep(0.01)  # the slow reader
                peak = max(peak, _rss(pid))
            in_flight = flood.sent - received
    assert received > MIB, "data flowed"
    assert in_flight < MAX_IN_FLIGHT, f"{in_flight / MIB:.0f} MiB between asset and vendor"
    assert peak - baseline < MAX_GROWTH, f"gateway grew {(peak - baseline) / MIB:.0f} MiB"


def test_remote_forwarding_is_refused_and_audited(gateway: Gateway) -> None:
    listen = free_port()
    result = subprocess.run(
        gateway.argv("alice+target", "true", "-N", "-o", "ExitOnForwardFailure=yes",
                     "-R", f"127.0.0.1:{listen}:127.0.0.1:22")[:-1],
        env=gateway.askpass("alice", gateway.code("alice")), capture_output=True, text=True,
        timeout=60, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert result.returncode == 255
    assert "remote port forwarding failed" in result.stderr
    [refused] = events(gateway, "ssh.refused")
    assert refused["target"] == f"127.0.0.1:{listen}"
    assert detail(refused)["request"] == "remote forwarding"


def test_agent_and_x11_forwarding_are_refused(gateway: Gateway) -> None:
    agent_sock = gateway.work / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(agent_sock)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        end = time.monotonic() + 10
        while not agent_sock.exists():
            assert time.monotonic() < end, "ssh-agent did not start"
            time.sleep(0.05)
        env = gateway.askpass("alice", gateway.code("alice"))
        env["SSH_AUTH_SOCK"] = str(agent_sock)
        with_agent = subprocess.run(
            gateway.argv("alice+target", 'echo "agent=$SSH_AUTH_SOCK"', "-A", "-v"),
            env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
            check=False,
        )  # fmt: skip
    finally:
        agent.terminate()
        agent.wait(timeout=10)
    assert with_agent.returncode == 0, with_agent.stderr
    assert "Requesting authentication agent forwarding" in with_agent.stderr  # it did ask
    assert with_agent.stdout == "agent=\n"
    # -Y: trusted X11, so the client asks even without an X server to make a cookie for.
    with_x11 = subprocess.run(
        gateway.argv("bob+target", 'echo "display=$DISPLAY"', "-Y"),
        env=gateway.askpass("bob", gateway.code("bob")), capture_output=True, text=True,
        timeout=60, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert with_x11.returncode == 0, with_x11.stderr
    assert "X11 forwarding request failed" in with_x11.stderr
    assert with_x11.stdout == "display=\n"
    refused = {(e["actor"], detail(e)["request"]) for e in events(gateway, "ssh.refused", 2)}
    assert {("alice", "agent forwarding"), ("bob", "X11 forwarding")} <= refused


def test_other_subsystems_and_malformed_commands_are_refused_and_audited(
    gateway: Gateway,
) -> None:
    # A netconf session to a switch would be raw bytes past the per-operation file checks.
    netconf = subprocess.run(
        gateway.argv("carol+target", "netconf", "-s"),
        env=gateway.askpass("carol", gateway.code("carol")), capture_output=True, text=True,
        timeout=60, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert netconf.returncode != 0
    assert "subsystem request failed" in netconf.stderr
    huge = subprocess.run(
        gateway.argv("dave+target", "echo " + "x" * 70_000),
        env=gateway.askpass("dave", gateway.code("dave")), capture_output=True, text=True,
        timeout=60, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert huge.returncode != 0 and "x" * 100 not in huge.stdout
    refused = {(e["actor"], detail(e)["request"]) for e in events(gateway, "ssh.refused", 2)}
    assert ("carol", "subsystem 'netconf'") in refused
    assert ("dave", "command longer than 64 KiB or with a NUL byte") in refused
