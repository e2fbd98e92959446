"""The shipped HAProxy configuration refuses the nodes' internal watch path however the
client spells it (percent-encoded characters included), with Debian's real HAProxy.

The portal frontend's deny rule is taken verbatim from deploy/haproxy/haproxy.cfg into a
plain-HTTP frontend on loopback that answers 200 to whatever the rule lets through (the
gateway behind it decodes the path before routing, so an encoded spelling reaches the route).
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.haproxy import haproxy_serving
from tests.sshd_target import free_port

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """\
global
    maxconn 100
defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend portal
    bind 127.0.0.1:{port}
{deny}
    http-request return status 200 content-type text/plain string passed
"""


@pytest.fixture
def front(tmp_path: Path) -> Iterator[int]:
    if shutil.which("haproxy") is None:
        pytest.skip("Debian's haproxy is not installed")
    shipped = (ROOT / "deploy/haproxy/haproxy.cfg").read_text().splitlines()
    [deny] = [line for line in shipped if "watch-owner" in line and "http-request" in line]
    port = free_port()
    (tmp_path / "haproxy.cfg").write_text(CONFIG.format(port=port, deny=deny))
    with haproxy_serving(tmp_path / "haproxy.cfg", port):
        yield port


def status_of(port: int, path: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: conduit.test\r\n\r\n".encode())
        head = sock.recv(4096)
    return int(head.split(b" ", 2)[1])


@pytest.mark.parametrize(
    "path",
    [
        "/ws/watch-owner/0123456789abcdef01234567",
        "/ws/watch%2Downer/0123456789abcdef01234567",
        "/ws/watch%2downer/0123456789abcdef01234567",
        "/ws%2Fwatch-owner/0123456789abcdef01234567",
        "/%77s/watch-owner/0123456789abcdef01234567",
    ],
)
def test_the_internal_watch_path_is_refused_however_it_is_spelt(front: int, path: str) -> None:
    assert status_of(front, path) == 404


def test_the_portals_own_paths_pass(front: int) -> None:
    assert status_of(front, "/ws/watch/0123456789abcdef01234567") == 200
    assert status_of(front, "/login") == 200
