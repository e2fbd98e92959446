"""PROXY protocol v2 on the SSH port: the parser (tables, Hypothesis), and a real gateway
behind Debian's real HAProxy with real OpenSSH clients.

On loopback, three addresses stand for three machines: the vendor (127.0.0.2, ``ssh -b``),
the balancer (HAProxy connects from 127.0.0.3, ``source``), and anyone else (127.0.0.1).
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.ssh.proxy_gate import ProxyListener
from gateway.ssh.proxy_protocol import (
    MAX_HEADER,
    SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    build,
    looks_like_proxy,
    parse,
)
from tests.haproxy import haproxy_serving
from tests.ssh_gateway import Logins, running_gateway
from tests.sshd_target import SSHDTarget, free_port
from tests.test_ssh_jump import Gateway

ROOT = Path(__file__).resolve().parent.parent
VENDOR, BALANCER = "127.0.0.2", "127.0.0.3"


# -- the parser ---------------------------------------------------------------------------
def test_ipv4_and_ipv6_headers_give_the_client_address() -> None:
    v4 = build(("192.0.2.7", 50123), ("10.0.0.1", 2222))
    assert parse(v4 + b"SSH-2.0-x\r\n") == ProxyHeader(("192.0.2.7", 50123), len(v4))
    v6 = build(("2001:db8::7", 443), ("2001:db8::1", 2222), tlvs=b"\x05\x00\x02ab")
    assert parse(v6) == ProxyHeader(("2001:db8::7", 443), len(v6))


def test_local_command_keeps_the_connection_endpoints() -> None:
    local = SIGNATURE + bytes([0x20, 0x00]) + b"\x00\x00"
    assert parse(local) == ProxyHeader(None, 16)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", "signature"),
        (b"PROXY TCP4 192.0.2.7 10.0.0.1 5 22\r\n", "signature"),  # v1: not accepted
        (SIGNATURE + bytes([0x11, 0x11]) + b"\x00\x0c" + bytes(12), "version 1"),
        (SIGNATURE + bytes([0x22, 0x11]) + b"\x00\x0c" + bytes(12), "command 2"),
        (SIGNATURE + bytes([0x21, 0x12]) + b"\x00\x0c" + bytes(12), "TCP only"),  # UDP
        (SIGNATURE + bytes([0x21, 0x31]) + b"\x00\xd8" + bytes(216), "TCP only"),  # unix
        (SIGNATURE + bytes([0x21, 0x11]) + b"\x00\x08" + bytes(8), "cut short"),
        (SIGNATURE + bytes([0x21, 0x11]) + b"\xff\xff", "bytes"),  # longer than allowed
    ],
)
def test_headers_not_accepted_here_are_refused_with_a_reason(data: bytes, why: str) -> None:
    with pytest.raises(ProxyHeaderError, match=why):
        parse(data)


def test_partial_headers_ask_for_more_and_only_proxy_openings_look_like_proxy() -> None:
    whole = build(("192.0.2.7", 1), ("10.0.0.1", 2))
    assert all(parse(whole[:n]) is None for n in range(len(whole)))
    assert looks_like_proxy(whole[:3]) and looks_like_proxy(b"PROXY TCP4 ")
    assert not looks_like_proxy(b"SSH-2.0-OpenSSH_9.2\r\n") and not looks_like_proxy(b"")


@given(st.binary(max_size=MAX_HEADER + 64))
def test_any_bytes_parse_or_are_refused(data: bytes) -> None:
    try:
        found = parse(data)
    except ProxyHeaderError:
        return
    assert found is None or 16 <= found.length <= min(len(data), MAX_HEADER)


@given(
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
    st.integers(0, 65535),
    st.binary(max_size=512),
    st.binary(max_size=64),
)
def test_built_headers_round_trip(address: object, port: int, tlvs: bytes, after: bytes) -> None:
    dest = "10.0.0.1" if ":" not in str(address) else "::1"
    header = build((str(address), port), (dest, 2222), tlvs)
    assert parse(header + after) == ProxyHeader((str(address), port), len(header))


def test_balancer_addresses_are_matched_by_network() -> None:
    nets = [ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("fd00::/64")]
    listener = ProxyListener(nets, lambda *_: None, 5)
    assert listener.is_balancer("10.0.0.9") and listener.is_balancer("::ffff:10.0.0.9")
    assert listener.is_balancer("fd00::5") and not listener.is_balancer("10.0.1.9")
    assert not listener.is_balancer("") and not listener.is_balancer("garbage")


def test_the_shipped_haproxy_config_is_valid(tmp_path: Path) -> None:
    if shutil.which("haproxy") is None:
        pytest.skip("Debian's haproxy is not installed")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "conduit.test")])
    now = time.time()
    import datetime as dt

    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(dt.datetime.fromtimestamp(now - 60, dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(now + 3600, dt.UTC))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "portal.pem").write_bytes(cert_pem + key_pem)
    (tmp_path / "ca.pem").write_bytes(cert_pem)
    text = (ROOT / "deploy/haproxy/haproxy.cfg").read_text()
    text = text.replace("/etc/haproxy/conduit-portal.pem", str(tmp_path / "portal.pem"))
    text = text.replace("/etc/haproxy/conduit-nodes-ca.pem", str(tmp_path / "ca.pem"))
    (tmp_path / "haproxy.cfg").write_text(text)
    checked = subprocess.run(
        ["haproxy", "-c", "-f", str(tmp_path / "haproxy.cfg")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- a real gateway behind a real HAProxy ---------------------------------------------------
HAPROXY_CFG = """\
global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend ssh
    bind 127.0.0.1:{front}
    default_backend gateway
