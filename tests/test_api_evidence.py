"""The evidence JSON API in process: recordings (history filters and keyset, metadata,
verify, bundle), search, audit events; auditors only, 404 for everyone else, audited."""

from __future__ import annotations

import datetime as dt
import io
import json
import zipfile

from gateway.web.history import PAGE
from tests.test_api_access import CSRF_RE, Api, api
from tests.test_identity_helpers import env
from tests.test_portal_evidence_pages import add_rows, auditor, record_terminal, row

__all__ = ["api", "env"]


async def test_vendors_get_404_for_every_recording_route_audited(api: Api) -> None:
    real = await record_terminal(api, "alice", b"hello plant\r\n")
    alice = await api.login("alice")
    before = len(await api.refusals())
    paths = ["/api/v1/recordings", f"/api/v1/recordings/{real}",
             f"/api/v1/recordings/{real}/bundle", f"/api/v1/recordings/{'0' * 32}",
             "/api/v1/search?q=hello", "/api/v1/audit/events", "/api/v1/transfers"]  # fmt: skip
    for path in paths:
        answer = await alice.client.get(path)
        assert answer.status_code == 404, path
        assert "hello" not in answer.text
    verify = await alice.client.post(f"/api/v1/recordings/{real}/verify", headers=alice.headers())
    assert verify.status_code == 404
    assert len(await api.refusals()) == before + len(paths) + 1


async def test_auditor_lists_filters_and_pages_the_history(api: Api) -> None:
    start = api.env.clock.now - dt.timedelta(days=2)
    await add_rows(api, *(row(f"r{i:03d}", "alice", start + dt.timedelta(minutes=i))
                          for i in range(PAGE + 3)))  # fmt: skip
    await add_rows(api, row("other", "bob", start, asset="hmi-2"))
    audrey = await auditor(api)
    first = await audrey.client.get("/api/v1/recordings", params={"user": "alice"})
    assert first.status_code == 200, first.text
    ids = [r["id"] for r in first.json()["recordings"]]
    assert len(ids) == PAGE and ids[0] == f"r{PAGE + 2:03d}"  # newest first
    second = await audrey.client.get(
        "/api/v1/recordings", params={"user": "alice", "after": first.json()["next"]}
    )
    rest = [r["id"] for r in second.json()["recordings"]]
    assert rest == ["r002", "r001", "r000"] and second.json()["next"] is None
    by_asset = await audrey.client.get("/api/v1/recordings", params={"asset": "hmi-2"})
    assert [r["id"] for r in by_asset.json()["recordings"]] == ["other"]
    for bad in ({"since": "yesterday"}, {"after": "not-a-cursor"}, {"user": "a b"},
                {"since": "2026-01-02", "until": "2026-01-01"}):  # fmt: skip
        answer = await audrey.client.get("/api/v1/recordings", params=bad)
        assert answer.status_code == 422, bad
    # A token with the read scope answers the same; another scope is refused.
    async with api.client() as bot:
        read = await bot.get("/api/v1/recordings", headers=await api.token("audrey", ["read"]))
        assert read.json() == (await audrey.client.get("/api/v1/recordings")).json()
        other = await api.token("audrey", ["requests"])
        assert (await bot.get("/api/v1/recordings", headers=other)).status_code == 403


async def test_verify_now_and_bundle_download_are_audited(api: Api) -> None:
    rid = await record_terminal(api, "alice", b"pump 4 calibrated\r\n")
    audrey = await auditor(api)
    found = CSRF_RE.search((await audrey.client.get("/account")).text)
    assert found
    audrey.csrf = found.group(1)
    meta = await audrey.client.get(f"/api/v1/recordings/{rid}")
    assert meta.status_code == 200 and meta.json()["user"] == "alice"
    assert meta.json()["end_reason"] == "killed"
    done = await audrey.client.post(f"/api/v1/recordings/{rid}/verify", headers=audrey.headers())
    assert done.status_code == 200, done.text
    assert done.json()["integrity"] == "intact" and done.json()["verified_at"] is not None
    # No CSRF header: refused like every portal-session change.
    assert (await audrey.client.post(f"/api/v1/recordings/{rid}/verify")).status_code == 403
    got = await audrey.client.get(f"/api/v1/recordings/{rid}/bundle")
    assert got.status_code == 200 and got.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(got.content)).namelist()
    assert "verify_bundle.py" in names and "README.txt" in names
    events = await audrey.client.get("/api/v1/audit/events", params={"target": rid})
    actions = [(e["action"], e["actor"]) for e in events.json()["events"]]
    assert ("recording.verify", "audrey") in actions
    assert ("recording.download", "audrey") in actions


