"""``conduit serve --workers N``: a real supervisor and its real worker processes sharing the
SSH and portal ports (SO_REUSEPORT) on one PostgreSQL database, real OpenSSH clients and the
real sshd asset. Both workers register and carry sessions; a worker killed mid-session loses
only its own sessions (ended ``node_lost``, audited, recording recovered as incomplete) and is
replaced under its index while its sibling's session goes on; SIGTERM to the supervisor stops
them all. On SQLite the node says it runs one process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import asyncpg
import pyotp
import pytest

from gateway.cli.supervisor import workers_for
from tests.ssh_gateway import populate_with_admin
from tests.sshd_target import SSHDTarget, free_port
from tests.support import Served, clean_env, conduit, init_data_dir
from tests.test_ssh_jump import Gateway

VENDORS = tuple(f"v{i}" for i in range(12))  # one login each: a TOTP step is used once
HEARTBEAT = {
    "CONDUIT_CLUSTER__HEARTBEAT_SECONDS": "0.5",
    "CONDUIT_CLUSTER__DEAD_AFTER_SECONDS": "3",
    "CONDUIT_SERVER__NODE_NAME": "w",
}
SQLITE_NOTE = "SQLite runs one process: 2 workers asked for, 1 started"
T = TypeVar("T")


def _until(what: Callable[[], T | None], deadline_s: float = 30) -> T:
    """``what()`` once it is not None (fails at the deadline)."""
    end = time.monotonic() + deadline_s
    while True:
        found = what()
        if found is not None:
            return found
        assert time.monotonic() < end, "not within the deadline"
        time.sleep(0.2)


@dataclass
class Session:
    user: str
    proc: subprocess.Popen[bytes]

    def echo(self, line: bytes) -> bytes:
        """Send a line through the session (the asset runs ``cat``); what comes back."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)


