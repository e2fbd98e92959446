"""Two real ``conduit serve`` nodes on one PostgreSQL database, real OpenSSH in front of the
real sshd asset: control across nodes, and a node's death.

Node a polls for missed notifications every second; node b only every minute, so a session
on b that ends within seconds was ended by a notification (and b's metrics say so). Both
share one data directory, as nodes share keys and a recordings mount.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pyotp
import pytest

from tests.ssh_gateway import Site, populate_with_admin, portal_login
from tests.sshd_target import SSHDTarget, free_port
from tests.support import Served, clean_env, conduit, init_data_dir
from tests.test_ssh_jump import Gateway

VENDORS = ("bob", "carol", "dave")
HEARTBEAT = {
    "CONDUIT_CLUSTER__HEARTBEAT_SECONDS": "0.5",
    "CONDUIT_CLUSTER__DEAD_AFTER_SECONDS": "3",
}
POLL = {"a": "1", "b": "60"}


@dataclass
class Cluster:
    nodes: dict[str, Site]
    database_url: str
    clients: list[Running] = field(default_factory=list)

    def session_on(self, node: str, user: str) -> Running:
        gateway = self.nodes[node].gateway
        proc = gateway.background(f"{user}+target", "echo started; sleep 60", gateway.code(user))
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"started"
        self.clients.append(Running(proc))
        return self.clients[-1]

    def audit_until(
        self, found: Callable[[list[dict[str, object]]], bool], deadline_s: float = 20
    ) -> list[dict[str, object]]:
        """The audit log once ``found`` holds of it (the gateway writes an event just after
        the client sees what caused it), or at ``deadline_s``."""
        site = self.nodes["a"]
        end = time.monotonic() + deadline_s
        while True:
            events = [
                json.loads(line) for line in site.conduit("audit", "export").stdout.splitlines()
            ]
            if found(events) or time.monotonic() > end:
                return events
            time.sleep(0.2)


@dataclass
class Running:
    proc: subprocess.Popen[bytes]

    def ended(self, deadline_s: float = 15) -> str:
        """The client's stderr once its session ended (fails if it has not within the bound)."""
        try:
            self.proc.wait(timeout=deadline_s)
            _, err = self.proc.communicate(timeout=10)
            return err.decode()
        finally:
            self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)  # closes its pipes, also when it ended by itself


def _start(
    data: Path, tmp_path: Path, name: str, environ: dict[str, str], secrets: dict[str, str],
    extra: dict[str, str],
) -> Site:  # fmt: skip
    portal, ssh_port = free_port(), free_port()
    env = clean_env(
        **environ, **HEARTBEAT, CONDUIT_SERVER__NODE_NAME=name,
        CONDUIT_CLUSTER__POLL_SECONDS=POLL[name], **extra,
    )  # fmt: skip
    server = Served(
        ["serve", "--data-dir", str(data), "--portal-listen", f"127.0.0.1:{portal}",
         "--ssh-listen", f"127.0.0.1:{ssh_port}"],
        f"127.0.0.1:{portal}",
        env=env,
    )  # fmt: skip
    server.wait_healthy()
    work = tmp_path / f"client-{name}"
    work.mkdir()
    return Site(Gateway(data, server, ssh_port, secrets, work), clean_env(**environ))


@contextmanager
def running_cluster(
    sshd: SSHDTarget, tmp_path: Path, pg_database: str, vendors: tuple[str, ...] = VENDORS,
    **extra: str,
) -> Iterator[Cluster]:  # fmt: skip
    """Nodes ``a`` and ``b`` on ``pg_database``, ``extra`` in both nodes' environment."""
    data = tmp_path / "data"
    environ = {"CONDUIT_DATABASE__URL": pg_database}
    init_data_dir(data, env=clean_env(**environ))
    secrets = {user: pyotp.random_base32() for user in vendors}
    asyncio.run(populate_with_admin(data, environ, sshd, secrets))
    made = Cluster({}, pg_database)
    try:
        for name in ("a", "b"):
            made.nodes[name] = _start(data, tmp_path, name, environ, secrets, extra)
        yield made
    finally:
        for running in made.clients:
            running.stop()
        for site in made.nodes.values():
            site.gateway.server.kill()


@pytest.fixture
def cluster(sshd: SSHDTarget, tmp_path: Path, pg_database: str) -> Iterator[Cluster]:
    with running_cluster(sshd, tmp_path, pg_database) as made:
        yield made


@contextmanager
def _admin(site: Site) -> Iterator[tuple[httpx.Client, str]]:
    """A portal client logged in as the admin (fresh MFA, so step-up holds), and its CSRF."""
    client = site.gateway.server.client()
    try:
        yield client, portal_login(client)
    finally:
        client.close()


def _by_notification(site: Site) -> float:
    return site.gateway.server.metric("conduit_kill_requests_served_total", "via", "notify")