async def test_search_finds_the_word(api: Api) -> None:
    rid = await record_terminal(api, "alice", b"valve 12 OPEN overpressure\r\n")
    audrey = await auditor(api)
    found = await audrey.client.get("/api/v1/search", params={"q": "overpressure"})
    assert found.status_code == 200, found.text
    [hit] = found.json()
    assert (hit["recording_id"], hit["user"]) == (rid, "alice")
    assert "[overpressure]" in hit["snippet"]
    assert (await audrey.client.get("/api/v1/search", params={"q": "!!"})).status_code == 422
    assert (await audrey.client.get("/api/v1/search", params={"q": "x" * 300})).status_code == 422


async def test_audit_events_filter_and_keyset(api: Api) -> None:
    alice = await api.login("alice")
    for _ in range(3):
        assert (await alice.client.get("/api/v1/recordings")).status_code == 404
    audrey = await auditor(api)
    wanted = {"action": "api.refused", "actor": "alice", "limit": "2"}
    first = (await audrey.client.get("/api/v1/audit/events", params=wanted)).json()
    assert len(first["events"]) == 2 and first["before"] is not None
    assert all(e["action"] == "api.refused" for e in first["events"])
    older = await audrey.client.get(
        "/api/v1/audit/events", params={**wanted, "before": str(first["before"])}
    )
    assert len(older.json()["events"]) == 1 and older.json()["before"] is None
    ids = [e["id"] for e in first["events"] + older.json()["events"]]
    assert ids == sorted(ids, reverse=True)
    assert json.dumps(first["events"][0]["detail"]).count("status") == 1
    for bad in ({"result": "maybe"}, {"since": "soon"}, {"before": "-1"}, {"limit": "0"}):
        answer = await audrey.client.get("/api/v1/audit/events", params=bad)
        assert answer.status_code == 422, bad
    transfers = await audrey.client.get("/api/v1/transfers")
    assert transfers.status_code == 200 and transfers.json()["events"] == []


async def test_audit_export_and_chain_verify_over_the_api(api: Api) -> None:
    await api.env.services.audit.record(
        actor="alice", action="portal.refused", result="denied", target="=cmd|' /C calc'!A0",
        detail={"status": 404},
    )  # fmt: skip
    audrey = await auditor(api)
    bot_headers = await api.token("audrey", ["read"])
    async with api.client() as bot:
        csv_out = await bot.get(
            "/api/v1/audit/export", params={"format": "csv", "action": "portal.refused"},
            headers=bot_headers,
        )  # fmt: skip
        assert csv_out.status_code == 200, csv_out.text
        assert csv_out.headers["content-type"].startswith("text/csv")
        assert "'=cmd|" in csv_out.text and ",=cmd" not in csv_out.text  # formula guarded
        lines = await bot.get(
            "/api/v1/audit/export", params={"format": "jsonl"}, headers=bot_headers
        )
        events = [json.loads(x) for x in lines.text.splitlines()]
        assert any(e["action"] == "portal.refused" for e in events)
        bad = await bot.get("/api/v1/audit/export", params={"format": "xml"}, headers=bot_headers)
        assert bad.status_code == 422
        checked = await bot.post("/api/v1/audit/verify", headers=bot_headers)
        assert checked.status_code == 200, checked.text
        assert checked.json()["ok"] is True and checked.json()["checked"] >= len(events)
    alice = await api.login("alice")
    refused = await alice.client.get("/api/v1/audit/export", params={"format": "csv"})
    assert refused.status_code == 404
    actions = [json.loads(x)["action"] for x in (await audrey.client.get(
        "/api/v1/audit/export", params={"format": "jsonl"})).text.splitlines()]  # fmt: skip
    assert "audit.export" in actions and "audit.verify" in actions