@dataclass
class Node:
    gateway: Gateway
    env: dict[str, str]
    database_url: str
    sessions: list[Session] = field(default_factory=list)

    def conduit(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = conduit(*args, "--data-dir", str(self.gateway.data), env=self.env)
        assert done.returncode == 0, done.stderr
        return done

    def members(self) -> dict[int, int]:
        """worker index -> pid, from ``conduit nodes list --json``."""
        lines = self.conduit("nodes", "list", "--json").stdout.splitlines()
        listed = [json.loads(line) for line in lines]
        return {m["worker"]: m["pid"] for m in listed if m["node"] == "w"}

    def open(self, user: str) -> Session:
        """An interactive session through the node to the asset, running ``cat``."""
        gw = self.gateway
        proc = subprocess.Popen(gw.argv(f"{user}+target", "echo started; exec cat"),
                                env=gw.askpass(user, gw.code(user)), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"started"
        self.sessions.append(Session(user, proc))
        return self.sessions[-1]

    def owners(self) -> dict[str, int]:
        """user -> the worker that owns their live session (the shared table)."""

        async def read() -> dict[str, int]:
            conn = await asyncpg.connect(self.database_url.replace("+asyncpg", ""))
            try:
                rows = await conn.fetch("SELECT username, worker FROM live_sessions")
            finally:
                await conn.close()
            return {row["username"]: row["worker"] for row in rows}

        return asyncio.run(read())

    def audit(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.conduit("audit", "export").stdout.splitlines()]


def _serve(data: Path, env: dict[str, str], *extra: str) -> tuple[Served, int]:
    portal, ssh_port = free_port(), free_port()
    server = Served(
        ["serve", "--data-dir", str(data), "--portal-listen", f"127.0.0.1:{portal}",
         "--ssh-listen", f"127.0.0.1:{ssh_port}", *extra],
        f"127.0.0.1:{portal}",
        env=env,
    )  # fmt: skip
    return server, ssh_port


@pytest.fixture
def node(sshd: SSHDTarget, tmp_path: Path, pg_database: str) -> Iterator[Node]:
    data = tmp_path / "data"
    environ = {"CONDUIT_DATABASE__URL": pg_database}
    init_data_dir(data, env=clean_env(**environ))
    secrets = {user: pyotp.random_base32() for user in VENDORS}
    asyncio.run(populate_with_admin(data, environ, sshd, secrets))
    # As behind a load balancer (deploy/haproxy): the SSH port is the PROXY v2 listener, which
    # every worker must share too; 127.0.0.3 is a balancer no test client connects from.
    balancer = {"CONDUIT_SSH__PROXY_PROTOCOL_FROM": '["127.0.0.3/32"]'}
    env = clean_env(**environ, **HEARTBEAT, **balancer)
    server, ssh_port = _serve(data, env, "--workers", "2")
    work = tmp_path / "client"
    work.mkdir()
    made = Node(Gateway(data, server, ssh_port, secrets, work), clean_env(**environ), pg_database)
    try:
        server.wait_healthy()
        yield made
    finally:
        for session in made.sessions:
            session.stop()
        server.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_workers_share_the_ports_and_a_killed_one_is_replaced(node: Node) -> None:
    server = node.gateway.server

    # (a) Both workers registered, each its own process.
    def both() -> dict[int, int] | None:
        members = node.members()
        return members if sorted(members) == [0, 1] else None

    first = _until(both)
    assert first[0] != first[1] and server.proc.pid not in first.values()

    # (b) The kernel spreads connections: sessions land on both workers.
    users = iter(VENDORS)
    owners: dict[str, int] = {}
    while set(owners.values()) != {0, 1}:
        node.open(next(users))  # 12 logins: all on one worker has odds of 1 in 2048
        owners = _until(lambda: node.owners() if len(node.owners()) == len(node.sessions) else None)
    victim_user = node.sessions[-1].user
    victim_worker = owners[victim_user]
    [kept] = [s for s in node.sessions if owners[s.user] != victim_worker][:1]
    assert kept.echo(b"before") == b"before"

    # (c) SIGKILL the worker that owns the last session.
    os.kill(first[victim_worker], signal.SIGKILL)
    victims = [s for s in node.sessions if owners[s.user] == victim_worker]
    for session in victims:
        assert session.proc.wait(timeout=15) != 0  # the connection died with the worker

    # The supervisor starts a new worker under the same index.
    def replacement() -> dict[int, int] | None:
        members = node.members()
        pid = members.get(victim_worker, first[victim_worker])
        return members if pid != first[victim_worker] else None

    replaced = _until(replacement)
    assert _alive(replaced[victim_worker]) and not _alive(first[victim_worker])
    assert replaced[1 - victim_worker] == first[1 - victim_worker]  # the sibling was untouched
    # Its sessions are ended in the shared table, audited, and their recordings recovered.
    victim_users = {s.user for s in victims}
    _until(lambda: True if not victim_users & set(node.owners()) else None)

    def audited() -> list[dict[str, object]] | None:
        events = node.audit()
        ends = [e for e in events if e["action"] == "session.end"]
        return (
            events
            if len(ends) >= len(victims) and any(e["action"] == "node.lost" for e in events)
            else None
        )

    events = _until(audited)
    ends = [e for e in events if e["action"] == "session.end"]
    assert {e["actor"] for e in ends} == victim_users
    for end in ends:
        detail = end["detail"]
        assert isinstance(detail, dict)
        assert detail["reason"] == "node_lost" and detail["worker"] == victim_worker
        verified = conduit("recordings", "verify", str(detail["recording_id"]),
                           "--data-dir", str(node.gateway.data), env=node.env)  # fmt: skip
        assert verified.returncode != 0
        assert verified.stdout.startswith(f"{detail['recording_id']} incomplete"), verified.stdout
    [lost] = [e for e in events if e["action"] == "node.lost"]
    lost_detail = {k: v for k, v in lost["detail"].items() if k != "spool_id"}  # type: ignore[attr-defined]
    assert lost_detail == {
        "worker": victim_worker, "sessions_ended": len(victims), "noticed_by": "w", "by": "restart",
    }  # fmt: skip
    _until(lambda: True if "worker.restart" in "".join(server._err_lines) else None)
    # The other worker's session goes on.
    assert kept.proc.poll() is None and kept.echo(b"after the kill") == b"after the kill"
    assert kept.user in node.owners()

    # (d) SIGTERM to the supervisor stops every worker cleanly.
    assert server.terminate(timeout=60) == 0
    pids = [*replaced.values(), first[victim_worker]]
    assert not any(_alive(pid) for pid in pids)
    assert node.members() == {}  # each worker left the table at its clean stop
    kept.proc.wait(timeout=15)


def test_sqlite_runs_one_process_and_says_so(tmp_path: Path) -> None:
    data = tmp_path / "data"
    init_data_dir(data, env=clean_env())
    server, _ = _serve(data, clean_env(), "--workers", "2")
    try:
        server.wait_healthy()
        server.wait_for_output(SQLITE_NOTE)
        assert "supervisor" not in server.stdout
        listed = conduit("nodes", "list", "--json", "--data-dir", str(data), env=clean_env())
        assert [json.loads(line)["worker"] for line in listed.stdout.splitlines()] == [0]
    finally:
        assert server.terminate(timeout=30) == 0


@pytest.mark.parametrize(
    "url,configured,requested,cpus,expected",
    [
        ("postgresql+asyncpg://db/c", 0, None, 4, (4, "")),  # default: one per CPU
        ("postgresql+asyncpg://db/c", 0, None, None, (1, "")),
        ("postgresql+asyncpg://db/c", 3, None, 4, (3, "")),  # server.workers
        ("postgresql+asyncpg://db/c", 3, 2, 4, (2, "")),  # --workers wins
        ("postgresql+asyncpg://db/c", 0, 1, 4, (1, "")),
        ("sqlite+aiosqlite:///x.db", 0, None, 4, (1, "")),
        ("sqlite+aiosqlite:///x.db", 0, 2, 4, (1, SQLITE_NOTE)),
    ],
)  # fmt: skip
def test_how_many_workers(
    url: str, configured: int, requested: int | None, cpus: int | None, expected: tuple[int, str]
) -> None:
    assert workers_for(url, configured, requested, cpus) == expected
