"""Issue 20, database outage: a real ``conduit serve`` on PostgreSQL through a TCP path the test
cuts (tests/db_path.py), real OpenSSH clients, the real sshd asset.

While the path is cut: new SSH logins are refused with the message, /readyz and the portal
answer 503, a live session keeps relaying, and a kill still works from the node's memory
(``conduit sessions kill --local``). Once it is restored the events of the cut are in the
chain and ``conduit audit verify`` passes. A cut that outlasts the grace ends live sessions
with ``database_lost``.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyotp
import pytest

from tests.db_path import DatabasePath
from tests.ssh_gateway import populate_with_admin
from tests.sshd_target import SSHDTarget, free_port
from tests.support import Served, clean_env, conduit, init_data_dir
from tests.test_cluster_nodes import VENDORS
from tests.test_ssh_jump import Gateway

MESSAGE = "the gateway cannot reach its database; try again shortly"
CUT_SECONDS = 20  # the acceptance's outage


@dataclass
class Node:
    gateway: Gateway
    path: DatabasePath
    env: dict[str, str]  # for CLI commands: the database through the path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return conduit(*args, "--data-dir", str(self.gateway.data), env=self.env)

    def audit(self) -> list[dict[str, object]]:
        exported = self.cli("audit", "export")
        assert exported.returncode == 0, exported.stderr
        return [json.loads(line) for line in exported.stdout.splitlines()]

    def audit_until(
        self, found: Callable[[list[dict[str, object]]], bool], deadline_s: float = 30
    ) -> list[dict[str, object]]:
        end = time.monotonic() + deadline_s
        while True:
            try:
                events = self.audit()
            except AssertionError:  # the database is still coming back
                events = []
            if found(events) or time.monotonic() > end:
                return events
            time.sleep(0.3)

    def ready(self) -> int:
        with self.gateway.server.client() as client:
            return client.get("/readyz").status_code

    def wait_ready(self, status: int, deadline_s: float = 30) -> None:
        end = time.monotonic() + deadline_s
        while self.ready() != status:
            assert time.monotonic() < end, f"/readyz never answered {status}"
            time.sleep(0.2)


class Shell:
    """``cat`` on the asset through the gateway: a line sent comes back while it relays."""

    def __init__(self, gateway: Gateway, user: str) -> None:
        route = f"{user}+target"
        env = gateway.askpass(route, gateway.code(user))
        self.proc = subprocess.Popen(
            gateway.argv(route, "echo started; cat"), env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == b"started"

    def echo(self, text: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().decode().strip()

    def ended(self, deadline_s: float = 30) -> str:
        """The client's stderr once its session ended (fails if it has not in the bound)."""
        try:
            self.proc.wait(timeout=deadline_s)  # stdin stays open: closing it would end cat
            _, err = self.proc.communicate(timeout=10)
        finally:
            self.stop()
        return err.decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)


@pytest.fixture
def start_node(
    sshd: SSHDTarget, tmp_path: Path, pg_database: str
) -> Iterator[Callable[[int], Node]]:
    path = DatabasePath()
    started: list[Served] = []

    def start(grace_seconds: int) -> Node:
        data = tmp_path / "data"
        environ = {"CONDUIT_DATABASE__URL": path.url(pg_database)}
        init_data_dir(data, env=clean_env(**environ))
        secrets = {user: pyotp.random_base32() for user in VENDORS}
        asyncio.run(populate_with_admin(data, environ, sshd, secrets))
        portal, ssh_port = free_port(), free_port()
        env = clean_env(
            **environ, CONDUIT_DATABASE__OUTAGE_GRACE_SECONDS=str(grace_seconds),
            CONDUIT_SERVER__NODE_NAME="a",
        )  # fmt: skip
        server = Served(
            ["serve", "--data-dir", str(data), "--portal-listen", f"127.0.0.1:{portal}",
             "--ssh-listen", f"127.0.0.1:{ssh_port}"],
            f"127.0.0.1:{portal}", env=env,
        )  # fmt: skip
        started.append(server)
        server.wait_healthy()
        work = tmp_path / "client"
        work.mkdir()
        node = Node(Gateway(data, server, ssh_port, secrets, work), path, clean_env(**environ))
        node.wait_ready(200)
        return node

    try:
        yield start
    finally:
        path.close()
        for server in started:
            server.kill()


def _session_id(node: Node, user: str) -> str:
    events = node.audit_until(
        lambda ev: any(e["action"] == "session.start" and e["actor"] == user for e in ev)
    )
    [start] = [e for e in events if e["action"] == "session.start" and e["actor"] == user]
    session_id = start["detail"]["session_id"]  # type: ignore[index]
    assert isinstance(session_id, str)
    return session_id


