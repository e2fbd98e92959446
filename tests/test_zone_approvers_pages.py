"""A zone's approver group on the pages, in process (``api`` fixture of ``test_api_access``,
SQLite and PostgreSQL): the admin sets it on the zone page behind a step-up, audited with
before and after; a bad value gets an inline message and changes nothing; the approver's
request page says who may decide, and an approver outside the group is refused there.
"""

from __future__ import annotations

from gateway.authz.service import AuthzService
from tests.test_api_access import Api, api, make_request
from tests.test_identity_helpers import env
from tests.test_portal_admin_pages import changes, refusals, stale

__all__ = ["api", "env"]
RULES = {"required_approvals": "1", "max_request_hours": ""}


async def _line_1(authz: AuthzService) -> None:
    await authz.add_zone("line-1", actor="test")
    await authz.place("plc-1", "line-1", actor="test")
    await authz.add_grant(
        subject_kind="user", subject="root", object_kind="asset", obj="plc-1",
        action="approve", actor="test",
    )  # fmt: skip


async def test_admin_sets_the_approver_group_with_step_up_and_audit(api: Api) -> None:
    authz = api.env.services.authz
    await _line_1(authz)
    root = await api.login("root")
    form = await root.client.get("/admin/zones/line-1")
    assert 'name="approver_group"' in form.text and '<option value="role:admin">' in form.text
    stale(api)
    body = {**RULES, "approver_group": "role:admin", "csrf_token": root.csrf}
    asked = await root.client.post("/admin/zones/line-1", data=body)
    assert asked.status_code == 200 and 'name="code"' in asked.text
    assert '<option value="role:admin" selected>' in asked.text  # the choice is kept
    assert [z.approver_group for z in await authz.list_zones()] == [None]
    done = await root.client.post("/admin/zones/line-1", data={**body, "code": api.code("root")})
    assert done.status_code == 303
    assert [z.approver_group for z in await authz.list_zones()] == ["role:admin"]
    [change] = await changes(api)
    assert (change["before"]["approver_group"], change["after"]["approver_group"]) == (
        "", "role:admin",
    )  # fmt: skip
    listed = (await root.client.get("/admin/zones")).text
    assert "1 approval from role:admin" in listed
    shown = (await root.client.get("/admin/zones/line-1")).text
    assert '<option value="role:admin" selected>' in shown


async def test_a_group_not_offered_gets_a_message_and_changes_nothing(api: Api) -> None:
    authz = api.env.services.authz
    await _line_1(authz)
    root = await api.login("root")
    for bad in ("user:bob", "org:nobody", "<b>role:admin</b>"):
        body = {**RULES, "approver_group": bad, "csrf_token": root.csrf}
        answer = await root.client.post("/admin/zones/line-1", data=body)
        assert answer.status_code == 422 and 'id="err-approver_group"' in answer.text, bad
        assert "Choose an approver group from the list." in answer.text
        assert "<b>role:admin</b>" not in answer.text
    assert [z.approver_group for z in await authz.list_zones()] == [None]
    assert len(await refusals(api)) == 3 and await changes(api) == []
    added = await root.client.post(
        "/admin/zones",
        data={**RULES, "name": "cell-2", "approver_group": "role:vendor", "csrf_token": root.csrf},
    )
    assert added.status_code == 303
    assert {z.name: z.approver_group for z in await authz.list_zones()}["cell-2"] == "role:vendor"


async def test_request_page_says_who_may_decide_and_refuses_outside_the_group(api: Api) -> None:
    authz = api.env.services.authz
    await _line_1(authz)
    await authz.update_zone(
        "line-1", actor="test", required_approvals=1, max_request_hours=None,
        approvers="role:admin",
    )  # fmt: skip
    alice, bob, root = await api.login("alice"), await api.login("bob"), await api.login("root")
    rid = (await make_request(api, alice))["id"]
    page = (await bob.client.get(f"/requests/{rid}")).text
    assert "Only members of <strong>role:admin</strong>" in page and "(zone line-1)" in page
    assert "May decide: root." in page
    assert f'action="/requests/{rid}/approve"' not in page  # no buttons for bob
    refused = await bob.client.post(f"/requests/{rid}/approve", data={"csrf_token": bob.csrf})
    assert refused.status_code == 409
    assert "only members of the role admin may decide requests in zone line-1" in refused.text
    assert f'action="/requests/{rid}/approve"' in (await root.client.get(f"/requests/{rid}")).text
    done = await root.client.post(f"/requests/{rid}/approve", data={"csrf_token": root.csrf})
    assert done.status_code == 303
    assert (await alice.client.get(f"/api/v1/requests/{rid}")).json()["state"] == "approved"
