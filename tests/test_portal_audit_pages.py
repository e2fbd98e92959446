"""Audit log viewer, file transfers, verify now and the evidence bundle, in process.

The app runs over ASGI on SQLite and PostgreSQL with a settable clock (``api`` fixture of
``test_api_access``); recordings are written by the real recordings service, audit events
by the real audit log. The bundle is checked by its own ``verify_bundle.py`` in a child
Python, as an auditor would run it. The browser checks are in ``test_portal_audit``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pyotp

from gateway.identity.accounts import create_user
from gateway.recorder import SessionInfo
from gateway.web.audit_pages import PAGE_SIZE, csv_cell
from recordings import Kind
from recordings.terminal import TerminalEvent
from tests.test_api_access import CSRF_RE, Api, User, api
from tests.test_api_sessions import audit_rows
from tests.test_identity_helpers import env

__all__ = ["api", "env"]
SESSION = "5e55105e55105e55105e5510"
AUDITOR_PASSWORD = "Audrey-Reads-Everything-5"
AUDITOR_SECRET = pyotp.random_base32()


async def _auditor(api: Api) -> User:
    """An auditor signed in through the real login form."""
    services = api.env.services
    async with services.sessions() as db, db.begin():
        await create_user(
            db, username="audrey", roles=["auditor"], now=api.env.clock.now,
            master_key=services.keys.master_key, password=AUDITOR_PASSWORD,
            totp_secret=AUDITOR_SECRET, status="active",
        )  # fmt: skip
    client = api.client()
    csrf = CSRF_RE.search((await client.get("/login")).text)
    assert csrf is not None
    body = {"username": "audrey", "password": AUDITOR_PASSWORD, "csrf_token": csrf.group(1)}
    assert (await client.post("/login", data=body)).status_code == 303
    page = await client.get("/login/code")
    step = int(api.env.clock.now.timestamp()) // 30
    code = pyotp.TOTP(AUDITOR_SECRET).generate_otp(step)
    token = CSRF_RE.search(page.text)
    assert token is not None
    done = await client.post("/login/code", data={"code": code, "csrf_token": token.group(1)})
    assert done.status_code == 303, done.text
    account = CSRF_RE.search((await client.get("/account")).text)
    assert account is not None
    return User(client, account.group(1))


async def _recording(api: Api, session_id: str = SESSION) -> str:
    """A closed terminal recording of ``session_id`` with its session's audit events."""
    services = api.env.services
    audit = services.audit
    info = SessionInfo(username="alice", asset="plc-1", protocol="ssh", session_id=session_id)
    failures: list[str] = []
    writer = await services.recordings.start(info, kind=Kind.TERMINAL, on_failure=failures.append)
    started = {"session_id": session_id, "recording_id": writer.recording_id}
    await audit.record(
        actor="alice", action="session.start", result="success", target="plc-1", detail=started
    )
    for line in (b"$ hostname\r\n", b"plc-1\r\n", b"$ cat /etc/motd\r\n", b"evidence-words\r\n"):
        assert writer.record(TerminalEvent.OUTPUT, line)
    await services.recordings.close(writer, "closed")
    await audit.record(actor="alice", action="session.end", result="success", target="plc-1",
                       detail={"session_id": session_id, "reason": "closed"})  # fmt: skip
    assert failures == []
    return writer.recording_id


def _rows(text: str) -> list[int]:
    return [int(found) for found in re.findall(r'<tr data-event="(\d+)"', text)]


