"""The live sessions JSON API: who sees which session, kill with step-up, and a real kill.

In-process tests run the app over ASGI on SQLite and PostgreSQL with rows in the shared
``live_sessions`` table; the end-to-end test kills a real OpenSSH session through a real
``conduit serve`` process, over HTTPS, as a logged-in admin.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyotp
import pytest
from sqlalchemy import select

from gateway.audit.tables import AuditEventRow
from gateway.cli.serve import publish_byte_counts
from gateway.identity.accounts import create_user
from gateway.sessions import store as live_store
from gateway.sessions.live import LiveSession
from tests.ssh_gateway import Site, admin_site, portal_login
from tests.sshd_target import SSHDTarget
from tests.test_api_access import Api, api
from tests.test_identity_helpers import env

__all__ = ["api", "env"]
NOT_FOUND = "not found or not permitted"


async def _never(reason: str) -> None:
    raise AssertionError("the API never ends a session itself")


async def add_session(api: Api, user: str, asset: str, node: str = "node-a") -> LiveSession:
    """A live session as the broker registers it: the row every process sees."""
    services = api.env.services
    live = LiveSession(
        session_id=secrets.token_urlsafe(12),
        node=node,
        username=user,
        asset=asset,
        protocol="ssh",
        started_at=api.env.clock.now,
        valid_until=api.env.clock.now + dt.timedelta(hours=1),
        kill=_never,
    )
    async with services.sessions() as db, db.begin():
        await live_store.add(db, live)
    api.env.clock.advance(1)  # listing is ordered by start
    return live


async def grant(api: Api, user: str, asset: str, action: str) -> None:
    await api.env.services.authz.add_grant(
        subject_kind="user", subject=user, object_kind="asset", obj=asset, action=action,
        actor="test",
    )  # fmt: skip


async def add_auditor(api: Api) -> None:
    services = api.env.services
    async with services.sessions() as db, db.begin():
        await create_user(
            db, username="audrey", roles=["auditor"], now=api.env.clock.now,
            master_key=services.keys.master_key, password="Audrey-Reads-Everything-5",
            totp_secret=pyotp.random_base32(), status="active",
        )  # fmt: skip


def ids(answer: httpx.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [s["id"] for s in answer.json()]


async def audit_rows(api: Api, action: str) -> list[AuditEventRow]:
    async with api.env.services.sessions() as db:
        rows = await db.scalars(
            select(AuditEventRow).where(AuditEventRow.action == action).order_by(AuditEventRow.id)
        )
        return list(rows)


async def test_each_caller_sees_the_sessions_they_may_watch(api: Api) -> None:
    mine = await add_session(api, "alice", "plc-1")
    theirs = await add_session(api, "mallory", "plc-10", node="node-b")
    await add_auditor(api)
    alice, mallory = await api.login("alice"), await api.login("mallory")
    bob, root = await api.login("bob"), await api.login("root")

    assert ids(await root.client.get("/api/v1/sessions")) == [mine.session_id, theirs.session_id]
    assert ids(await alice.client.get("/api/v1/sessions")) == [mine.session_id]
    assert ids(await mallory.client.get("/api/v1/sessions")) == [theirs.session_id]
    # bob may approve on plc-1 but not watch: approving is not watching.
    assert ids(await bob.client.get("/api/v1/sessions")) == []
    await grant(api, "bob", "plc-1", "watch")
    assert ids(await bob.client.get("/api/v1/sessions")) == [mine.session_id]
    async with api.client() as automation:
        as_auditor = await automation.get(
            "/api/v1/sessions", headers=await api.token("audrey", ["read"])
        )
        assert ids(as_auditor) == [mine.session_id, theirs.session_id]
        no_scope = await automation.get(
            "/api/v1/sessions", headers=await api.token("root", ["requests"])
        )
        assert no_scope.status_code == 403
        assert (await automation.get("/api/v1/sessions")).status_code == 401

    [shown] = (await root.client.get("/api/v1/sessions")).json()[1:]
    assert shown == {
        "id": theirs.session_id,
        "user": "mallory",
        "asset": "plc-10",
        "protocol": "ssh",
        "started_at": shown["started_at"],
        "valid_until": shown["valid_until"],
        "bytes_up": 0,
        "bytes_down": 0,
        "node": "node-b",
        "kill_reason": None,
    }
    assert dt.datetime.fromisoformat(shown["started_at"]) == theirs.started_at
    assert dt.datetime.fromisoformat(shown["valid_until"]) == theirs.valid_until


async def test_one_session_is_shown_only_to_those_who_may_see_it(api: Api) -> None:
    mine = await add_session(api, "alice", "plc-1")
    alice, mallory, bob = [await api.login(u) for u in ("alice", "mallory", "bob")]
    path = f"/api/v1/sessions/{mine.session_id}"
    own = await alice.client.get(path)
    assert own.status_code == 200 and own.json()["user"] == "alice"
    for who, where in ((mallory, path), (bob, path), (alice, "/api/v1/sessions/nope-0000")):
        refused = await who.client.get(where)
        assert refused.status_code == 404 and refused.json()["detail"] == NOT_FOUND
    for odd in ("x" * 41, "..%2f..", "a%20b"):
        assert (await alice.client.get(f"/api/v1/sessions/{odd}")).status_code in (404, 422)
    refusals = await api.refusals()
    assert {"mallory", "bob", "alice"} <= {r.actor for r in refusals}
    reasons = [json.loads(r.detail)["reason"] for r in refusals]
    assert any("no watch capability" in r for r in reasons)
    assert any("no live session" in r for r in reasons)


async def test_kill_needs_the_capability_and_a_fresh_second_factor(api: Api) -> None:
    victim = await add_session(api, "alice", "plc-1")
    alice, bob = await api.login("alice"), await api.login("bob")
    path = f"/api/v1/sessions/{victim.session_id}/kill"
    body = {"reason": "unplanned change"}

    own = await alice.client.post(path, json=body, headers=alice.headers())
    assert own.status_code == 403, own.text  # seeing one's session is not killing it
    await grant(api, "bob", "plc-1", "watch")
    watcher = await bob.client.post(path, json=body, headers=bob.headers())
    assert watcher.status_code == 403 and "kill" in watcher.json()["detail"]
    await grant(api, "bob", "plc-1", "kill")
    assert (await bob.client.post(path, json=body)).status_code == 403  # no CSRF token
    async with api.client() as automation:
        by_token = await automation.post(
            path, json=body, headers=await api.token("bob", ["kill", "read"])
        )
        assert by_token.status_code == 403 and "API tokens" in by_token.json()["detail"]
    api.env.clock.advance(6 * 60)  # past the step-up limit
    late = await bob.client.post(path, json=body, headers=bob.headers())
    assert late.status_code == 403 and "step-up" in late.json()["detail"]
    async with api.env.services.sessions() as db:
        row = await live_store.get(db, victim.session_id)
        assert row is not None and row.kill_reason is None

    stepped = await bob.client.post(
        "/account/step-up", data={"code": api.code("bob"), "csrf_token": bob.csrf}
    )
    assert stepped.status_code == 303, stepped.text
    done = await bob.client.post(path, json=body, headers=bob.headers())
    assert done.status_code == 202, done.text
    assert done.json()["kill_reason"] == "unplanned change"
    async with api.env.services.sessions() as db:
        row = await live_store.get(db, victim.session_id)
        assert row is not None
        assert (row.kill_reason, row.kill_requested_by) == ("unplanned change", "bob")
        # What the owner node reads when it polls: the CLI's mechanism, the API's request.
        assert await live_store.kill_requests(db, "node-a") == [
            (victim.session_id, "unplanned change", "bob")
        ]
    again = await bob.client.post(path, json=body, headers=bob.headers())
    assert again.status_code == 409
    gone = await bob.client.post(
        "/api/v1/sessions/nope-0000/kill", json=body, headers=bob.headers()
    )
    assert gone.status_code == 404
    [requested] = await audit_rows(api, "session.kill_requested")
    assert (requested.actor, requested.target) == ("bob", victim.session_id)
    assert json.loads(requested.detail)["note"] == "unplanned change"
    assert {r.actor for r in await api.refusals()} >= {"alice", "bob"}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"reason": ""},
        {"reason": "   "},
        {"reason": "x" * 65},
        {"reason": "bell\x07"},
        {"reason": "two\nlines"},
        {"reason": 5},
        {"reason": "ok", "extra": 1},
        [],
    ],
)
async def test_kill_reasons_are_short_printable_text(api: Api, body: object) -> None:
    victim = await add_session(api, "alice", "plc-1")
    root = await api.login("root")
    sent = await root.client.post(
        f"/api/v1/sessions/{victim.session_id}/kill", json=body, headers=root.headers()
    )
    assert sent.status_code == 422, sent.text
    assert (await api.refusals())[-1].actor == "root"
    async with api.env.services.sessions() as db:
        row = await live_store.get(db, victim.session_id)
        assert row is not None and row.kill_reason is None


async def test_byte_counts_are_published_by_the_owner(api: Api) -> None:
    services = api.env.services
    live = await add_session(api, "alice", "plc-1", node=services.node)
    services.live.register(live)
    ended = await add_session(api, "mallory", "plc-10", node=services.node)
    services.live.register(ended)
    async with services.sessions() as db, db.begin():
        await live_store.remove(db, ended.session_id)  # ended between two polls
    live.bytes_up, live.bytes_down = 1200, 345_678
    published = await publish_byte_counts(services, {})
    assert published[live.session_id] == (1200, 345_678)
    root = await api.login("root")
    [shown] = (await root.client.get("/api/v1/sessions")).json()
    assert (shown["bytes_up"], shown["bytes_down"]) == (1200, 345_678)
    live.bytes_down += 10
    published = await publish_byte_counts(services, published)
    shown = (await root.client.get(f"/api/v1/sessions/{live.session_id}")).json()
    assert shown["bytes_down"] == 345_688


async def test_endpoints_are_in_the_openapi_schema(api: Api) -> None:
    async with api.client() as client:
        schema = (await client.get("/openapi.json")).json()
    paths = schema["paths"]
    assert "get" in paths["/api/v1/sessions"]
    assert "get" in paths["/api/v1/sessions/{session_id}"]
    assert "post" in paths["/api/v1/sessions/{session_id}/kill"]
    kill_in = schema["components"]["schemas"]["KillIn"]
    assert kill_in["additionalProperties"] is False
    assert kill_in["properties"]["reason"]["maxLength"] == 64
    assert set(schema["components"]["schemas"]["SessionOut"]["properties"]) == {
        "id", "user", "asset", "protocol", "started_at", "valid_until", "bytes_up",
        "bytes_down", "node", "kill_reason",
    }  # fmt: skip


# -- end to end: a real gateway process, a real OpenSSH session, a kill over HTTPS ---------

@pytest.fixture
def site(sshd: SSHDTarget, tmp_path: Path, database_url: str) -> Iterator[Site]:
    """A real ``conduit serve`` on SQLite or PostgreSQL in front of the real sshd."""
    with admin_site(sshd, tmp_path, {"CONDUIT_DATABASE__URL": database_url}, ("bob",)) as made:
        yield made


def _bytes_down_listed(site: Site, session_id: str, deadline_s: float = 10) -> int:
    """BYTES DOWN of the session in ``conduit sessions list`` once the owner published it."""
    end = time.monotonic() + deadline_s
    while True:
        listing = site.conduit("sessions", "list").stdout.splitlines()
        [row] = [line.split() for line in listing if line.startswith(session_id)]
        if int(row[6]) > 0 or time.monotonic() > end:
            return int(row[6])
        time.sleep(0.2)


def test_kill_over_the_api_ends_a_real_ssh_session(site: Site) -> None:
    gateway = site.gateway
    proc = gateway.background("bob+target", "echo started; sleep 60", gateway.code("bob"))
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"started"
        with gateway.server.client() as client:
            csrf = portal_login(client)
            [listed] = client.get("/api/v1/sessions").json()
            session_id = listed["id"]
            assert (listed["user"], listed["asset"], listed["protocol"]) == ("bob", "target", "ssh")
            # Byte counts live in the owner's memory; it publishes them as it polls.
            assert _bytes_down_listed(site, session_id) > 0
            assert client.get(f"/api/v1/sessions/{session_id}").json()["bytes_down"] > 0
            killed = client.post(
                f"/api/v1/sessions/{session_id}/kill",
                json={"reason": "api-stop 42"},
                headers={"X-CSRF-Token": csrf},
            )
            assert killed.status_code == 202, killed.text
            asked = time.monotonic()
            code = proc.wait(timeout=10)
            elapsed = time.monotonic() - asked
            _, err = proc.communicate(timeout=10)
            gone = client.get(f"/api/v1/sessions/{session_id}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert code != 0
    assert elapsed < 5  # within a poll (0.5 s) on an idle machine; generous for CI
    assert "session ended: killed: api-stop 42" in err.decode()
    assert gone.status_code == 404
    events = site.audit_until("session.end")
    [requested] = [e for e in events if e["action"] == "session.kill_requested"]
    [kill] = [e for e in events if e["action"] == "session.kill"]
    [end] = [e for e in events if e["action"] == "session.end"]
    assert requested["actor"] == kill["actor"] == "root"
    assert end["actor"] == "bob"
    # The end reason is the fixed code; the person's text is a separate note, verbatim.
    for event in (kill, end):
        assert event["detail"]["reason"] == "killed"  # type: ignore[index]
    for event in (requested, kill, end):
        assert event["detail"]["note"] == "api-stop 42"  # type: ignore[index]
    assert end["detail"]["killed_by"] == "root"  # type: ignore[index]
    # The recording was closed with its footer, and carries the note as a marker.
    recording_id = str(end["detail"]["recording_id"])  # type: ignore[index]
    verified = site.conduit("recordings", "verify", recording_id)
    assert verified.stdout.startswith(f"{recording_id} intact"), verified.stdout
    assert "end reason killed" in verified.stdout
    cast = site.conduit("recordings", "export", recording_id).stdout.splitlines()
    markers = [json.loads(line)[2] for line in cast[1:] if json.loads(line)[1] == "m"]
    assert markers[-1] == "killed by root: api-stop 42"  # after the exec's command line
    assert markers[:-1] == [m for m in markers if m.startswith("command: ")]
    assert gateway.server.proc.poll() is None