backend gateway
    server gw 127.0.0.1:{ssh_port} send-proxy-v2 source {balancer}
"""


@pytest.fixture
def behind_haproxy(sshd: SSHDTarget, tmp_path: Path) -> Iterator[tuple[Gateway, int]]:
    if shutil.which("haproxy") is None:
        pytest.skip("Debian's haproxy is not installed")
    env = {"CONDUIT_SSH__PROXY_PROTOCOL_FROM": f'["{BALANCER}/32"]'}
    with running_gateway(sshd, tmp_path, users=2, **env) as gateway:
        front = free_port()
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(
            HAPROXY_CFG.format(front=front, ssh_port=gateway.ssh_port, balancer=BALANCER)
        )
        with haproxy_serving(cfg, front):
            yield gateway, front


def _via(gateway: Gateway, port: int, route: str, code: str) -> subprocess.CompletedProcess[str]:
    argv = gateway.argv(route, "echo through")
    argv[argv.index("-p") + 1] = str(port)
    argv[1:1] = ["-b", VENDOR]
    return subprocess.run(argv, env=gateway.askpass(route.split("+")[0], code),
                          capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, check=False)  # fmt: skip


def _closed_without_ssh(source: str, port: int, first: bytes) -> bytes:
    """Connect from ``source``, send ``first``; everything the gateway sent before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        s.sendall(first)
        got = b""
        while chunk := s.recv(4096):
            got += chunk
        return got


def _refused_audited(gateway: Gateway, reason: str, deadline_s: float = 15) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        for event in gateway.audit():
            if event["action"] == "ssh.connection.refused" and reason in json.dumps(event):
                return True
        time.sleep(0.3)
    return False


def test_logins_through_haproxy_are_audited_with_the_vendors_address(
    behind_haproxy: tuple[Gateway, int],
) -> None:
    gateway, front = behind_haproxy
    logins = Logins(gateway)
    user, code = logins.take()
    done = _via(gateway, front, f"{user}+target", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "through"
    user2, code2 = logins.take()
    direct = gateway.ssh(f"{user2}+target", "echo direct", code2)  # no balancer: as before
    assert direct.returncode == 0, direct.stderr
    starts = {e["actor"]: e["source"] for e in gateway.audit_until("session.end")
              if e["action"] == "session.start"}  # fmt: skip
    assert starts == {user: VENDOR, user2: "127.0.0.1"}


def test_proxy_headers_are_refused_from_anyone_but_the_balancer(
    behind_haproxy: tuple[Gateway, int],
) -> None:
    gateway, _ = behind_haproxy
    forged = build(("198.51.100.9", 4242), ("127.0.0.1", gateway.ssh_port))
    # Closed (whatever greeting had left before the header arrived); the metric and the
    # audit below say why.
    _closed_without_ssh("127.0.0.1", gateway.ssh_port, forged + b"SSH-2.0-evil\r\n")
    # The balancer's address must send a header: plain SSH from there gets nothing.
    assert _closed_without_ssh(BALANCER, gateway.ssh_port, b"SSH-2.0-OpenSSH_9.2\r\n") == b""
    metric = gateway.server.metric
    assert (
        metric("conduit_ssh_connections_refused_total", "reason", "proxy_header_not_allowed") == 1
    )
    assert metric("conduit_ssh_connections_refused_total", "reason", "proxy_header_invalid") == 1
    assert _refused_audited(gateway, "proxy_header_not_allowed")
    assert "198.51.100.9" not in json.dumps(gateway.audit())  # the forged address went nowhere


async def test_the_proxy_listener_shares_its_port_with_sibling_workers() -> None:
    """Worker processes of a node (``serve --workers N``) each listen on the SSH port with
    SO_REUSEPORT; behind a balancer the PROXY listener is that socket, so it must ask for it
    too (without, the second worker's bind fails: address already in use)."""
    nets = [ipaddress.ip_network("127.0.0.3/32")]
    first = ProxyListener(nets, lambda *_: None, 5, reuse_port=True)
    second = ProxyListener(nets, lambda *_: None, 5, reuse_port=True)
    server = await first.create_server(lambda *_: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sibling = await second.create_server(lambda *_: None, "127.0.0.1", port)
        sibling.close()
        await sibling.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    alone = ProxyListener(nets, lambda *_: None, 5)  # one process: the port is its own
    server = await alone.create_server(lambda *_: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(OSError):
            await second.create_server(lambda *_: None, "127.0.0.1", port)
    finally:
        server.close()
        await server.wait_closed()