def test_a_20_s_outage_refuses_logins_keeps_sessions_and_loses_no_audit_event(
    start_node: Callable[[int], Node],
) -> None:
    node = start_node(120)
    gateway = node.gateway
    kept, killed = Shell(gateway, "bob"), Shell(gateway, "carol")
    try:
        assert kept.echo("before") == "before"
        doomed = _session_id(node, "carol")
        cut_at = time.monotonic()
        node.path.cut()
        node.wait_ready(503)  # HAProxy's health check takes the node out

        refused = gateway.ssh("dave+target", "echo hi", gateway.code("dave"))
        assert refused.returncode == 255
        assert MESSAGE in refused.stderr
        with gateway.server.client() as client:
            page = client.get("/login")
            api = client.get("/api/v1/sessions")
        assert page.status_code == 503 and "cannot reach its database" in page.text
        assert "default-src" in page.headers["content-security-policy"]
        assert api.status_code == 503 and api.json()["code"] == "database_unreachable"

        assert kept.echo("during") == "during"  # the live session goes on
        local = node.cli("sessions", "kill", doomed, "--local", "--reason", "db away")
        assert local.returncode == 0, local.stderr
        assert "session ended: killed: db away" in killed.ended()

        time.sleep(max(0.0, CUT_SECONDS - (time.monotonic() - cut_at)))
        assert kept.echo("still") == "still"
        node.path.restore()
        node.wait_ready(200)
        assert kept.echo("after") == "after"
    finally:
        killed.stop()
        kept.stop()

    events = node.audit_until(
        lambda ev: (
            sum(e["action"] == "session.end" for e in ev) == 2
            and any(e["action"] == "login.refused" for e in ev)
        )
    )
    actions = [(e["action"], e["actor"]) for e in events]
    assert ("login.refused", "dave") in actions
    assert ("portal.refused", "anonymous") in actions
    assert ("session.kill", "local:" + getpass.getuser()) in actions
    [refusal] = [e for e in events if e["action"] == "login.refused"]
    assert refusal["detail"] == {  # spooled, then drained with its own time
        "channel": "ssh", "reason": "database unreachable",
        "spool_id": refusal["detail"]["spool_id"],  # type: ignore[index]
    }  # fmt: skip
    [carol_end] = [e for e in events if e["action"] == "session.end" and e["actor"] == "carol"]
    assert carol_end["detail"]["reason"] == "killed"  # type: ignore[index]
    assert "spool_id" in carol_end["detail"]  # type: ignore[operator]
    ids = [e["id"] for e in events]
    assert ids == list(range(1, len(ids) + 1))
    verified = node.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_an_outage_longer_than_the_grace_ends_live_sessions_database_lost(
    start_node: Callable[[int], Node],
) -> None:
    node = start_node(3)
    shell = Shell(node.gateway, "bob")
    try:
        assert shell.echo("before") == "before"
        node.path.cut()
        err = shell.ended()
        assert "database_lost" in err
    finally:
        shell.stop()
        node.path.restore()
    events = node.audit_until(lambda ev: any(e["action"] == "session.end" for e in ev))
    [end] = [e for e in events if e["action"] == "session.end"]
    assert end["detail"]["reason"] == "database_lost"  # type: ignore[index]
    verified = node.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # The recording is closed and signed at once; its catalog row, which the outage held
    # back, is finished once the database is back (not left for crash recovery).
    end = time.monotonic() + 30
    while "database_lost/" not in (listed := node.cli("recordings", "list").stdout):
        assert time.monotonic() < end, listed
        time.sleep(0.3)
    assert " open" not in listed


def test_kill_local_works_while_the_database_path_is_silent(
    start_node: Callable[[int], Node],
) -> None:
    # A black hole, not a reset: the driver gets no answer and no error. The kill must not
    # wait behind an audit append to it, and the kill's event still reaches the chain.
    node = start_node(120)
    shell = Shell(node.gateway, "carol")
    try:
        assert shell.echo("before") == "before"
        doomed = _session_id(node, "carol")
        node.path.freeze()
        local = node.cli("sessions", "kill", doomed, "--local", "--reason", "db silent")
        assert local.returncode == 0, local.stderr
        assert "session ended: killed: db silent" in shell.ended()
    finally:
        shell.stop()
        node.path.thaw()
        node.path.cut()  # the frozen connections go, as after a real black hole
        node.path.restore()
    node.wait_ready(200)
    events = node.audit_until(
        lambda ev: (
            any(e["action"] == "session.kill" for e in ev)
            and any(e["action"] == "session.end" for e in ev)
        )
    )
    [kill] = [e for e in events if e["action"] == "session.kill"]
    assert kill["actor"] == "local:" + getpass.getuser()
    assert kill["detail"]["via"] == "local"  # type: ignore[index]
    assert len([e for e in events if e["action"] == "session.end"]) == 1
    verified = node.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