async def test_everyone_without_read_evidence_gets_404_and_it_is_audited(api: Api) -> None:
    recording = await _recording(api)
    alice, bob = await api.login("alice"), await api.login("bob")
    paths = ["/evidence/audit", "/evidence/audit/export?format=csv", "/evidence/transfers",
             f"/evidence/recordings/{recording}/verify",
             f"/evidence/recordings/{recording}/bundle"]  # fmt: skip
    for user in (alice, bob):
        for path in paths:
            answer = await user.client.get(path)
            assert answer.status_code == 404 and "Not found" in answer.text, path
        posted = await user.client.post(
            f"/evidence/recordings/{recording}/verify", data={"csrf_token": user.csrf}
        )
        assert posted.status_code == 404
        chain = await user.client.post("/evidence/audit/verify", data={"csrf_token": user.csrf})
        assert chain.status_code == 404
    refusals = await audit_rows(api, "portal.refused")
    assert len(refusals) == 2 * (len(paths) + 2)
    assert {r.actor for r in refusals} == {"alice", "bob"}
    assert not await audit_rows(api, "recording.download")
    assert not await audit_rows(api, "recording.verify")
    # Signed out: the login form, not the page.
    anonymous = await api.client().get("/evidence/audit")
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")


async def test_filters_and_keyset_paging(api: Api) -> None:
    audit = api.env.services.audit
    ids = []
    for i in range(PAGE_SIZE * 2 + 7):
        ids.append(await audit.record(
            actor="pinger" if i % 2 else "ponger", action="test.ping",
            result="success" if i % 3 else "denied", target=f"plc-{i % 4}",
        ))  # fmt: skip
        api.env.clock.advance(60)
    audrey = await _auditor(api)
    first = await audrey.client.get("/evidence/audit", params={"action": "test.ping"})
    assert first.status_code == 200
    page1 = _rows(first.text)
    assert page1 == sorted(ids, reverse=True)[:PAGE_SIZE]
    older = re.search(r'href="/evidence/audit\?([^"]+)" rel="next"', first.text)
    assert older is not None and "before=" in older.group(1)
    second = await audrey.client.get("/evidence/audit?" + older.group(1).replace("&amp;", "&"))
    page2 = _rows(second.text)
    assert page2 == sorted(ids, reverse=True)[PAGE_SIZE : 2 * PAGE_SIZE]
    assert ">Newest</a>" in second.text
    # Each filter narrows to exactly the matching events.
    cases = {"actor": ("pinger", lambda i: i % 2 == 1),
             "result": ("denied", lambda i: i % 3 == 0),
             "target": ("plc-3", lambda i: i % 4 == 3)}  # fmt: skip
    for name, (value, keep) in cases.items():
        shown = await audrey.client.get(
            "/evidence/audit", params={"action": "test.ping", name: value, "before": ids[40]}
        )
        expected = [ids[i] for i in range(40) if keep(i)][::-1][:PAGE_SIZE]
        assert _rows(shown.text) == expected, name
    # A time range: [from, until) on the event times (one minute apart).
    since = (api.env.clock.now.replace(second=0) - (len(ids) - 10) * _MINUTE).strftime(FMT)
    until = (api.env.clock.now.replace(second=0) - (len(ids) - 13) * _MINUTE).strftime(FMT)
    ranged = await audrey.client.get(
        "/evidence/audit", params={"action": "test.ping", "since": since, "until": until}
    )
    assert _rows(ranged.text) == [ids[12], ids[11], ids[10]]


async def test_session_filter_matches_only_that_session(api: Api) -> None:
    audit = api.env.services.audit
    await _recording(api)
    other = SESSION + "ff"  # a longer id starting with the same text
    await audit.record(actor="alice", action="session.start", result="success",
                       detail={"session_id": other})  # fmt: skip
    watched = await audit.record(
        actor="bob", action="session.watched", result="success", target="plc-1",
        detail={"session_id": SESSION, "user": "alice"},
    )  # fmt: skip
    audrey = await _auditor(api)
    shown = await audrey.client.get("/evidence/audit", params={"session_id": SESSION})
    assert shown.status_code == 200
    actions = re.findall(r"<code>([a-z.]+)</code> <span class=\"tag", shown.text)
    assert actions == ["session.watched", "session.end", "session.start"]
    assert watched in _rows(shown.text)
    # Watches are readable with who and when.
    watches = await audrey.client.get("/evidence/audit", params={"action": "session.watched"})
    assert _rows(watches.text) == [watched] and ">bob<" in watches.text
    assert "<time" in watches.text
    # Unknown session: bounded to recent days, and said so.
    unknown = await audrey.client.get("/evidence/audit", params={"session_id": "0" * 24})
    assert "last 31 days" in unknown.text and "No events match" in unknown.text


