"""`conduit demo`: one command from nothing to a seeded, serving demo site."""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path

from tests.support import Served, conduit


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_demo(data_dir: Path) -> Served:
    portal = _port()
    server = Served(
        [
            "demo",
            "--data-dir",
            str(data_dir),
            "--portal-listen",
            f"127.0.0.1:{portal}",
            "--ssh-listen",
            f"127.0.0.1:{_port()}",
        ],
        f"127.0.0.1:{portal}",
        https=False,
    )
    server.wait_healthy(deadline_s=60)
    return server


def test_demo_initialises_seeds_and_serves(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    server = start_demo(data_dir)
    try:
        with server.client() as client:
            assert client.get("/readyz").json()["status"] == "ready"
        assert server.terminate() == 0
    finally:
        server.kill()
    creds_file = data_dir / "demo-credentials.json"
    assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
    creds = json.loads(creds_file.read_text())
    assert [c["username"] for c in creds] == ["admin", "approver", "vendor", "auditor"]
    for c in creds:
        assert c["password"] in server.stdout and c["totp_secret"] in server.stdout
    # An admin exists, so no enrolment link is offered.
    assert "/enroll/" not in server.stdout

    listed = conduit("user", "list", "--data-dir", str(data_dir))
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split()[1:] for line in listed.stdout.splitlines()[1:]}
    assert rows["admin"][:2] == ["active", "admin"]
    assert rows["vendor"] == ["active", "vendor", "acme-automation"]
    assert set(rows) == {"admin", "approver", "vendor", "auditor"}

    again = start_demo(data_dir)
    try:
        assert again.terminate() == 0
    finally:
        again.kill()
    assert creds[0]["password"] in again.stdout
    assert json.loads(creds_file.read_text()) == creds


def test_demo_refuses_plain_http_off_loopback(tmp_path: Path) -> None:
    result = conduit("demo", "--data-dir", str(tmp_path / "d"), "--portal-listen", "0.0.0.0:0")
    assert result.returncode == 2
    assert "portal.tls" in result.stderr
