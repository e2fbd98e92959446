"""Connect, My sessions, My requests and Live sessions pages in process: who sees what,
kill from the page.

The app runs over ASGI on SQLite and PostgreSQL with a settable clock (``api`` fixture of
``test_api_access``); live sessions are rows in the shared ``live_sessions`` table, as the
broker writes them. The real-browser, real-OpenSSH checks are in ``test_portal_sessions``.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re

from gateway.recorder.tables import RecordingRow
from gateway.sessions import store as live_store
from gateway.web.my_sessions import duration_text, notes_of
from tests.test_api_access import Api, User, api
from tests.test_api_sessions import add_session, audit_rows, grant
from tests.test_identity_helpers import env

__all__ = ["api", "env"]
EVIL = 'it\'s "done" <script>alert(1)</script> – ünïcode ✓'


def _no_inline_csp(answer: object) -> None:
    csp = answer.headers["content-security-policy"]  # type: ignore[attr-defined]
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp


async def _portal_refusals(api: Api) -> list[dict[str, object]]:
    return [
        {"actor": r.actor, "target": r.target, **json.loads(r.detail)}
        for r in await audit_rows(api, "portal.refused")
    ]


async def test_a_vendor_gets_404_for_live_sessions_and_it_is_audited(api: Api) -> None:
    alice = await api.login("alice")
    for path in ("/live", "/live/table"):
        answer = await alice.client.get(path)
        assert answer.status_code == 404, path
        assert "Not found" in answer.text
    posted = await alice.client.post("/live/abc/kill", data={"csrf_token": alice.csrf})
    assert posted.status_code == 404
    refusals = await _portal_refusals(api)
    assert [r["target"] for r in refusals] == ["/live", "/live/table", "/live/abc/kill"]
    assert all(r["actor"] == "alice" and r["status"] == 404 for r in refusals)


async def test_live_table_rows_follow_the_per_asset_rules(api: Api) -> None:
    mine = await add_session(api, "alice", "plc-1")
    theirs = await add_session(api, "mallory", "plc-10", node="node-b")
    bob, root = await api.login("bob"), await api.login("root")
    page = await root.client.get("/live")
    assert page.status_code == 200
    _no_inline_csp(page)
    assert 'hx-get="/live/table"' in page.text and 'hx-trigger="every 2s"' in page.text
    table = await root.client.get("/live/table")
    assert table.status_code == 200 and "<tbody" not in table.text and "<html" not in table.text
    for live in (mine, theirs):
        assert f'href="/sessions/{live.session_id}/watch"' in table.text
        assert f'href="/live?kill={live.session_id}#kill"' in table.text
    # bob holds approve on plc-1, not watch: an empty table; watch shows the row, not Kill.
    assert "No live sessions you may see" in (await bob.client.get("/live/table")).text
    await grant(api, "bob", "plc-1", "watch")
    shown = (await bob.client.get("/live/table")).text
    assert mine.session_id in shown and theirs.session_id not in shown
    assert "?kill=" not in shown


async def test_five_hundred_rows_are_one_listing_and_one_decision_per_asset(api: Api) -> None:
    for i in range(500):
        await add_session(api, "alice" if i % 2 else "mallory", "plc-1" if i % 3 else "plc-10")
    await grant(api, "bob", "plc-1", "watch")
    bob = await api.login("bob")
    asked: list[tuple[str, str]] = []
    authz = api.env.services.authz
    original = authz.authorize

    async def counted(user: str, asset: str, action: str):  # type: ignore[no-untyped-def]
        asked.append((asset, action))
        return await original(user, asset, action)

    authz.authorize = counted  # type: ignore[method-assign]
    try:
        table = await bob.client.get("/live/table")
    finally:
        authz.authorize = original  # type: ignore[method-assign]
    assert table.text.count("<tr ") == 333  # the plc-1 rows
    assert len(asked) == len(set(asked)) <= 6  # (2 assets) x (watch, kill, admin) at most


async def _killable(api: Api) -> tuple[User, str]:
    victim = await add_session(api, "alice", "plc-1")
    await grant(api, "bob", "plc-1", "kill")
    return await api.login("bob"), victim.session_id


async def test_kill_without_csrf_is_403_and_audited(api: Api) -> None:
    bob, session_id = await _killable(api)
    answer = await bob.client.post(f"/live/{session_id}/kill", data={"reason": "x"})
    assert answer.status_code == 403
    [refusal] = await _portal_refusals(api)
    assert refusal["status"] == 403 and "CSRF" in str(refusal["reason"])
    async with api.env.services.sessions() as db:
        row = await live_store.get(db, session_id)
        assert row is not None and row.kill_reason is None


async def test_kill_asks_for_a_code_when_the_factor_is_old_and_keeps_the_reason(api: Api) -> None:
    bob, session_id = await _killable(api)
    path = f"/live/{session_id}/kill"
    form = await bob.client.get(f"/live?kill={session_id}")
    assert f'action="{path}"' in form.text and 'name="code"' not in form.text
    # A reason with a line break is refused with a message, and nothing is stored.
    refused = await bob.client.post(path, data={"reason": "two\nlines", "csrf_token": bob.csrf})
    assert refused.status_code == 422 and "line breaks" in refused.text
    api.env.clock.advance(6 * 60)  # the login's second factor is now older than 5 minutes
    asked = await bob.client.post(path, data={"reason": EVIL, "csrf_token": bob.csrf})
    assert asked.status_code == 200 and 'name="code"' in asked.text
    assert "needs a fresh code" in asked.text
    kept = re.search(r'name="reason" value="([^"]*)"', asked.text)
    assert kept is not None and html.unescape(kept.group(1)) == EVIL  # kept, escaped
    assert "<script>alert" not in asked.text
    async with api.env.services.sessions() as db:
        row = await live_store.get(db, session_id)
        assert row is not None and row.kill_reason is None
    body = {"reason": EVIL, "code": api.code("bob"), "csrf_token": bob.csrf}
    done = await bob.client.post(path, data=body)
    assert done.status_code == 200 and "Kill requested" in done.text
    async with api.env.services.sessions() as db:
        row = await live_store.get(db, session_id)
        assert row is not None and (row.kill_reason, row.kill_requested_by) == (EVIL, "bob")
    [requested] = await audit_rows(api, "session.kill_requested")
    assert json.loads(requested.detail)["note"] == EVIL
    again = await bob.client.post(path, data={"reason": "again", "csrf_token": bob.csrf})
    assert again.status_code == 409 and "already requested" in again.text
    assert any(r["status"] == 409 for r in await _portal_refusals(api))


async def test_kill_of_a_session_one_may_only_watch_or_that_is_gone(api: Api) -> None:
    victim = await add_session(api, "alice", "plc-1")
    await grant(api, "bob", "plc-1", "watch")
    bob = await api.login("bob")
    for session_id, status in ((victim.session_id, 403), ("gone-0000", 404)):
        answer = await bob.client.post(
            f"/live/{session_id}/kill", data={"reason": "stop", "csrf_token": bob.csrf}
        )
        assert answer.status_code == status
        assert 'role="alert"' in answer.text
    statuses = [r["status"] for r in await _portal_refusals(api)]
    assert statuses == [403, 404]


async def test_kill_form_asked_for_a_session_one_may_not_kill_is_audited(api: Api) -> None:
    """``/live?kill=ID`` shows no form for a session one may not kill, and says so in the
    audit log like every other refusal (a missing one and another's alike: not found)."""
    watched = await add_session(api, "alice", "plc-1")
    hidden = await add_session(api, "mallory", "plc-10")
    await grant(api, "bob", "plc-1", "watch")
    bob = await api.login("bob")
    for session_id in (watched.session_id, hidden.session_id, "gone-0000"):
        answer = await bob.client.get(f"/live?kill={session_id}")
        assert answer.status_code == 200 and 'name="reason"' not in answer.text
    texts = [(await bob.client.get(f"/live?kill={s}")).text for s in (hidden.session_id, "x-1")]
    assert all("not found or not permitted" in t for t in texts)
    refusals = await _portal_refusals(api)
    assert [(r["target"], r["status"]) for r in refusals[:3]] == [
        ("/live", 403), ("/live", 404), ("/live", 404)
    ]  # fmt: skip
    assert hidden.session_id in str(refusals[1]["reason"])


async def test_my_sessions_lists_own_sessions_and_survives_a_broken_row(api: Api) -> None:
    now = api.env.clock.now
    services = api.env.services

    def recording(rid: str, user: str, **fields: object) -> RecordingRow:
        values: dict[str, object] = dict(
            id=rid, kind="terminal", username=user, asset="plc-1", protocol="ssh",
            session_id=f"s-{rid}", node="n", data_key_id="k", state="closed",
            started_at=now - dt.timedelta(minutes=30), ended_at=now - dt.timedelta(minutes=28),
            end_reason="killed", size_bytes=1,
        )  # fmt: skip
        values.update(fields)
        return RecordingRow(**values)

    async with services.sessions() as db, db.begin():
        db.add(recording("r1", "alice"))
        db.add(recording("r2", "alice", state="open", ended_at=None, end_reason=None))
        # Broken: ends before it starts, no end reason though closed.
        db.add(recording("r3", "alice", ended_at=now - dt.timedelta(hours=5), end_reason=None))
        db.add(recording("r4", "mallory", asset="secret-asset"))
    await services.audit.record(
        actor="alice", action="session.end", result="success", target="plc-1",
        detail={"session_id": "s-r1", "reason": "killed", "note": EVIL},
    )  # fmt: skip
    alice = await api.login("alice")
    page = await alice.client.get("/sessions")
    assert page.status_code == 200, page.text
    _no_inline_csp(page)
    assert "secret-asset" not in page.text
    assert page.text.count("<tr><td>plc-1</td>") == 3
    assert "live now" in page.text and "2 min 00 s" in page.text
    shown = re.search(r'class="kill-note">([^<]*)<', page.text)
    assert shown is not None and html.unescape(shown.group(1)) == EVIL
    assert "<script>alert" not in page.text
    assert "unknown" in page.text  # the broken row's duration and end reason
    # End reasons in words, the code beside them.
    assert 'ended by an operator <code class="note">killed</code>' in page.text
    assert (await (await api.login("bob")).client.get("/sessions")).status_code == 404


def test_duration_and_notes_read_defensively() -> None:
    assert duration_text(3725) == "1 h 02 min" and duration_text(-1) == "unknown"
    assert duration_text(65) == "1 min 05 s" and duration_text(9) == "9 s"
    details = ['{"session_id": "a", "note": "n"}', "not json", "[1]", '{"session_id": 3}']
    assert notes_of(details) == {"a": "n"}


async def test_connect_page_codes_only_for_reachable_assets(api: Api) -> None:
    await grant(api, "alice", "plc-1", "ssh")
    await grant(api, "alice", "plc-1", "sftp-read")
    await grant(api, "alice", "plc-1", "tunnel:502")
    alice = await api.login("alice")
    page = await alice.client.get("/connect")
    assert page.status_code == 200
    _no_inline_csp(page)
    assert "plc-10" not in page.text
    port = api.env.settings.ssh_listen.port
    option = "-o PreferredAuthentications=keyboard-interactive"
    for line in (
        f"ssh -p {port} {option} alice+plc-1@testserver",
        f"scp -P {port} {option} ./file.txt alice+plc-1@testserver:/tmp/",
        f"sftp -P {port} {option} alice+plc-1@testserver",
        f"ssh -p {port} {option} -N -L 127.0.0.1:15502:localhost:502 alice+plc-1@testserver",
    ):
        assert f">{line}</code>" in page.text, line
    assert 'href="/connect/plc-1/terminal"' in page.text
    assert '<script type="module" src="/static/copy.js">' in page.text
    refused = await alice.client.post("/connect/plc-10/code", data={"csrf_token": alice.csrf})
    assert refused.status_code == 404 and "not found or not permitted" in refused.text
    [audited] = await audit_rows(api, "connect_code.refused")
    assert audited.target == "plc-10"
    made = await alice.client.post("/connect/plc-1/code", data={"csrf_token": alice.csrf})
    assert made.status_code == 200
    found = re.search(r'class="connect-code"[^>]*>([A-Za-z0-9_-]{24})<', made.text)
    assert found is not None
    assert found.group(1) not in (await alice.client.get("/connect")).text
    no_csrf = await alice.client.post("/connect/plc-1/code")
    assert no_csrf.status_code == 403
    assert (await (await api.login("bob")).client.get("/connect")).status_code == 404


async def test_my_requests_announces_only_an_own_filed_request(api: Api) -> None:
    await grant(api, "alice", "plc-1", "request")
    mine = await api.env.services.requests.create(
        "alice", ["plc-1"], ["ssh"], "firmware update", api.env.clock.now,
        dt.timedelta(minutes=30),
    )  # fmt: skip
    alice = await api.login("alice")
    shown = await alice.client.get(f"/access/requests?filed={mine.request_id}")
    assert f"Request <code>{mine.request_id}</code> was filed" in shown.text
    for crafted in ("r-forged-0001", "x" * 80):
        page = await alice.client.get(f"/access/requests?filed={crafted}")
        assert page.status_code == 200 and "was filed" not in page.text
