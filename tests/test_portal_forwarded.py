"""The client's address behind an HTTP reverse proxy (``portal.trusted_proxies``): the
resolver as a table, and a real portal behind Debian's HAProxy in HTTP mode with
``option forwardfor``.

On loopback, three addresses stand for three machines: the user (127.0.0.2, the client's
bound address), the balancer (HAProxy connects from 127.0.0.3, ``source``), and anyone else
(127.0.0.1).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyotp
import pytest

from gateway.web.forwarded import client_address, networks
from tests.haproxy import haproxy_serving
from tests.ssh_gateway import _csrf, running_gateway
from tests.sshd_target import SSHDTarget, free_port
from tests.test_ssh_jump import PASSWORD, Gateway
from tests.test_ssh_proxy_protocol import BALANCER, VENDOR

TRUSTED = networks(("127.0.0.3/32", "10.0.0.0/24"))


@pytest.mark.parametrize(
    ("peer", "header", "client"),
    [
        ("127.0.0.3", ["192.0.2.7"], "192.0.2.7"),  # one hop from the balancer
        ("127.0.0.3", ["198.51.100.9, 192.0.2.7"], "192.0.2.7"),  # the client's own value ignored
        ("127.0.0.3", ["198.51.100.9", "192.0.2.7"], "192.0.2.7"),  # two header lines
        ("127.0.0.3", ["192.0.2.7, 10.0.0.5"], "192.0.2.7"),  # through two trusted proxies
        ("127.0.0.3", ["10.0.0.6, 10.0.0.5"], "10.0.0.6"),  # all trusted: the leftmost
        ("127.0.0.3", [], "127.0.0.3"),  # no header: the peer
        ("127.0.0.3", ["not-an-address"], "127.0.0.3"),  # garbage: the last real address
        ("127.0.0.3", ["192.0.2.7, junk, 10.0.0.5"], "10.0.0.5"),
        ("127.0.0.3", ["[2001:db8::7]"], "2001:db8::7"),
        ("::ffff:127.0.0.3", ["192.0.2.7"], "192.0.2.7"),  # a v4-mapped peer
        ("127.0.0.1", ["192.0.2.7"], "127.0.0.1"),  # not a trusted proxy: header ignored
        ("", ["192.0.2.7"], ""),
    ],
)
def test_the_client_is_the_rightmost_hop_not_a_trusted_proxy(
    peer: str, header: list[str], client: str
) -> None:
    assert client_address(peer, header, TRUSTED) == client


def test_nothing_is_believed_with_no_trusted_proxies() -> None:
    assert client_address("127.0.0.3", ["192.0.2.7"], ()) == "127.0.0.3"


def test_a_long_header_is_read_from_the_right_only() -> None:
    hops = ["198.51.100.1"] * 5000 + ["192.0.2.7"]
    assert client_address("127.0.0.3", [", ".join(hops)], TRUSTED) == "192.0.2.7"


HAPROXY_CFG = """
global
    maxconn 100
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend portal
    bind 127.0.0.1:{front} ssl crt {pem} alpn http/1.1
    option forwardfor
    default_backend gateway
backend gateway
    server gw 127.0.0.1:{portal} ssl verify none source {balancer}
"""


@pytest.fixture
def portal_behind_haproxy(sshd: SSHDTarget, tmp_path: Path) -> Iterator[tuple[Gateway, int]]:
    if shutil.which("haproxy") is None:
        pytest.skip("Debian's haproxy is not installed")
    env = {"CONDUIT_PORTAL__TRUSTED_PROXIES": f'["{BALANCER}/32"]'}
    with running_gateway(sshd, tmp_path, users=2, **env) as gateway:
        front = free_port()
        tls = gateway.data / "tls"
        pem = tmp_path / "front.pem"
        pem.write_bytes((tls / "portal.crt").read_bytes() + (tls / "portal.key").read_bytes())
        portal = int(gateway.server.base.rsplit(":", 1)[1])
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(HAPROXY_CFG.format(front=front, pem=pem, portal=portal, balancer=BALANCER))
        with haproxy_serving(cfg, front):
            yield gateway, front


def _client(base: str, source: str) -> httpx.Client:
    transport = httpx.HTTPTransport(verify=False, local_address=source)  # noqa: S501 - test cert
    return httpx.Client(base_url=base, transport=transport, timeout=10)


def _login(client: httpx.Client, user: str, secret: str, spoof: str) -> None:
    """Portal login (password, then TOTP), each request carrying a forged X-Forwarded-For."""
    forged = {"X-Forwarded-For": spoof}
    first = {"username": user, "password": PASSWORD, "csrf_token": _csrf(client.get("/login"))}
    assert client.post("/login", data=first, headers=forged).status_code == 303
    page = client.get("/login/code", headers=forged)
    code = {"code": pyotp.TOTP(secret).now(), "csrf_token": _csrf(page)}
    done = client.post("/login/code", data=code, headers=forged)
    assert done.status_code == 303, done.text


def test_a_login_through_haproxy_is_audited_with_the_clients_address(
    portal_behind_haproxy: tuple[Gateway, int],
) -> None:
    gateway, front = portal_behind_haproxy
    with _client(f"https://127.0.0.1:{front}", VENDOR) as client:
        # What the client claims is left of what HAProxy appends: ignored.
        _login(client, "vendor0", gateway.secrets["vendor0"], "198.51.100.9")
    # Straight to the portal from an address that is no proxy: the header is ignored too.
    with _client(gateway.server.base, "127.0.0.1") as client:
        _login(client, "vendor1", gateway.secrets["vendor1"], "198.51.100.9")
    logins = {e["actor"]: e["source"] for e in gateway.audit_until("login.success")
              if e["action"] == "login.success"}  # fmt: skip
    assert logins == {"vendor0": VENDOR, "vendor1": "127.0.0.1"}