def test_a_kill_on_node_a_ends_a_session_node_b_owns(cluster: Cluster) -> None:
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    running = cluster.session_on("b", "bob")
    with _admin(a) as (client, csrf):
        [listed] = client.get("/api/v1/sessions").json()
        assert listed["user"] == "bob"
        killed = client.post(
            f"/api/v1/sessions/{listed['id']}/kill",
            json={"reason": "from node a"},
            headers={"X-CSRF-Token": csrf},
        )
        assert killed.status_code == 202, killed.text
        err = running.ended()
    assert "session ended: killed: from node a" in err
    # b polls once a minute: only the notification could have ended it this soon.
    assert _by_notification(b) == 1
    events = cluster.audit_until(lambda ev: any(e["action"] == "session.end" for e in ev))
    [end] = [e for e in events if e["action"] == "session.end"]
    assert end["detail"]["reason"] == "killed"  # type: ignore[index]


@pytest.mark.parametrize("change", ["revoke", "disable"])
def test_a_revoke_or_disable_on_node_a_ends_a_session_node_b_owns(
    cluster: Cluster, change: str
) -> None:
    a = cluster.nodes["a"]
    running = cluster.session_on("b", "carol")
    other = cluster.session_on("b", "dave")
    try:
        with _admin(a) as (client, csrf):
            headers = {"X-CSRF-Token": csrf}
            if change == "revoke":
                grants = client.get("/api/v1/grants").json()
                [grant] = [g for g in grants if g["subject"] == "user:carol"]
                done = client.post(f"/api/v1/grants/{grant['id']}/revoke", headers=headers)
            else:
                done = client.put(
                    "/api/v1/users/carol/status", json={"status": "disabled"}, headers=headers
                )
            assert done.status_code == 200, done.text
            err = running.ended()
        assert "session ended: revoked" in err
        assert other.proc.poll() is None  # dave's grant is untouched
    finally:
        other.stop()
    events = cluster.audit_until(
        lambda ev: any(e["action"] == "session.end" and e["actor"] == "carol" for e in ev)
    )
    [end] = [e for e in events if e["action"] == "session.end" and e["actor"] == "carol"]
    assert end["detail"]["reason"] == "revoked"  # type: ignore[index]


def test_a_kill_whose_notification_is_lost_is_found_by_the_poll(cluster: Cluster) -> None:
    """The kill request is written as a node would, but its NOTIFY never goes out (as when
    the owner's listening connection is down): a's poll ends the session all the same."""
    a = cluster.nodes["a"]
    running = cluster.session_on("a", "bob")

    async def mark_without_notification() -> None:
        conn = await asyncpg.connect(cluster.database_url.replace("+asyncpg", ""))
        try:
            marked = await conn.execute(
                "UPDATE live_sessions SET kill_reason = 'no notify', kill_requested_by = 'root'"
                " WHERE username = 'bob' AND node = 'a'"
            )
            assert marked == "UPDATE 1"
        finally:
            await conn.close()

    asyncio.run(mark_without_notification())
    err = running.ended()
    assert "session ended: killed: no notify" in err
    assert a.gateway.server.metric("conduit_kill_requests_served_total", "via", "poll") == 1
    assert _by_notification(a) == 0


def test_a_node_killed_mid_session_is_reaped_by_the_survivor(cluster: Cluster) -> None:
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    running = cluster.session_on("b", "bob")
    kept = cluster.session_on("a", "carol")
    try:
        b.gateway.server.kill()  # SIGKILL: no shutdown, no session.end, recording left open
        running.ended()
        events = cluster.audit_until(lambda ev: any(e["action"] == "node.lost" for e in ev))
        [lost] = [e for e in events if e["action"] == "node.lost"]
        assert lost["target"] == "b" and lost["detail"]["noticed_by"] == "a"  # type: ignore[index]
        assert lost["detail"]["sessions_ended"] == 1  # type: ignore[index]
        [end] = [e for e in events if e["action"] == "session.end"]
        assert end["actor"] == "bob" and end["detail"]["reason"] == "node_lost"  # type: ignore[index]
        # Node a closed b's recording through crash recovery: signed, cut off, and says so.
        recording_id = str(end["detail"]["recording_id"])  # type: ignore[index]
        assert recording_id
        verified = conduit(
            "recordings", "verify", recording_id, "--data-dir", str(a.gateway.data), env=a.env
        )
        assert verified.returncode != 0
        assert verified.stdout.startswith(f"{recording_id} incomplete"), verified.stdout
        listing = a.conduit("sessions", "list").stdout
        assert " bob " not in listing and " carol " in listing
        nodes = a.conduit("nodes", "list").stdout
        assert [line.split()[0] for line in nodes.splitlines()[1:]] == ["a"]
        assert kept.proc.poll() is None  # a's own session goes on
    finally:
        kept.stop()