async def test_bad_filter_values_get_messages_and_no_query(api: Api) -> None:
    root = await api.login("root")
    bad = {
        "since": ("yesterday", "expected a date and time"),
        "until": ("0001-01-01T00:00", "must be from"),
        "result": ("maybe", "result: one of"),
        "action": ("DROP TABLE", "action: lower-case"),
        "session_id": ('x%"', "session: letters"),
        "before": ("-3", "before: an event id"),
    }
    for name, (value, message) in bad.items():
        answer = await root.client.get("/evidence/audit", params={name: value})
        assert answer.status_code == 422, name
        assert message in answer.text and "<tr data-event" not in answer.text, name
    swapped = await root.client.get(
        "/evidence/audit", params={"since": "2026-11-27T12:00", "until": "2026-11-27T11:00"}
    )
    assert swapped.status_code == 422 and "from must be before until" in swapped.text
    export = await root.client.get("/evidence/audit/export", params={"format": "xml"})
    assert export.status_code == 422 and "format: jsonl, syslog or csv" in export.text


async def test_exports_follow_the_filter_and_defuse_formulas(api: Api) -> None:
    audit = api.env.services.audit
    evil = {'=HYPERLINK("http://x")': "+1", "@SUM(A1)": "-2"}
    for actor, target in evil.items():
        await audit.record(actor=actor, action="test.evil", result="success", target=target,
                           source="-cmd", detail={"note": "=1+1"})  # fmt: skip
    await audit.record(actor="other", action="test.other", result="success")
    root = await api.login("root")
    base = "/evidence/audit/export"
    jsonl = await root.client.get(base, params={"action": "test.evil", "format": "jsonl"})
    assert jsonl.status_code == 200 and "attachment" in jsonl.headers["content-disposition"]
    events = [json.loads(line) for line in jsonl.text.splitlines()]
    assert [e["actor"] for e in events] == list(evil)  # oldest first, only the filter's
    assert all(len(e["hash"]) == 64 and "prev_hash" in e for e in events)
    syslog = await root.client.get(base, params={"action": "test.evil", "format": "syslog"})
    lines = syslog.text.splitlines()
    assert len(lines) == 2
    # facility 13 (log audit) * 8 + severity 6 (success); structured data with the chain hash
    assert all(re.match(r"<110>1 \S+Z \S+ conduit - test.evil \[conduit@32473 id=\"\d+\" ", x)
               for x in lines)  # fmt: skip
    assert f'hash="{events[0]["hash"]}"' in lines[0]
    table = await root.client.get(base, params={"action": "test.evil", "format": "csv"})
    rows = list(csv.reader(io.StringIO(table.text)))
    assert rows[0][:3] == ["id", "time", "actor"] and len(rows) == 3
    for row, (actor, target) in zip(rows[1:], evil.items(), strict=True):
        assert row[2] == "'" + actor and row[5] == "'" + target and row[3] == "'-cmd"
        assert not any(cell.startswith(("=", "+", "-", "@")) for cell in row)
    assert [csv_cell(v) for v in ("\tx", "\rx", "ok", "a=b")] == ["'\tx", "'\rx", "ok", "a=b"]
    exports = await audit_rows(api, "audit.export")
    assert [json.loads(e.detail)["format"] for e in exports] == ["jsonl", "syslog", "csv"]
    assert all(e.actor == "root" for e in exports)


