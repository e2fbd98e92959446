"""The admin dashboard in process: the aggregates (known rows, known counts per UTC day and
organisation, the 30-day bound, an empty site), the page's numbers as text and as the charts'
JSON, recent refusals and alerts, storage against quota, and "not found" for non-admins.

SQLite and PostgreSQL, with a settable clock (``api`` fixture of ``test_api_access``). The
charts drawn in Chromium under the CSP are ``test_portal_dashboard_browser``.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re
import secrets
from typing import Any

from sqlalchemy import update

from gateway.db.models import User as UserRow
from gateway.recorder.activity import session_activity, window
from gateway.recorder.tables import STATE_CLOSED, RecordingRow
from tests.test_api_access import Api, api
from tests.test_api_sessions import add_session
from tests.test_identity_helpers import env
from tests.test_portal_admin_pages import AUDITOR, EVIL, auditor, refusals

__all__ = ["api", "env"]
DATA_RE = re.compile(r'<script type="application/json" id="activity-data">(.*?)</script>', re.S)


async def set_org(api: Api, username: str, org: str) -> None:
    async with api.env.services.sessions() as db, db.begin():
        await db.execute(
            update(UserRow).where(UserRow.username == username).values(organisation=org)
        )


async def record(api: Api, username: str, started_at: dt.datetime, size: int = 0) -> None:
    """A closed catalog row, as the recorder leaves one when a session ends."""
    async with api.env.services.sessions() as db, db.begin():
        db.add(
            RecordingRow(
                id=secrets.token_hex(8), kind="terminal", username=username, asset="plc-1",
                protocol="ssh", session_id=secrets.token_hex(8), node="node-a",
                data_key_id="k1", state=STATE_CLOSED, started_at=started_at,
                ended_at=started_at + dt.timedelta(minutes=5), end_reason="closed",
                size_bytes=size,
            )
        )  # fmt: skip


def chart_of(page: str) -> dict[str, Any]:
    found = DATA_RE.search(page)
    assert found, page
    data: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return data


async def known_rows(api: Api) -> dict[str, int]:
    """Sessions of two organisations, staff and a deleted user, inside and just outside the
    window; returns the expected count per day (ISO date) inside it."""
    now = api.env.clock.now  # 2026-11-27 12:00 UTC
    first, end = window(now)
    await set_org(api, "alice", "Acme Automation")
    await set_org(api, "mallory", EVIL)
    for at in (now, now - dt.timedelta(hours=11, minutes=59), now - dt.timedelta(days=1)):
        await record(api, "alice", at, size=1024)
    await record(api, "mallory", first)  # the window's first instant: counted
    await record(api, "mallory", first - dt.timedelta(microseconds=1))  # the day before: not
    await record(api, "mallory", end)  # tomorrow (a wrong clock somewhere): not counted
    await record(api, "root", now - dt.timedelta(days=3))  # staff, no organisation
    await record(api, "ghost", now - dt.timedelta(days=3))  # a user since deleted
    return {"2026-11-27": 2, "2026-11-26": 1, "2026-10-29": 1, "2026-11-24": 2}


async def test_aggregates_count_per_utc_day_and_organisation_inside_30_days(api: Api) -> None:
    expected = await known_rows(api)
    async with api.env.services.sessions() as db:
        activity = await session_activity(db, api.env.clock.now)
    assert len(activity.days) == 30
    assert activity.days[0] == dt.date(2026, 10, 29) and activity.days[-1] == dt.date(2026, 11, 27)
    counted = {d.isoformat(): n for d, n in zip(activity.days, activity.per_day, strict=True) if n}
    assert counted == expected
    assert activity.total == 6
    assert activity.per_org == (("Acme Automation", 3), ("", 2), (EVIL, 1))  # most first


async def test_aggregates_of_an_empty_site_are_30_zero_days_and_no_organisation(
    api: Api,
) -> None:
    async with api.env.services.sessions() as db:
        activity = await session_activity(db, api.env.clock.now)
    assert activity.per_day == (0,) * 30 and activity.per_org == () and activity.total == 0
    admin = await api.login("root")
    page = await admin.client.get("/admin/dashboard")
    assert page.status_code == 200
    assert chart_of(page.text) == {
        "days": [d.isoformat() for d in activity.days], "per_day": [0] * 30,
        "orgs": [], "per_org": [],
    }  # fmt: skip
    for text in ("No sessions in these 30 days.", "No refusals in these 30 days.",
                 "No security alerts in these 30 days.", "no quota is set"):  # fmt: skip
        assert text in page.text
    assert re.search(r'id="live-count">0<', page.text)


async def test_dashboard_shows_every_number_as_text_and_as_chart_data(api: Api) -> None:
    expected = await known_rows(api)
    await add_session(api, "alice", "plc-1")
    await add_session(api, "mallory", "plc-10")
    admin = await api.login("root")
    page = await admin.client.get("/admin/dashboard")
    assert page.status_code == 200
    text = page.text
    assert re.search(r'id="live-count">2<', text) and 'href="/live"' in text
    assert re.search(r'id="pending-count">0<', text) and 'href="/requests"' in text
    data = chart_of(text)
    assert {d: n for d, n in zip(data["days"], data["per_day"], strict=True) if n} == expected
    assert data["orgs"] == ["Acme Automation", "No organisation (staff)", EVIL]
    assert data["per_org"] == [3, 2, 1]
    assert "<script>alert" not in text  # the organisation's name only ever escaped
    assert "<td>&lt;script&gt;alert(1)&lt;/script&gt;&#34;</td>" in text
    assert '<td>Acme Automation</td><td class="num">3</td>' in text
    assert '<td>2026-11-24</td><td class="num">2</td>' in text  # the per-day table
    assert "6 sessions started in these 30 days." in text
    assert "3.0 KiB used; no quota is set" in text


async def test_recent_refusals_and_alerts_are_the_last_30_days_newest_first(api: Api) -> None:
    services = api.env.services
    await services.audit.record(
        actor="alice", action="ssh.refused", result="denied", target="old-one"
    )
    api.env.clock.advance(31 * 86400)  # that refusal is now older than the window
    vendor = await api.login("alice")
    assert (await vendor.client.get("/admin/dashboard")).status_code == 404  # portal.refused
    await services.audit.record(
        actor="alice", action="operation.denied", result="denied", target="plc-1"
    )
    await services.audit.record(
        actor="alice", action="upstream.hostkey_mismatch", result="failure", target="plc-1",
        detail={"reason": "host key changed", "session_id": "s1"},
    )  # fmt: skip
    await services.audit.record(
        actor="mallory", action="login.failure", result="failure", target="mallory",
        detail={"reason": "certificate-not-in-register", "channel": "ssh"},
    )  # fmt: skip
    await services.audit.record(
        actor="alice", action="session.end", result="success", target="plc-1",
        detail={"reason": "client_integrity_failure", "session_id": "s2"},
    )  # fmt: skip
    await services.audit.record(
        actor="alice", action="session.end", result="success", target="plc-1",
        detail={"reason": "closed", "session_id": "s3"},
    )  # fmt: skip
    page = (await (await api.login("root")).client.get("/admin/dashboard")).text
    refused = page.split('id="refusals-title"')[1]
    actions = re.findall(r"<code>([a-z_.]+\.(?:refused|denied))</code>", refused)
    assert actions == ["operation.denied", "portal.refused"]  # newest first; not old-one
    assert "old-one" not in page and "/admin/dashboard" in refused
    alerts = page.split('id="alerts-title"')[1].split('id="refusals-title"')[0]
    kinds = re.findall(r'<span class="sub"><code>([a-z_]+)</code>', alerts)
    assert kinds == ["client_integrity_failure", "certificate_outside_register",
                     "hostkey_mismatch"]  # fmt: skip


async def test_storage_against_the_quota(api: Api) -> None:
    services = api.env.services
    recordings = services.settings.recordings.model_copy(update={"quota_bytes": 4096})
    services.settings = services.settings.model_copy(update={"recordings": recordings})
    await record(api, "alice", api.env.clock.now, size=3584)
    admin = await api.login("root")
    page = (await admin.client.get("/admin/dashboard")).text
    assert re.search(r'id="storage-percent">88%<', page)
    assert "3.5 KiB of 4.0 KiB used." in page and "Over 80% of the quota is used." in page
    assert 'max="4096"' in page and 'value="3584"' in page
    await record(api, "alice", api.env.clock.now, size=512)
    page = (await admin.client.get("/admin/dashboard")).text
    assert "The quota is used up" in page


async def test_non_admins_get_404_for_the_dashboard_audited(api: Api) -> None:
    for user in (await api.login("alice"), await api.login("bob"), await auditor(api)):
        answer = await user.client.get("/admin/dashboard")
        assert answer.status_code == 404 and "Not found" in answer.text
        assert "activity-data" not in answer.text
    refused = await refusals(api)
    assert [r["actor"] for r in refused] == ["alice", "bob", AUDITOR]
    assert all(r["status"] == 404 and "site.administer" in r["reason"] for r in refused)
    assert all(r["target"] == "/admin/dashboard" or "/admin/dashboard" in json.dumps(r)
               for r in refused)  # fmt: skip
    anonymous = api.client()
    answer = await anonymous.get("/admin/dashboard")
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
