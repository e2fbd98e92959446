"""`conduit serve` as a real process: health, readiness, metrics, enrolment link, SSH, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Served, clean_env, conduit, init_data_dir


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def served(data_dir: Path) -> Iterator[tuple[Served, int]]:
    init_data_dir(data_dir)
    portal, ssh = _port(), _port()
    server = Served(
        [
            "serve",
            "--data-dir",
            str(data_dir),
            "--portal-listen",
            f"127.0.0.1:{portal}",
            "--ssh-listen",
            f"127.0.0.1:{ssh}",
        ],
        f"127.0.0.1:{portal}",
    )
    try:
        server.wait_healthy()
        yield server, ssh
    finally:
        server.kill()


def test_health_readiness_metrics_and_headers(served: tuple[Served, int]) -> None:
    server, _ = served
    with server.client() as client:
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "alive"}
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"database": "ok", "keys": "ok", "recordings": "ok"}
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert "conduit_live_sessions 0.0" in metrics.text
        assert 'conduit_ready_check{check="database"} 1.0' in metrics.text
        index = client.get("/")
        assert "frame-ancestors 'none'" in index.headers["content-security-policy"]
        assert index.headers["x-frame-options"] == "DENY"
        assert index.headers["strict-transport-security"].startswith("max-age=")
        assert "server" not in index.headers
    assert server.terminate() == 0


def test_sigterm_exits_zero_within_ten_seconds(served: tuple[Served, int], data_dir: Path) -> None:
    server, _ = served
    # Keep a connection open so shutdown has something to close.
    with server.client() as client:
        assert client.get("/healthz").status_code == 200
        assert server.terminate(timeout=10) == 0
    assert "stopped" in server.stderr
    # Start and stop are audited, and the chain is checkpointed at shutdown.
    exported = conduit("audit", "export", "--data-dir", str(data_dir))
    assert exported.returncode == 0, exported.stderr
    actions = [json.loads(line)["action"] for line in exported.stdout.splitlines()]
    assert actions == ["gateway.start", "gateway.stop"]
    verified = conduit("audit", "verify", "--data-dir", str(data_dir))
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_first_start_prints_a_working_one_time_admin_link(data_dir: Path) -> None:
    init_data_dir(data_dir)
    portal = _port()
    args = [
        "serve",
        "--data-dir",
        str(data_dir),
        "--portal-listen",
        f"127.0.0.1:{portal}",
        "--ssh-listen",
        f"127.0.0.1:{_port()}",
    ]
    env = clean_env(CONDUIT_LOGGING__FORMAT="json")
    first = Served(args, f"127.0.0.1:{portal}", env=env)
    try:
        first.wait_healthy()
        with first.client() as client:
            assert client.get("/enroll/" + "A" * 43).status_code == 404
            assert first.terminate() == 0
    finally:
        first.kill()
    links = re.findall(r"https://127\.0\.0\.1:\d+/enroll/([A-Za-z0-9_-]{43})", first.stdout)
    assert len(links) == 1, first.stdout
    token = links[0]
    # Logs are JSON lines and never carry the link's secret.
    assert token not in first.stderr
    for line in first.stderr.strip().splitlines():
        assert isinstance(json.loads(line), dict), line

    second = Served(args, f"127.0.0.1:{portal}")
    try:
        second.wait_healthy()
        new_token = second.wait_for_output(r"/enroll/([A-Za-z0-9_-]{43})").group(1)
        assert new_token != token
        with second.client() as client:
            # A restart without an admin issues a new link and voids the old one.
            assert client.get(f"/enroll/{token}").status_code == 404
            page = client.get(f"/enroll/{new_token}")
            assert page.status_code == 200 and "valid until" in page.text
        assert second.terminate() == 0
    finally:
        second.kill()


def test_readiness_fails_when_sqlite_database_goes_away(
    served: tuple[Served, int], data_dir: Path
) -> None:
    server, _ = served
    db_file = data_dir / "conduit.db"
    with server.client() as client:
        assert client.get("/readyz").status_code == 200
        db_file.rename(data_dir / "moved.db")
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["failing"] == ["database"]
        (data_dir / "moved.db").rename(db_file)
        assert client.get("/readyz").status_code == 200
        assert client.get("/healthz").status_code == 200


def test_readiness_names_recordings_and_keys(served: tuple[Served, int], data_dir: Path) -> None:
    server, _ = served
    with server.client() as client:
        shutil.rmtree(data_dir / "recordings")
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["failing"] == ["recordings"]
        (data_dir / "recordings").mkdir(mode=0o700)
        (data_dir / "keys" / "signing.key").chmod(0o644)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["failing"] == ["keys"]


def test_readiness_fails_when_postgresql_database_is_dropped(
    pg_database: str, tmp_path: Path
) -> None:
    import asyncpg

    data = tmp_path / "data"
    env = clean_env(CONDUIT_DATABASE__URL=pg_database)
    init_data_dir(data, env=env)
    portal = _port()
    server = Served(
        [
            "serve",
            "--data-dir",
            str(data),
            "--portal-listen",
            f"127.0.0.1:{portal}",
            "--ssh-listen",
            f"127.0.0.1:{_port()}",
        ],
        f"127.0.0.1:{portal}",
        env=env,
    )
    name = pg_database.rsplit("/", 1)[1]

    async def drop() -> None:
        conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
        try:
            await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    try:
        server.wait_healthy()
        with server.client() as client:
            assert client.get("/readyz").status_code == 200
            asyncio.run(drop())
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["failing"] == ["database"]
            assert client.get("/healthz").status_code == 200
        assert server.terminate() == 0
    finally:
        server.kill()


def test_real_openssh_client_sees_banner_and_is_refused(
    served: tuple[Served, int], tmp_path: Path
) -> None:
    server, ssh_port = served
    ssh = shutil.which("ssh")
    if ssh is None:
        pytest.skip("OpenSSH client not installed (scripts/test.sh installs it as root)")
    result = subprocess.run(
        [
            ssh,
            "-p",
            str(ssh_port),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            f"UserKnownHostsFile={tmp_path / 'known_hosts'}",
            "-o",
            "ConnectTimeout=10",
            "alice@127.0.0.1",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 255
    assert "Authorised use only" in result.stderr
    assert "Permission denied" in result.stderr
    known = (tmp_path / "known_hosts").read_text()
    assert "ssh-ed25519" in known or "ecdsa-sha2-nistp256" in known
    with server.client() as client:
        assert "conduit_ssh_connections_total 1.0" in client.get("/metrics").text


def test_busy_port_fails_with_a_clear_line(data_dir: Path) -> None:
    init_data_dir(data_dir)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = conduit(
            "serve",
            "--data-dir",
            str(data_dir),
            "--portal-listen",
            f"127.0.0.1:{port}",
            "--ssh-listen",
            f"127.0.0.1:{_port()}",
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
