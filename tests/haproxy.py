"""Debian's real HAProxy in front of ``conduit serve`` nodes on loopback, set up as
deploy/haproxy/haproxy.cfg does for SSH: TCP mode, a PROXY protocol v2 header on every
connection, and each node's health checked by ``GET /readyz`` on its portal port.

On loopback, addresses stand for machines: the balancer connects to the nodes from
``BALANCER`` (``source``), and a client that binds ``VENDOR`` (``ssh -b``) is the vendor.
Each backend gets its own frontend port; balancing is round robin, so sequential
connections alternate between the servers that are up. Server states come from HAProxy's
stats socket (``show stat``). Does not start the nodes; used by tests and bench/cluster.py.
"""

from __future__ import annotations

import csv
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.sshd_target import free_port

VENDOR, BALANCER = "127.0.0.2", "127.0.0.3"
HAPROXY = "haproxy"

GLOBAL = """\
global
    maxconn 4000
    stats socket {socket} mode 600 level operator
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
"""
# A server's SSH port gets the PROXY header (from BALANCER); its health is its portal's
# /readyz, over TLS (each node's own self-signed certificate, on loopback).
BACKEND = """\
frontend {name}
    bind 127.0.0.1:{port}
    default_backend {name}
backend {name}
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server check check-ssl verify none inter {inter_ms}ms fall 2 rise 2 \
send-proxy-v2 source {balancer}
"""
SERVER = "    server {node} 127.0.0.1:{ssh_port} check port {portal_port}\n"


@dataclass(frozen=True)
class NodePorts:
    ssh: int
    portal: int


def missing_reason() -> str:
    return "" if shutil.which(HAPROXY) else "Debian's haproxy is not installed"


def config(
    socket_path: Path, backends: Mapping[str, Mapping[str, NodePorts]], inter_ms: int
) -> tuple[str, dict[str, int]]:
    """The configuration text, and the frontend port of each backend."""
    text = GLOBAL.format(socket=socket_path)
    fronts: dict[str, int] = {}
    for name, servers in backends.items():
        fronts[name] = free_port()
        text += BACKEND.format(name=name, port=fronts[name], inter_ms=inter_ms, balancer=BALANCER)
        for node, ports in servers.items():
            text += SERVER.format(node=node, ssh_port=ports.ssh, portal_port=ports.portal)
    return text, fronts


class HAProxy:
    """A running HAProxy: its frontend ports and its servers' states."""

    def __init__(self, proc: subprocess.Popen[bytes], socket_path: Path, fronts: dict[str, int]):
        self.proc = proc
        self.socket_path = socket_path
        self.front = fronts

    def states(self) -> dict[tuple[str, str], str]:
        """(backend, server) -> status as HAProxy reports it (``UP``, ``DOWN``, ``UP 1/2``...)."""
        with socket.socket(socket.AF_UNIX) as stats:
            stats.settimeout(5)
            stats.connect(str(self.socket_path))
            stats.sendall(b"show stat\n")
            raw = b""
            while chunk := stats.recv(65536):
                raw += chunk
        lines = raw.decode().lstrip("# ").splitlines()
        rows = csv.DictReader(line for line in lines if line)
        return {
            (row["pxname"], row["svname"]): row["status"]
            for row in rows
            if row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def wait_states(self, backend: str, want: Mapping[str, str], limit_s: float = 30) -> None:
        """Until each named server of ``backend`` has the wanted status (bounded)."""
        deadline = time.monotonic() + limit_s
        while True:
            states = self.states()
            seen = {node: states.get((backend, node)) for node in want}
            if seen == dict(want):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"haproxy {backend}: wanted {dict(want)}, have {seen}")
            time.sleep(0.1)


@contextmanager
def running_haproxy(
    directory: Path, backends: Mapping[str, Mapping[str, NodePorts]], inter_ms: int = 500
) -> Iterator[HAProxy]:
    """HAProxy in the foreground (``-db``) until the block ends; started once its stats
    socket answers (by then every frontend is bound)."""
    directory.mkdir(parents=True, exist_ok=True)
    socket_path = directory / "haproxy.sock"
    text, fronts = config(socket_path, backends, inter_ms)
    (directory / "haproxy.cfg").write_text(text)
    with (directory / "haproxy.log").open("ab") as sink:
        proc = subprocess.Popen(
            [HAPROXY, "-f", str(directory / "haproxy.cfg"), "-db"],
            stdout=sink, stderr=sink, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    balancer = HAProxy(proc, socket_path, fronts)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                log = (directory / "haproxy.log").read_text()
                raise AssertionError(f"haproxy exited {proc.returncode}: {log[-1000:]}")
            try:
                balancer.states()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield balancer
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextmanager
def haproxy_serving(config_file: Path, front: int, limit_s: float = 15) -> Iterator[None]:
    """HAProxy run on ``config_file`` (in the foreground) until the block ends, entered once
    ``front`` accepts connections. For tests that write their own one-frontend config."""
    proc = subprocess.Popen(
        [HAPROXY, "-f", str(config_file), "-db"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + limit_s
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"haproxy exited {proc.returncode}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", front)) == 0:
                    break
            if time.monotonic() > deadline:
                raise AssertionError("haproxy did not listen")
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