async def test_transfers_page_lists_files_with_size_and_digest(api: Api) -> None:
    audit = api.env.services.audit
    digest = "ab" * 32
    await audit.record(actor="alice", action="sftp.write", result="success", target="plc-1",
                       detail={"session_id": SESSION, "path": "/tmp/fw <1>.bin", "size": 1048576,
                               "sha256": digest, "in_order": True})  # fmt: skip
    api.env.clock.advance(60)
    await audit.record(actor="mallory", action="sftp.read", result="failure", target="plc-10",
                       detail={"session_id": "s2", "path": "/etc/x", "size": 10, "sha256": None,
                               "in_order": True, "error": "connection lost"})  # fmt: skip
    await audit.record(actor="alice", action="session.start", result="success", target="plc-1")
    audrey = await _auditor(api)
    page = await audrey.client.get("/evidence/transfers")
    assert page.status_code == 200
    assert len(_rows(page.text)) == 2
    assert "/tmp/fw &lt;1&gt;.bin" in page.text and "1,048,576" in page.text
    assert digest in page.text and "connection lost" in page.text
    assert "to asset" in page.text and "from asset" in page.text
    only = await audrey.client.get("/evidence/transfers", params={"user": "alice"})
    assert len(_rows(only.text)) == 1 and digest in only.text
    by_asset = await audrey.client.get("/evidence/transfers", params={"asset": "plc-10"})
    assert len(_rows(by_asset.text)) == 1 and "connection lost" in by_asset.text
    bad = await audrey.client.get("/evidence/transfers", params={"since": "soon"})
    assert bad.status_code == 422 and "expected a date and time" in bad.text


async def test_verify_now_stores_the_new_verdict_and_is_audited(api: Api) -> None:
    recording = await _recording(api)
    audrey = await _auditor(api)
    path = f"/evidence/recordings/{recording}/verify"
    page = await audrey.client.get(path)
    assert page.status_code == 200 and ">intact<" in page.text
    assert f'hx-post="{path}"' in page.text
    refused = await audrey.client.post(path, data={})
    assert refused.status_code == 403
    # One byte of the first chunk's ciphertext changed on disk.
    file = _file_of(api, recording)
    data = bytearray(file.read_bytes())
    data[_first_chunk_offset(bytes(data)) + 40] ^= 0x01
    file.write_bytes(bytes(data))
    fragment = await audrey.client.post(
        path, data={"csrf_token": audrey.csrf}, headers={"HX-Request": "true"}
    )
    assert fragment.status_code == 200 and "<html" not in fragment.text
    assert ">tampered<" in fragment.text and "chunk 0" in fragment.text
    entry = await api.env.services.recordings.entry(recording)
    assert entry.integrity == "tampered"
    plain = await audrey.client.post(path, data={"csrf_token": audrey.csrf})
    assert plain.status_code == 200 and "Verified just now" in plain.text
    runs = await audit_rows(api, "recording.verify")
    assert [(r.actor, r.result, r.target) for r in runs] == [("audrey", "failure", recording)] * 2
    missing = await audrey.client.get(f"/evidence/recordings/{'0' * 32}/verify")
    assert missing.status_code == 404
    junk = await audrey.client.get("/evidence/recordings/..%2Fetc/verify")
    assert junk.status_code == 404


async def test_chain_check_runs_and_shows_its_result(api: Api) -> None:
    await api.env.services.audit.record(actor="x", action="test.ping", result="success")
    root = await api.login("root")
    before = await root.client.get("/evidence/audit")
    assert "Not verified since this portal process started" in before.text
    done = await root.client.post("/evidence/audit/verify", data={"csrf_token": root.csrf})
    assert done.status_code == 303 and done.headers["location"] == "/evidence/audit#chain"
    after = await root.client.get("/evidence/audit")
    assert "tag-integrity-intact" in after.text and "verified by root" in after.text
    [run] = await audit_rows(api, "audit.verify")
    assert run.result == "success" and run.actor == "root"


