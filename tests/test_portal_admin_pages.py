"""Admin pages in process: zones, assets, credentials; who may see them, step-up, audit.

The app runs over ASGI on SQLite and PostgreSQL with a settable clock (``api`` fixture of
``test_api_access``). The real-browser, real-OpenSSH walk through is ``test_portal_admin``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from gateway.identity.accounts import create_user
from tests.test_api_access import PASSWORDS_ALL, SECRETS_ALL, Api, User, api
from tests.test_api_sessions import audit_rows
from tests.test_identity_helpers import env

__all__ = ["api", "env"]
AUDITOR = "audrey"
PASSWORDS_ALL.setdefault(AUDITOR, "Audrey-Reads-Everything-5")
SECRETS_ALL.setdefault(AUDITOR, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ")
EVIL = '<script>alert(1)</script>"'


async def auditor(api: Api) -> User:
    services = api.env.services
    async with services.sessions() as db, db.begin():
        await create_user(
            db, username=AUDITOR, roles=["auditor"], now=api.env.clock.now,
            master_key=services.keys.master_key, password=PASSWORDS_ALL[AUDITOR],
            totp_secret=SECRETS_ALL[AUDITOR], status="active",
        )  # fmt: skip
    return await api.login(AUDITOR)


async def changes(api: Api) -> list[dict[str, Any]]:
    return [
        {"actor": r.actor, "target": r.target, **json.loads(r.detail)}
        for r in await audit_rows(api, "admin.changed")
    ]


async def refusals(api: Api) -> list[dict[str, Any]]:
    return [
        {"actor": r.actor, "target": r.target, **json.loads(r.detail)}
        for r in await audit_rows(api, "portal.refused")
    ]


def stale(api: Api) -> None:
    """The login's second factor is now older than the step-up limit."""
    api.env.clock.advance(6 * 60)


ADMIN_GETS = ("/admin", "/admin/zones", "/admin/zones/line-1")
ADMIN_POSTS = ("/admin/zones", "/admin/zones/line-1")


async def test_non_admins_get_404_for_every_admin_page_and_post_audited(api: Api) -> None:
    await api.env.services.authz.add_zone("line-1", actor="test")
    for user in (await api.login("alice"), await api.login("bob"), await auditor(api)):
        for path in ADMIN_GETS:
            answer = await user.client.get(path)
            assert answer.status_code == 404 and "Not found" in answer.text, path
            assert 'href="/admin"' not in answer.text  # no menu entry either
        for path in ADMIN_POSTS:  # with or without a CSRF token: not found, before CSRF
            for body in ({"csrf_token": user.csrf, "required_approvals": "1"}, {}):
                answer = await user.client.post(path, data=body)
                assert answer.status_code == 404, path
    refused = await refusals(api)
    per_user = len(ADMIN_GETS) + 2 * len(ADMIN_POSTS)
    assert len(refused) == 3 * per_user
    assert {r["actor"] for r in refused} == {"alice", "bob", AUDITOR}
    assert all(r["status"] == 404 and "site.administer" in r["reason"] for r in refused)
    assert await changes(api) == []


async def test_admin_menu_and_overview(api: Api) -> None:
    root = await api.login("root")
    home = await root.client.get("/home")
    assert 'href="/admin"' in home.text
    overview = await root.client.get("/admin")
    assert overview.status_code == 200 and "Administration" in overview.text


async def test_zone_add_as_a_tree_with_rules_step_up_and_audit(api: Api) -> None:
    root = await api.login("root")
    body = {"csrf_token": root.csrf, "name": "site", "required_approvals": "1"}
    assert (await root.client.post("/admin/zones", data=body)).status_code == 303
    stale(api)
    child = {
        "csrf_token": root.csrf, "name": "level-2", "parent": "site",
        "required_approvals": "2", "max_request_hours": "4",
    }  # fmt: skip
    asked = await root.client.post("/admin/zones", data=child)
    assert asked.status_code == 200 and 'name="code"' in asked.text
    assert 'value="level-2"' in asked.text  # nothing typed is lost
    assert [z.name for z in await api.env.services.authz.list_zones()] == ["site"]
    bad = await root.client.post("/admin/zones", data={**child, "code": "000000"})
    assert bad.status_code == 200 and "not accepted" in bad.text
    done = await root.client.post("/admin/zones", data={**child, "code": api.code("root")})
    assert done.status_code == 303
    listed = (await root.client.get("/admin/zones")).text
    tree = re.search(r'<ul class="tree">(.*)</section>', listed, re.S)
    assert tree is not None
    # level-2 is listed inside site's item, with its rules
    nested = r'href="/admin/zones/site">site</a>.*<ul class="tree">.*level-2'
    assert re.search(nested, tree[1], re.S)
    assert "2 approvals, requests up to 4 h" in listed
    made = await changes(api)
    assert [(c["target"], c["before"], c["after"]) for c in made] == [
        ("site", {}, {"parent": "", "required_approvals": 1, "max_request_hours": None}),
        ("level-2", {}, {"parent": "site", "required_approvals": 2, "max_request_hours": 4}),
    ]
    assert all(c["actor"] == "root" for c in made)


async def test_zone_bad_input_gets_messages_beside_the_fields(api: Api) -> None:
    root = await api.login("root")
    body = {
        "csrf_token": root.csrf, "name": EVIL, "parent": "nowhere",
        "required_approvals": "99", "max_request_hours": "-3",
    }  # fmt: skip
    answer = await root.client.post("/admin/zones", data=body)
    assert answer.status_code == 422
    for field in ("name", "parent", "required_approvals", "max_request_hours"):
        assert f'id="err-{field}"' in answer.text, field
    assert "from 1 to 20" in answer.text and "<script>alert" not in answer.text
    assert await api.env.services.authz.list_zones() == []
    [refused] = await refusals(api)
    assert refused["status"] == 422 and "required_approvals" in refused["reason"]
    no_csrf = await root.client.post("/admin/zones", data={**body, "csrf_token": ""})
    assert no_csrf.status_code == 403


async def test_zone_edit_changes_the_rules_with_before_and_after(api: Api) -> None:
    await api.env.services.authz.add_zone("line-1", actor="test", required_approvals=1)
    root = await api.login("root")
    form = await root.client.get("/admin/zones/line-1")
    assert form.status_code == 200 and 'value="1"' in form.text
    body = {"csrf_token": root.csrf, "required_approvals": "3", "max_request_hours": ""}
    assert (await root.client.post("/admin/zones/line-1", data=body)).status_code == 303
    [zone] = await api.env.services.authz.list_zones()
    assert (zone.required_approvals, zone.max_request_hours) == (3, None)
    [change] = await changes(api)
    assert (change["before"]["required_approvals"], change["after"]["required_approvals"]) == (1, 3)
    missing = await root.client.get("/admin/zones/nope")
    assert missing.status_code == 404
    gone = await root.client.post("/admin/zones/nope", data=body)
    assert gone.status_code == 404
