"""Modbus write windows over the JSON API: who may arm, step-up, bounds, audit, closing.

In-process over ASGI on SQLite and PostgreSQL with rows in the shared ``live_sessions``
table (the owner node applying a window is tested with real peers in test_ot_tunnel.py).
"""

from __future__ import annotations

import json

import pytest

from gateway.sessions import write_windows
from tests.test_api_access import Api, api
from tests.test_api_sessions import add_session, audit_rows, grant
from tests.test_identity_helpers import env

__all__ = ["api", "env"]


async def modbus_session(api: Api, user: str = "alice") -> str:
    live = await add_session(api, user, "plc-1")
    async with api.env.services.sessions() as db, db.begin():
        row = await db.get(write_windows.live_store.LiveSessionRow, live.session_id)
        assert row is not None
        row.protocol = "modbus"
    return live.session_id


async def open_until(api: Api, session_id: str) -> object:
    async with api.env.services.sessions() as db:
        return (await write_windows.open_until(db, [session_id], api.env.clock.now)).get(session_id)


async def test_approver_arms_with_fresh_second_factor_and_it_is_audited(api: Api) -> None:
    session_id = await modbus_session(api)
    path = f"/api/v1/sessions/{session_id}/write-window"
    body = {"minutes": 15, "reason": "retune PID loop 3"}
    alice, bob = await api.login("alice"), await api.login("bob")
    own = await alice.client.post(path, json=body, headers=alice.headers())
    assert own.status_code == 403, own.text  # the vendor cannot arm her own writes
    await grant(api, "bob", "plc-1", "watch")  # sees it, holds approve already
    async with api.client() as automation:
        by_token = await automation.post(
            path, json=body, headers=await api.token("bob", ["approve"])
        )
        assert by_token.status_code == 403 and "API tokens" in by_token.json()["detail"]
    api.env.clock.advance(6 * 60)
    late = await bob.client.post(path, json=body, headers=bob.headers())
    assert late.status_code == 403 and "step-up" in late.json()["detail"]
    assert await open_until(api, session_id) is None
    stepped = await bob.client.post(
        "/account/step-up", data={"code": api.code("bob"), "csrf_token": bob.csrf}
    )
    assert stepped.status_code == 303, stepped.text
    armed = await bob.client.post(path, json=body, headers=bob.headers())
    assert armed.status_code == 201, armed.text
    shown = armed.json()
    assert (shown["armed_by"], shown["reason"], shown["user"]) == ("bob", body["reason"], "alice")
    assert await open_until(api, session_id) is not None
    [audited] = await audit_rows(api, "modbus.window_armed")
    assert audited.actor == "bob"
    assert json.loads(audited.detail)["reason"] == "retune PID loop 3"
    api.env.clock.advance(15 * 60)  # it ends by itself
    assert await open_until(api, session_id) is None


async def test_a_window_is_only_for_modbus_sessions_and_closes_early(api: Api) -> None:
    ssh = await add_session(api, "alice", "plc-1")
    session_id = await modbus_session(api)
    root = await api.login("root")
    body = {"minutes": 5, "reason": "calibration"}
    not_modbus = await root.client.post(
        f"/api/v1/sessions/{ssh.session_id}/write-window", json=body, headers=root.headers()
    )
    assert not_modbus.status_code == 404
    path = f"/api/v1/sessions/{session_id}/write-window"
    assert (await root.client.post(path, json=body, headers=root.headers())).status_code == 201
    closed = await root.client.delete(path, headers=root.headers())
    assert closed.status_code == 204, closed.text
    assert await open_until(api, session_id) is None
    assert len(await audit_rows(api, "modbus.window_closed")) == 1


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"minutes": 0, "reason": "x"},
        {"minutes": 241, "reason": "x"},
        {"minutes": 5, "reason": ""},
        {"minutes": 5, "reason": "two\nlines"},
        {"minutes": 5, "reason": "x" * 201},
        {"minutes": 5, "reason": "ok", "extra": 1},
    ],
)
async def test_window_bounds_are_checked_at_the_edge(api: Api, body: object) -> None:
    session_id = await modbus_session(api)
    root = await api.login("root")
    sent = await root.client.post(
        f"/api/v1/sessions/{session_id}/write-window", json=body, headers=root.headers()
    )
    assert sent.status_code == 422, sent.text
    assert await open_until(api, session_id) is None


async def test_live_page_offers_arm_writes_for_modbus_sessions_only(api: Api) -> None:
    ssh = await add_session(api, "alice", "plc-1")
    session_id = await modbus_session(api)
    root = await api.login("root")
    table = (await root.client.get("/live/table")).text
    assert f'href="/live?arm={session_id}#arm"' in table
    assert f'href="/live?arm={ssh.session_id}#arm"' not in table
    form = await root.client.get(f"/live?arm={session_id}")
    assert f'action="/live/{session_id}/write-window"' in form.text
    path = f"/live/{session_id}/write-window"
    bad = await root.client.post(
        path, data={"csrf_token": root.csrf, "minutes": "999", "reason": "x"}
    )
    assert bad.status_code == 422 and "Nothing was changed" in bad.text
    no_csrf = await root.client.post(path, data={"minutes": "5", "reason": "calibration"})
    assert no_csrf.status_code in (400, 403)
    assert await open_until(api, session_id) is None
    done = await root.client.post(
        path, data={"csrf_token": root.csrf, "minutes": "5", "reason": "calibration <b>"}
    )
    assert done.status_code == 200, done.text
    assert "Writes armed for alice on plc-1" in done.text
    assert await open_until(api, session_id) is not None
    [audited] = await audit_rows(api, "modbus.window_armed")
    assert json.loads(audited.detail)["reason"] == "calibration <b>"
    refused = await root.client.post(
        f"/live/{ssh.session_id}/write-window",
        data={"csrf_token": root.csrf, "minutes": "5", "reason": "x"},
    )
    assert refused.status_code == 404


async def test_arming_a_session_that_is_not_modbus_is_refused_and_audited(api: Api) -> None:
    ssh = await add_session(api, "alice", "plc-1")
    services = api.env.services
    with pytest.raises(write_windows.WindowRefused):
        await write_windows.arm_window(
            services, ssh.session_id, minutes=5, reason="x", actor="cli:ops"
        )
    [refused] = await audit_rows(api, "modbus.window_armed")
    assert (refused.actor, refused.result) == ("cli:ops", "denied")
    assert await open_until(api, ssh.session_id) is None