async def test_bundle_verifies_offline_and_one_flipped_byte_is_tampered(
    api: Api, tmp_path: Path
) -> None:
    recording = await _recording(api)
    audrey = await _auditor(api)
    answer = await audrey.client.get(f"/evidence/recordings/{recording}/bundle")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/zip"
    assert f"conduit-evidence-{recording}.zip" in answer.headers["content-disposition"]
    bundle = tmp_path / "bundle.zip"
    bundle.write_bytes(answer.content)
    with zipfile.ZipFile(bundle) as z:
        names = set(z.namelist())
        stored = z.read(f"{recording}.rec")
        events = [json.loads(x) for x in z.read("audit-events.jsonl").splitlines()]
        manifest = json.loads(z.read("manifest.json"))
    assert names == {f"{recording}.rec", "signing-key.pem", "audit-events.jsonl",
                     "manifest.json", "README.txt", "verify_bundle.py"}  # fmt: skip
    assert stored == _file_of(api, recording).read_bytes()
    assert [e["action"] for e in events] == ["session.start", "session.end"]
    assert manifest["session_id"] == SESSION and manifest["exported_by"] == "audrey"
    assert (manifest["format_version"], manifest["chain_hash"]) == (2, "BLAKE3")
    # No secret: neither the master key nor this recording's data key is in the zip.
    services = api.env.services
    entry = await services.recordings.entry(recording)
    data_key = services.recordings.data_keys.resolve(entry.data_key_id)
    for secret in (services.keys.master_key, data_key, data_key.hex().encode()):
        assert secret not in answer.content
    [download] = await audit_rows(api, "recording.download")
    assert (download.actor, download.target) == ("audrey", recording)

    assert _verify(bundle) == (0, "intact")
    # The same check on the unpacked directory.
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(bundle) as z:
        z.extractall(unpacked)
    assert _verify(unpacked) == (0, "intact")
    # One byte of the recording changed inside the bundle: tampered, and why.
    flipped = bytearray(stored)
    flipped[_first_chunk_offset(stored) + 30] ^= 0x80
    code, out = _verify(_rewritten(bundle, tmp_path / "flipped.zip",
                                   {f"{recording}.rec": bytes(flipped)}))  # fmt: skip
    assert code == 1 and out.startswith("tampered: recording:") and "hash chain" in out
    # An audit event edited inside the bundle: tampered too.
    edited = "".join(json.dumps({**e, "actor": "mallory"} if i == 0 else e) + "\n"
                     for i, e in enumerate(events))  # fmt: skip
    code, out = _verify(_rewritten(bundle, tmp_path / "edited.zip",
                                   {"audit-events.jsonl": edited.encode()}))  # fmt: skip
    assert code == 1 and "does not match its hash" in out


_MINUTE = dt.timedelta(minutes=1)
FMT = "%Y-%m-%dT%H:%M"


def _file_of(api: Api, recording: str) -> Path:
    [path] = list(api.env.services.recordings.store.root.rglob(f"{recording}.rec"))
    return path


def _first_chunk_offset(data: bytes) -> int:
    """Byte offset of the first chunk frame: after the magic and the header frame."""
    length = int.from_bytes(data[9:13], "big")
    return 8 + 9 + length


def _rewritten(source: Path, target: Path, replace: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            new.writestr(name, replace.get(name, old.read(name)))
    return target


def _verify(path: Path) -> tuple[int, str]:
    """Run the bundle's own script, from the bundle, in a fresh Python."""
    script = path.parent / "verify_bundle_copy.py"
    with zipfile.ZipFile(path if path.is_file() else path.parent / "bundle.zip") as z:
        script.write_bytes(z.read("verify_bundle.py"))
    done = subprocess.run([sys.executable, "-I", str(script), str(path)], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    return done.returncode, done.stdout.strip()
