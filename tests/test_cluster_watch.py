# ruff: noqa: F811 - the cluster fixture imported from test_cluster_nodes is a parameter here
"""Live watch across nodes (decision 0024): two real ``conduit serve`` nodes on one
PostgreSQL, a real OpenSSH session relayed by node b, and the admin watching it through node
a's portal websocket. Node a relays the owner's stream: the watcher sees the session's
output as it is made on b and is told when it ends there, or when b dies. The owner checks
every relayed watch itself: a socket to it without a valid one-time grant is refused and
audited. One Chromium screenshot of the watch page on a (``test-artifacts/portal/``).
"""

from __future__ import annotations

import json
import re
import ssl

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from tests.browser_support import chromium, portal_context, shot, sign_in, watch_csp
from tests.ssh_gateway import ADMIN_PASSWORD, ADMIN_SECRET, Site
from tests.test_cluster_nodes import Cluster, Running, _admin, cluster  # noqa: F401

pytestmark = pytest.mark.realpeer
TICKING = "echo started; for i in $(seq 1 300); do printf 'tick-%s\\r\\n' $i; sleep 0.2; done"
COOKIE = "__Host-conduit_session"


def _insecure() -> ssl.SSLContext:
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE  # the test node's own self-signed certificate
    return tls


def _watch(site: Site, client: httpx.Client, session_id: str) -> ClientConnection:
    base = site.gateway.server.base
    url = base.replace("https://", "wss://") + f"/ws/watch/{session_id}"
    cookie = f"{COOKIE}={client.cookies[COOKIE]}"
    return connect(
        url, ssl=_insecure(), origin=Origin(base), additional_headers={"Cookie": cookie},
        open_timeout=10, max_size=None,
    )  # fmt: skip


def _ticks(data: bytes) -> list[int]:
    return [int(n) for n in re.findall(rb"tick-(\d+)", data)]


def _session_on_b(cluster: Cluster) -> tuple[Running, str]:
    gateway = cluster.nodes["b"].gateway
    proc = gateway.background("bob+target", TICKING, gateway.code("bob"))
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"started"
    cluster.clients.append(Running(proc))
    # The CLI, not a second admin login: TOTP codes are single-use within their 30 s step.
    listing = cluster.nodes["b"].conduit("sessions", "list").stdout.splitlines()
    [listed] = [line.split() for line in listing[1:] if " bob " in f" {line} "]
    session_id = listed[0]
    return cluster.clients[-1], session_id


def test_a_watch_through_node_a_follows_a_session_node_b_relays(cluster: Cluster) -> None:
    a = cluster.nodes["a"]
    running, session_id = _session_on_b(cluster)
    with _admin(a) as (client, csrf), _watch(a, client, session_id) as ws:
        start = json.loads(ws.recv(timeout=10))
        assert start["type"] == "start" and start["cols"] >= 1
        screen = ws.recv(timeout=10)
        assert isinstance(screen, bytes) and b"started" in screen
        seen = max(_ticks(screen), default=0)
        # Output made on b after the watch opened reaches the watcher on a.
        later = b""
        while not any(n > seen + 2 for n in _ticks(later)):
            frame = ws.recv(timeout=10)
            assert isinstance(frame, bytes), frame
            later += frame
        # The session ends on b (killed through b's API): the watcher on a is told.
        killed = client.post(
            f"/api/v1/sessions/{session_id}/kill", json={"reason": "seen enough"},
            headers={"X-CSRF-Token": csrf},
        )  # fmt: skip
        assert killed.status_code == 202, killed.text
        texts = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                frame = ws.recv(timeout=15)
                if isinstance(frame, str):
                    texts.append(json.loads(frame))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
        assert {"type": "end", "reason": "killed: seen enough"} in texts
    assert "session ended: killed: seen enough" in running.ended()
    events = cluster.audit_until(lambda ev: any(e["action"] == "session.watched" for e in ev))
    [watched] = [e for e in events if e["action"] == "session.watched"]
    assert watched["actor"] == "root"
    assert watched["detail"]["via_node"] == "a"  # type: ignore[index]
    assert watched["detail"]["session_id"] == session_id  # type: ignore[index]


def test_the_owner_refuses_a_relayed_watch_without_a_valid_grant(cluster: Cluster) -> None:
    b = cluster.nodes["b"]
    _, session_id = _session_on_b(cluster)
    url = b.gateway.server.base.replace("https://", "wss://") + f"/ws/watch-owner/{session_id}"
    for headers in ({}, {"X-Conduit-Watch-Grant": "forged-" + "x" * 36}):
        with connect(url, ssl=_insecure(), additional_headers=headers, open_timeout=10) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404
    events = cluster.audit_until(lambda ev: sum(e["action"] == "portal.refused" for e in ev) >= 2)
    refused = [e for e in events if e["action"] == "portal.refused"]
    assert len(refused) == 2
    assert all("no valid grant" in e["detail"]["reason"] for e in refused)  # type: ignore[index]


def test_a_relayed_watch_ends_when_the_owner_node_dies(cluster: Cluster) -> None:
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    running, session_id = _session_on_b(cluster)
    with _admin(a) as (client, _), _watch(a, client, session_id) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "start"
        b.gateway.server.kill()  # SIGKILL: the owner's socket breaks, no end frame from it
        texts, shown = [], b""
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                frame = ws.recv(timeout=15)
                if isinstance(frame, str):
                    texts.append(json.loads(frame))
                else:
                    shown += frame
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
        assert texts[-1] == {"type": "end", "reason": "owner node gone"}
        assert b"the session's node went away" in shown
    running.ended()  # the client's connection died with b; this reaps it


def test_a_browser_on_node_a_shows_a_session_node_b_relays(cluster: Cluster) -> None:
    """What the approver sees in Chromium: node a's watch page following b's session."""
    a = cluster.nodes["a"]
    _, session_id = _session_on_b(cluster)
    with chromium() as browser:
        context = portal_context(browser, a.gateway.server.base)
        page = context.new_page()
        csp_errors = watch_csp(page)
        sign_in(page, "root", ADMIN_PASSWORD, ADMIN_SECRET)
        page.goto(f"/sessions/{session_id}/watch")
        rows = page.locator("#term .xterm-rows")
        rows.get_by_text(re.compile(r"tick-\d+")).last.wait_for(timeout=15000)
        first = max(int(n) for n in re.findall(r"tick-(\d+)", rows.inner_text()))
        rows.get_by_text(f"tick-{first + 3}", exact=True).wait_for(timeout=15000)
        assert "relayed by node b, not by this one" not in page.content()
        shot(page, "cross-node-watch")
        context.close()
    assert csp_errors == []
