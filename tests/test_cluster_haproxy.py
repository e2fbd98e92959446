"""Two real ``conduit serve`` nodes on one PostgreSQL behind Debian's real HAProxy (TCP mode,
PROXY v2 from 127.0.0.3, each node's portal ``/readyz`` as its health check), real OpenSSH
clients binding 127.0.0.2 and the real sshd asset: where logins land, and where new logins
go once a node has died.

Covered elsewhere, not repeated here: a PROXY header from an address that is not the
balancer's is refused (test_ssh_proxy_protocol); the survivor ends a dead node's sessions
as ``node_lost``, audits it and closes its recordings (test_cluster_nodes).
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.haproxy import BALANCER, VENDOR, HAProxy, NodePorts, missing_reason, running_haproxy
from tests.sshd_target import SSHDTarget
from tests.test_cluster_nodes import VENDORS, Cluster, Running, running_cluster
from tests.test_ssh_proxy_protocol import _via

Event = dict[str, object]


@pytest.fixture
def balanced(
    sshd: SSHDTarget, tmp_path: Path, pg_database: str
) -> Iterator[tuple[Cluster, HAProxy]]:
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    env = {"CONDUIT_SSH__PROXY_PROTOCOL_FROM": f'["{BALANCER}/32"]'}
    with running_cluster(sshd, tmp_path, pg_database, **env) as cluster:
        nodes = {
            name: NodePorts(site.gateway.ssh_port, int(site.gateway.server.portal.split(":")[1]))
            for name, site in cluster.nodes.items()
        }
        with running_haproxy(tmp_path / "haproxy", {"ssh": nodes}) as balancer:
            balancer.wait_states("ssh", {"a": "UP", "b": "UP"})
            yield cluster, balancer


def _login(cluster: Cluster, balancer: HAProxy, user: str) -> None:
    """``user`` runs a command on the asset through the balancer; it must work."""
    gateway = cluster.nodes["a"].gateway  # the one that hands out codes: accounts are shared
    done = _via(gateway, balancer.front["ssh"], f"{user}+target", gateway.fresh_code(user))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "through"


def _session(cluster: Cluster, balancer: HAProxy, user: str) -> Running:
    """A session of ``user`` through the balancer, left running (ended by the cluster)."""
    gateway = cluster.nodes["a"].gateway
    argv = gateway.argv(f"{user}+target", "echo started; sleep 60")
    argv[argv.index("-p") + 1] = str(balancer.front["ssh"])
    argv[1:1] = ["-b", VENDOR]
    proc = subprocess.Popen(
        argv, env=gateway.askpass(user, gateway.fresh_code(user)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    cluster.clients.append(Running(proc))
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"started"
    return cluster.clients[-1]


def _starts(events: list[Event]) -> list[Event]:
    return [e for e in events if e["action"] == "session.start"]


def _node(event: Event) -> object:
    detail = event["detail"]
    assert isinstance(detail, dict)
    return detail["node"]


def test_logins_through_haproxy_land_on_both_nodes_with_the_vendors_address(
    balanced: tuple[Cluster, HAProxy],
) -> None:
    cluster, balancer = balanced
    users = [*VENDORS, VENDORS[0]]
    for user in users:
        _login(cluster, balancer, user)
    events = cluster.audit_until(
        lambda ev: sum(e["action"] == "session.end" for e in ev) == len(users)
    )
    starts = _starts(events)
    # Round robin over two healthy nodes: every other login on each.
    assert Counter(_node(e) for e in starts) == {"a": 2, "b": 2}
    # The vendor's address (from the PROXY header), never the balancer's.
    logins = [e for e in events if e["action"] == "login.success"]
    assert len(logins) == len(users)
    assert {e["source"] for e in starts + logins} == {VENDOR}


def test_after_a_node_dies_new_logins_through_haproxy_all_go_to_the_survivor(
    balanced: tuple[Cluster, HAProxy],
) -> None:
    cluster, balancer = balanced
    first = _session(cluster, balancer, "bob")
    second = _session(cluster, balancer, "carol")
    events = cluster.audit_until(lambda ev: len(_starts(ev)) == 2)
    where = {e["actor"]: _node(e) for e in _starts(events)}
    assert sorted(where.values()) == ["a", "b"]
    on_a, on_b = (first, second) if where["bob"] == "a" else (second, first)
    seen = max(int(str(e["id"])) for e in events)

    cluster.nodes["b"].gateway.server.kill()  # SIGKILL, mid-session
    on_b.ended()  # its TCP connection went with the process
    balancer.wait_states("ssh", {"a": "UP", "b": "DOWN"})  # health checks took b out

    users = ["dave", "bob", "carol"]
    for user in users:
        _login(cluster, balancer, user)
    events = cluster.audit_until(
        lambda ev: len([e for e in _starts(ev) if int(str(e["id"])) > seen]) == len(users)
    )
    after = [e for e in _starts(events) if int(str(e["id"])) > seen]
    assert [(e["actor"], _node(e), e["source"]) for e in after] == [
        (user, "a", VENDOR) for user in users
    ]
    assert on_a.proc.poll() is None  # the survivor's own session goes on
