"""Live watch of a desktop across nodes (decision 0024): two real ``conduit serve`` nodes on
one PostgreSQL, a real TigerVNC ``Xvnc`` as the asset. The vendor's desktop runs through node
b (a websocket client speaking RFB as noVNC does); the approver watches it through node a's
portal: node a relays the frames both ways (the watcher's RFB handshake and update requests
go to b, which drops the watcher's input as for a local watch), the watcher gets the
desktop's size and updates, and is told when the session ends on b.
"""

from __future__ import annotations

import json
import ssl
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyotp
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from tests.desktop_targets import XvncTarget, start_xvnc
from tests.ssh_gateway import _csrf
from tests.sshd_target import free_port
from tests.support import Served, clean_env, conduit, init_data_dir

pytestmark = pytest.mark.realpeer
PASSWORD = "correct horse battery staple 9"  # noqa: S105 - the portal users' test password
VNC_PASSWORD = "vault-Qx7!pw"  # noqa: S105 - the target's, vaulted
ASSET = "hmi-vnc"
COOKIE = "__Host-conduit_session"


@dataclass
class Nodes:
    a: Served
    b: Served
    env: dict[str, str]
    data: Path
    secrets: dict[str, str]
    target: XvncTarget

    def audit(self) -> list[dict[str, object]]:
        done = conduit("audit", "export", "--data-dir", str(self.data), env=self.env)
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture
def nodes(tmp_path: Path, pg_database: str) -> Iterator[Nodes]:
    env = clean_env(CONDUIT_DATABASE__URL=pg_database)
    data = tmp_path / "data"
    init_data_dir(data, env=env)
    target = start_xvnc(tmp_path / "xvnc", password=VNC_PASSWORD, geometry="640x480")
    secrets: dict[str, str] = {}
    served: list[Served] = []
    try:
        for user, role in (("vendor", "vendor"), ("approver", "approver")):
            secret_file = tmp_path / f"{user}.totp"
            done = conduit("user", "add", user, "--role", role, "--password-stdin",
                           "--totp-secret-file", str(secret_file), "--data-dir", str(data),
                           stdin=PASSWORD + "\n", env=env)  # fmt: skip
            assert done.returncode == 0, done.stderr
            secrets[user] = secret_file.read_text().strip()
        for args, stdin in (
            (("asset", "add", ASSET, "--host", "127.0.0.1", "--port", str(target.port),
              "--protocol", "vnc"), None),
            (("asset", "credential", ASSET, "--username", "vnc", "--password-stdin"),
             VNC_PASSWORD + "\n"),
            (("grant", "add", "--user", "vendor", "--asset", ASSET, "--action", "vnc"), None),
            (("grant", "add", "--user", "approver", "--asset", ASSET, "--action", "kill"), None),
        ):  # fmt: skip
            done = conduit(*args, "--data-dir", str(data), stdin=stdin, env=env)
            assert done.returncode == 0, done.stderr
        for name in ("a", "b"):
            portal = free_port()
            server = Served(
                ["serve", "--data-dir", str(data), "--portal-listen", f"127.0.0.1:{portal}",
                 "--ssh-listen", f"127.0.0.1:{free_port()}"],
                f"127.0.0.1:{portal}", env={**env, "CONDUIT_SERVER__NODE_NAME": name},
            )  # fmt: skip
            served.append(server)
            server.wait_healthy()
        yield Nodes(served[0], served[1], env, data, secrets, target)
    finally:
        for server in served:
            server.kill()
        target.stop()


def _signed_in(server: Served, user: str, secret: str) -> httpx.Client:
    client = server.client()
    first = {"username": user, "password": PASSWORD, "csrf_token": _csrf(client.get("/login"))}
    assert client.post("/login", data=first).status_code == 303
    page = client.get("/login/code")
    done = client.post("/login/code", data={"code": pyotp.TOTP(secret).now(),
                                            "csrf_token": _csrf(page)})  # fmt: skip
    assert done.status_code == 303, done.text
    return client


def _socket(server: Served, client: httpx.Client, path: str) -> ClientConnection:
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE  # the test node's own self-signed certificate
    return connect(
        server.base.replace("https://", "wss://") + path, ssl=tls, origin=Origin(server.base),
        additional_headers={"Cookie": f"{COOKIE}={client.cookies[COOKIE]}"}, open_timeout=10,
        max_size=None,
    )  # fmt: skip


def _read(ws: ClientConnection, size: int, buf: bytearray) -> bytes:
    while len(buf) < size:
        frame = ws.recv(timeout=15)
        assert isinstance(frame, bytes), frame
        buf += frame
    out = bytes(buf[:size])
    del buf[:size]
    return out


def _handshake(ws: ClientConnection, buf: bytearray) -> tuple[int, int]:
    """The viewer's side of RFB 3.8 with security None; the desktop's size."""
    assert _read(ws, 12, buf) == b"RFB 003.008\n"
    ws.send(b"RFB 003.008\n")
    count = _read(ws, 1, buf)[0]
    assert 1 in _read(ws, count, buf)
    ws.send(b"\x01")
    assert _read(ws, 4, buf) == b"\x00\x00\x00\x00"
    ws.send(b"\x01")  # ClientInit: shared
    width, height = struct.unpack(">HH", _read(ws, 4, buf))
    _read(ws, 16, buf)  # pixel format
    (name_length,) = struct.unpack(">I", _read(ws, 4, buf))
    _read(ws, name_length, buf)
    return width, height


def _update_request(width: int, height: int) -> bytes:
    return struct.pack(">BBHHHH", 3, 0, 0, 0, width, height)


def test_a_desktop_relayed_by_node_b_is_watched_through_node_a(nodes: Nodes) -> None:
    vendor = _signed_in(nodes.b, "vendor", nodes.secrets["vendor"])
    approver = _signed_in(nodes.a, "approver", nodes.secrets["approver"])
    try:
        csrf = _csrf(vendor.get(f"/connect/{ASSET}/desktop"))
        issued = vendor.post(f"/connect/{ASSET}/desktop/ticket", headers={"X-CSRF-Token": csrf})
        assert issued.status_code == 200, issued.text
        ticket = issued.json()["ticket"]
        with _socket(nodes.b, vendor, f"/ws/desktop?ticket={ticket}&width=640&height=480") as desk:
            vendor_buf = bytearray()
            assert _handshake(desk, vendor_buf) == (640, 480)
            [row] = approver.get("/api/v1/sessions").json()
            assert row["node"] == "b"
            with _socket(nodes.a, approver, f"/ws/watch-desktop/{row['id']}") as watch:
                buf = bytearray()
                assert _handshake(watch, buf) == (640, 480)  # b's desktop, through a
                watch.send(_update_request(640, 480))
                assert _read(watch, 1, buf) == b"\x00"  # a FramebufferUpdate from b
                killed = approver.post(
                    f"/api/v1/sessions/{row['id']}/kill", json={"reason": "watched enough"},
                    headers={"X-CSRF-Token": _csrf(approver.get("/account"))},
                )  # fmt: skip
                assert killed.status_code == 202, killed.text
                ends = []
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        frame = watch.recv(timeout=15)
                        if isinstance(frame, str):
                            ends.append(json.loads(frame))
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
                assert ends and ends[-1]["type"] == "end"
    finally:
        vendor.close()
        approver.close()
    watched = [e for e in nodes.audit() if e["action"] == "session.watched"]
    assert [(e["actor"], e["detail"]["via_node"]) for e in watched] == [("approver", "a")]  # type: ignore[index]
