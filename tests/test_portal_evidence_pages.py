"""Session history, player, cast and search pages in process: filters, pages, 404s, audit.

The app runs over ASGI on SQLite and PostgreSQL with a settable clock (``api`` fixture of
``test_api_access``). Catalog rows are inserted directly for the history's filters and
pages; the player, cast and search read real recordings written by the recordings service.
The real-browser acceptance (search, open the hit, the word on the player's screen) is in
``test_portal_evidence``.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re

import pyotp
from sqlalchemy import update

from gateway.db.models import User as UserRow
from gateway.identity.accounts import create_user
from gateway.recorder.service import SessionInfo
from gateway.recorder.tables import RecordingRow
from gateway.web.history import PAGE
from gateway.web.replay import typed_text
from gateway.web.search_pages import pieces_of
from recordings import Kind
from recordings.terminal import TerminalEvent, resize_payload
from recordings.tunnel import TunnelEvent
from tests.test_api_access import CSRF_RE, Api, User, api
from tests.test_api_sessions import audit_rows
from tests.test_identity_helpers import env

__all__ = ["api", "env"]
AUDITOR_PASSWORD = "Audrey-Reads-Everything-5"
AUDITOR_SECRET = pyotp.random_base32()
EVIL = 'it\'s "done" <script>alert(1)</script>'


async def auditor(api: Api) -> User:
    services, clock = api.env.services, api.env.clock
    async with services.sessions() as db, db.begin():
        await create_user(
            db, username="audrey", roles=["auditor"], now=clock.now,
            master_key=services.keys.master_key, password=AUDITOR_PASSWORD,
            totp_secret=AUDITOR_SECRET, status="active",
        )  # fmt: skip
    client = api.client()
    csrf = CSRF_RE.search((await client.get("/login")).text)
    assert csrf
    body = {"username": "audrey", "password": AUDITOR_PASSWORD, "csrf_token": csrf.group(1)}
    assert (await client.post("/login", data=body)).status_code == 303
    page = await client.get("/login/code")
    code = pyotp.TOTP(AUDITOR_SECRET).generate_otp(int(clock.now.timestamp()) // 30)
    csrf = CSRF_RE.search(page.text)
    assert csrf
    done = await client.post("/login/code", data={"code": code, "csrf_token": csrf.group(1)})
    assert done.status_code == 303
    return User(client, "")


def row(rid: str, user: str, started: dt.datetime, **fields: object) -> RecordingRow:
    values: dict[str, object] = dict(
        id=rid, kind="terminal", username=user, asset="plc-1", protocol="ssh",
        session_id=f"s-{rid}", node="n", data_key_id="k", state="closed", started_at=started,
        ended_at=started + dt.timedelta(minutes=2), end_reason="closed", size_bytes=1,
        integrity="intact", integrity_detail="", indexed_lines=0,
    )  # fmt: skip
    values.update(fields)
    return RecordingRow(**values)


async def add_rows(api: Api, *rows: RecordingRow) -> None:
    async with api.env.services.sessions() as db, db.begin():
        db.add_all(rows)


async def record_terminal(api: Api, user: str, output: bytes, typed: bytes = b"") -> str:
    writer = await api.env.services.recordings.start(
        SessionInfo(user, "plc-1", "ssh", f"sess-{user}"),
        kind=Kind.TERMINAL,
        on_failure=lambda reason: None,
    )
    writer.record(TerminalEvent.RESIZE, resize_payload(100, 30))
    if typed:
        writer.record(TerminalEvent.INPUT, typed)
    writer.record(TerminalEvent.OUTPUT, output)
    writer.record(TerminalEvent.MARKER, b"killed by bob: wrong asset")
    await api.env.services.recordings.close(writer, "killed")
    return writer.recording_id


def listed(answer_text: str) -> list[str]:
    return re.findall(r'href="/evidence/recordings/([0-9a-z-]+)"', answer_text)


async def test_vendors_and_approvers_get_404_everywhere_and_it_is_audited(api: Api) -> None:
    real = await record_terminal(api, "alice", b"hello\r\n")
    guessed = "0" * 32
    paths = [
        "/evidence", "/evidence/search?q=hello", f"/evidence/recordings/{real}",
        f"/evidence/recordings/{real}/cast", f"/evidence/recordings/{guessed}",
        f"/evidence/recordings/{guessed}/cast",
    ]  # fmt: skip
    for name in ("alice", "bob"):
        person = await api.login(name)
        for path in paths:
            answer = await person.client.get(path)
            assert answer.status_code == 404, (name, path)
            assert "hello" not in answer.text and "Not found" in answer.text
    refusals = await audit_rows(api, "portal.refused")
    assert len(refusals) == 2 * len(paths)
    assert {r.actor for r in refusals} == {"alice", "bob"}
    assert not await audit_rows(api, "recording.viewed")
    assert not await audit_rows(api, "recording.search")


async def test_history_filters_each_field(api: Api) -> None:
    now = api.env.clock.now
    services = api.env.services
    await services.authz.add_zone("cell-3", actor="test")
    await services.authz.add_asset("hmi-7", "10.0.0.7", 22, "ssh", actor="test", zones=("cell-3",))
    async with services.sessions() as db, db.begin():
        await db.execute(
            update(UserRow).where(UserRow.username == "mallory").values(organisation="Acme")
        )
    hour = dt.timedelta(hours=1)
    await add_rows(
        api,
        row("r-alice", "alice", now - 5 * hour),
        row("r-mallory", "mallory", now - 4 * hour, end_reason="killed"),
        row("r-hmi", "alice", now - 3 * hour, asset="hmi-7", protocol="sftp"),
        row("r-live", "alice", now - 2 * hour, state="open", ended_at=None, end_reason=None),
        row("r-old", "alice", now - 100 * hour, integrity="tampered", integrity_detail=EVIL),
    )
    audrey = await auditor(api)

    async def ids(query: str) -> list[str]:
        answer = await audrey.client.get(f"/evidence?{query}")
        assert answer.status_code == 200, answer.text
        return listed(answer.text)

    assert await ids("") == ["r-live", "r-hmi", "r-mallory", "r-alice", "r-old"]
    assert await ids("user=mallory") == ["r-mallory"]
    assert await ids("org=Acme") == ["r-mallory"]
    assert await ids("asset=hmi-7") == await ids("zone=cell-3") == ["r-hmi"]
    assert await ids("protocol=sftp") == ["r-hmi"]
    assert await ids("end=killed") == ["r-mallory"]
    assert await ids("end=live") == ["r-live"]
    since = (now - 4.5 * hour).strftime("%Y-%m-%dT%H:%M")
    until = (now - 2.5 * hour).strftime("%Y-%m-%dT%H:%M")
    assert await ids(f"since={since}&until={until}") == ["r-hmi", "r-mallory"]
    assert await ids("user=alice&end=closed&asset=plc-1") == ["r-alice", "r-old"]
    page = (await audrey.client.get("/evidence")).text
    assert 'href="/evidence/audit?session_id=s-r-alice"' in page
    assert 'class="integrity integrity-tampered"' in page
    # End reasons in words beside their code; a code without words is shown as it is.
    assert 'ended by an operator <code class="note">killed</code>' in page
    assert "ended normally <code" in page
    assert "<code>killed</code>" not in page
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


async def test_history_refuses_bad_filters_with_a_message(api: Api) -> None:
    audrey = await auditor(api)
    cases = {
        "since=yesterday": "Started from: not a date",
        "since=1999-12-31": "Started from: must be between 2000-01-01",
        "until=2999-01-01": "Started before: must be between",
        "since=2024-02-02&until=2024-02-01": "must be before",
        "user=" + "x" * 65: "User: not a valid value",
        "end=KILLED;drop": "End reason: not a valid value",
        "after=nonsense": "Page position",
        "after=" + "9" * 40 + "-abc": "Page position",
    }
    for query, message in cases.items():
        answer = await audrey.client.get(f"/evidence?{query}")
        assert answer.status_code == 422, query
        assert message in html.unescape(answer.text), query
        assert 'role="alert"' in answer.text and "/evidence/recordings/" not in answer.text


async def test_history_pages_follow_each_other_without_gaps_or_repeats(api: Api) -> None:
    now = api.env.clock.now
    same = now - dt.timedelta(hours=1)  # ties on started_at are ordered by id
    rows = [row(f"r{i:04d}", "alice", same if i % 3 == 0 else now - dt.timedelta(minutes=i))
            for i in range(2 * PAGE + 7)]  # fmt: skip
    await add_rows(api, *rows)
    audrey = await auditor(api)
    seen: list[str] = []
    query = "user=alice"
    pages = 0
    while True:
        answer = await audrey.client.get(f"/evidence?{query}")
        assert answer.status_code == 200
        seen += listed(answer.text)
        pages += 1
        found = re.search(r'href="/evidence\?([^"]+)" rel="next"', answer.text)
        if found is None:
            break
        query = html.unescape(found.group(1))
        assert "user=alice" in query
    assert pages == 3
    expected = sorted(rows, key=lambda r: (r.started_at, r.id), reverse=True)
    assert seen == [r.id for r in expected]


async def test_player_page_and_cast_are_audited_once_per_view(api: Api) -> None:
    recording_id = await record_terminal(api, "alice", b"zebra crossing\r\n", typed=b"lx\x7fs -l\r")
    audrey = await auditor(api)
    page = await audrey.client.get(f"/evidence/recordings/{recording_id}?t=0.5&hit=1")
    assert page.status_code == 200, page.text
    csp = page.headers["content-security-policy"]
    assert "'wasm-unsafe-eval'" in csp and "'unsafe-eval'" not in csp and "unsafe-inline" not in csp
    assert 'src="/assets/asciinema-player.min.js"' in page.text
    cast_url = html.unescape(re.search(r'data-cast="([^"]+)"', page.text).group(1))  # type: ignore[union-attr]
    assert "hit=0.500000" in cast_url
    viewed = await audit_rows(api, "recording.viewed")
    assert [(v.actor, v.target) for v in viewed] == [("audrey", recording_id)]
    assert json.loads(viewed[0].detail)["session_id"] == "sess-alice"
    cast = await audrey.client.get(cast_url)
    assert cast.status_code == 200 and cast.headers["content-type"].startswith(
        "application/x-asciicast"
    )
    lines = [json.loads(line) for line in cast.text.splitlines()]
    assert lines[0]["version"] == 2 and (lines[0]["width"], lines[0]["height"]) == (100, 30)
    events = lines[1:]
    assert any(e[1] == "o" and "zebra crossing" in e[2] for e in events)
    assert any(e[1] == "i" for e in events)
    labels = [e[2] for e in events if e[1] == "m"]
    assert "typed: ls -l" in labels and "search hit" in labels
    assert "killed by bob: wrong asset" in labels
    assert len(await audit_rows(api, "recording.viewed")) == 1  # the page's pass covered it
    again = await audrey.client.get(f"/evidence/recordings/{recording_id}/cast")
    assert again.status_code == 200 and "zebra" in again.text
    assert len(await audit_rows(api, "recording.viewed")) == 2  # no pass: its own event


async def test_player_offset_is_bounded_and_a_missing_id_is_404(api: Api) -> None:
    recording_id = await record_terminal(api, "alice", b"hello\r\n")
    audrey = await auditor(api)
    for bad in ("-1", "nan", "1e99", "abc"):
        answer = await audrey.client.get(f"/evidence/recordings/{recording_id}?t={bad}")
        assert answer.status_code == 200 and 'data-start="0.0"' in answer.text
        assert "playing from the start" in answer.text
    for path in ("/evidence/recordings/" + "f" * 32, "/evidence/recordings/../etc",
                 "/evidence/recordings/" + "f" * 32 + "/cast"):  # fmt: skip
        assert (await audrey.client.get(path)).status_code == 404


async def test_a_tunnel_recording_is_a_table_not_a_player(api: Api) -> None:
    services = api.env.services
    writer = await services.recordings.start(
        SessionInfo("alice", "plc-1", "tunnel", "sess-t"), kind=Kind.TUNNEL,
        on_failure=lambda reason: None,
    )  # fmt: skip
    writer.record(TunnelEvent.MARKER, b"connected 10.0.0.1:502")
    for payload in (b"ab", b"cde"):
        writer.record(TunnelEvent.TO_ASSET, payload)
    writer.record(TunnelEvent.FROM_ASSET, b"xyz1")
    writer.record(TunnelEvent.MARKER, EVIL.encode())
    await services.recordings.close(writer, "closed")
    audrey = await auditor(api)
    page = await audrey.client.get(f"/evidence/recordings/{writer.recording_id}")
    assert page.status_code == 200
    assert "asciinema" not in page.text and "wasm" not in page.headers["content-security-policy"]
    cells = [
        (a, html.unescape(b))
        for a, b in re.findall(r"<td>([^<]*)</td><td>([^<]*)</td></tr>", page.text)
    ]
    assert cells == [
        ("marker", "connected 10.0.0.1:502"), ("to asset", "5 bytes"),
        ("from asset", "4 bytes"), ("marker", EVIL),
    ]  # fmt: skip
    assert len(await audit_rows(api, "recording.viewed")) == 1
    cast = await audrey.client.get(f"/evidence/recordings/{writer.recording_id}/cast")
    assert cast.status_code == 404


async def test_search_shows_hits_escaped_and_links_to_the_offset(api: Api) -> None:
    recording_id = await record_terminal(api, "alice", f"{EVIL} quokka7 here\r\n".encode())
    audrey = await auditor(api)
    answer = await audrey.client.get("/evidence/search?q=quokka7")
    assert answer.status_code == 200
    assert "<mark>quokka7</mark>" in answer.text and "<script>alert" not in answer.text
    link = re.search(
        rf'href="(/evidence/recordings/{recording_id}\?t=[0-9.]+&amp;hit=1)"', answer.text
    )
    assert link is not None
    assert "<td>alice</td><td>plc-1</td>" in answer.text
    [searched] = await audit_rows(api, "recording.search")
    assert searched.actor == "audrey" and "quokka7" in searched.detail
    nothing = await audrey.client.get("/evidence/search?q=zzzunseen")
    assert nothing.status_code == 200 and "No results" in nothing.text
    for query, message in (("x" * 201, "too long"), ("!!! ---", "at least one word"),
                           (" ".join(["w"] * 17), "Too many words")):  # fmt: skip
        refused = await audrey.client.get("/evidence/search", params={"q": query})
        assert refused.status_code == 422 and message in refused.text
    assert len(await audit_rows(api, "recording.search")) == 2  # refused queries never ran


def test_snippet_pieces_and_typed_lines() -> None:
    assert pieces_of("a [Word] [b] c", ["word"]) == [
        ("a ", False),
        ("Word", True),
        (" [b] c", False),
    ]
    assert pieces_of("<b>", []) == [("<b>", False)]
    assert typed_text("lx\x7fs -l") == "ls -l"
    assert typed_text("\x1b[Aup\x1bOB") == "up"
    assert len(typed_text("y" * 500)) == 80
