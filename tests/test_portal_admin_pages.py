"""Admin pages in process: zones, assets, credentials; who may see them, step-up, audit.

The app runs over ASGI on SQLite and PostgreSQL with a settable clock (``api`` fixture of
``test_api_access``). The real-browser, real-OpenSSH walk through is ``test_portal_admin``.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from gateway import vault
from gateway.authz import certificates, hostkeys
from gateway.identity import onboarding, tokens
from gateway.identity.accounts import create_user
from tests.desktop_targets import make_certificate, missing_reason, start_xvnc
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
        ("site", {}, {"parent": "", "required_approvals": 1, "max_request_hours": None,
                      "approver_group": ""}),
        ("level-2", {}, {"parent": "site", "required_approvals": 2, "max_request_hours": 4,
                         "approver_group": ""}),
    ]  # fmt: skip
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


# -- assets ------------------------------------------------------------------------------
ASSET_FORM = {
    "name": "hmi-7", "protocol": "ssh", "host": "127.0.0.1", "port": "22",
    "max_request_hours": "8", "record_input": "on",
}  # fmt: skip


async def test_non_admins_get_404_for_asset_pages_and_posts(api: Api) -> None:
    mallory = await api.login("mallory")
    for path in ("/admin/assets", "/admin/assets/plc-1"):
        assert (await mallory.client.get(path)).status_code == 404
    for suffix in ("", "/plc-1", "/plc-1/scan", "/plc-1/hostkeys", "/plc-1/credential"):
        body = {"csrf_token": mallory.csrf, "password": "x", "kind": "password"}
        assert (await mallory.client.post("/admin/assets" + suffix, data=body)).status_code == 404
    assert len(await refusals(api)) == 7


async def test_asset_add_with_zone_step_up_and_audit(api: Api) -> None:
    await api.env.services.authz.add_zone("line-1", actor="test")
    root = await api.login("root")
    stale(api)
    body = {**ASSET_FORM, "zones": "line-1", "csrf_token": root.csrf}
    asked = await root.client.post("/admin/assets", data=body)
    assert (
        asked.status_code == 200 and 'name="code"' in asked.text and 'value="hmi-7"' in asked.text
    )
    done = await root.client.post("/admin/assets", data={**body, "code": api.code("root")})
    assert done.status_code == 303 and done.headers["location"] == "/admin/assets/hmi-7"
    listed = (await root.client.get("/admin/assets")).text
    assert 'href="/admin/assets/hmi-7"' in listed and "127.0.0.1:22" in listed
    [(asset, zones)] = [(a, z) for a, z in await api.env.services.authz.list_assets()
                        if a.name == "hmi-7"]  # fmt: skip
    assert zones == ["line-1"] and asset.record_input
    [change] = await changes(api)
    assert change["before"] == {} and change["after"]["zones"] == ["line-1"]


async def test_asset_bad_input_gets_messages_and_stores_nothing(api: Api) -> None:
    root = await api.login("root")
    body = {
        **ASSET_FORM, "name": "plc-1", "protocol": "telnet", "host": "a b", "port": "70000",
        "max_request_hours": "0", "zones": "nowhere", "csrf_token": root.csrf,
    }  # fmt: skip
    answer = await root.client.post("/admin/assets", data=body)
    assert answer.status_code == 422
    for field in ("name", "protocol", "host", "port", "max_request_hours", "zones"):
        assert f'id="err-{field}"' in answer.text, field
    assert "already exists" in answer.text
    assert len(await api.env.services.authz.list_assets()) == 2


async def test_asset_edit_and_disable_is_honoured_by_the_authorizer(api: Api) -> None:
    services = api.env.services
    await services.authz.add_zone("line-1", actor="test")
    await services.authz.add_grant(
        subject_kind="user", subject="alice", object_kind="asset", obj="plc-1",
        action="ssh", actor="test",
    )  # fmt: skip
    assert (await services.authz.authorize("alice", "plc-1", "ssh")).allowed
    root = await api.login("root")
    page = await root.client.get("/admin/assets/plc-1")
    assert page.status_code == 200 and 'value="10.0.0.1"' in page.text
    body = {
        "host": "10.0.0.2", "port": "2222", "max_request_hours": "4", "zones": "line-1",
        "disabled": "on", "csrf_token": root.csrf,
    }  # fmt: skip
    assert (await root.client.post("/admin/assets/plc-1", data=body)).status_code == 303
    decision = await services.authz.authorize("alice", "plc-1", "ssh")
    assert not decision.allowed and "disabled" in decision.reason
    [change] = await changes(api)
    assert change["before"]["disabled"] is False and change["after"]["disabled"] is True
    assert (change["before"]["port"], change["after"]["port"]) == (22, 2222)
    assert change["after"]["record_input"] is False and change["after"]["zones"] == ["line-1"]
    assert "disabled" in (await root.client.get("/admin/assets")).text
    body.pop("disabled")  # enabled again: the grant reaches alice again
    assert (await root.client.post("/admin/assets/plc-1", data=body)).status_code == 303
    assert (await services.authz.authorize("alice", "plc-1", "ssh")).allowed


async def _ssh_listener(key: asyncssh.SSHKey) -> tuple[asyncssh.SSHAcceptor, int]:
    """An SSH server on loopback offering ``key`` (a scan reads it and never logs in)."""
    acceptor = await asyncssh.listen("127.0.0.1", 0, server_host_keys=[key])
    port: int = acceptor.sockets[0].getsockname()[1]
    return acceptor, port


async def test_host_key_scan_shows_fingerprints_and_pins_only_what_was_confirmed(
    api: Api,
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    fingerprint = key.get_fingerprint("sha256")
    acceptor, port = await _ssh_listener(key)
    services = api.env.services
    try:
        await services.authz.add_asset("hmi-7", "127.0.0.1", port, "ssh", actor="test")
        root = await api.login("root")
        scanned = await root.client.post("/admin/assets/hmi-7/scan", data={"csrf_token": root.csrf})
        assert scanned.status_code == 200 and fingerprint in scanned.text
        async with services.sessions() as db:
            assert await hostkeys.pins(db, "hmi-7") == []  # shown, not stored
        # A fingerprint that the asset does not offer (any more) pins nothing.
        other = asyncssh.generate_private_key("ssh-ed25519").get_fingerprint("sha256")
        path = "/admin/assets/hmi-7/hostkeys"
        swapped = await root.client.post(path, data={"fingerprint": other, "csrf_token": root.csrf})
        assert swapped.status_code == 409 and "different keys" in swapped.text
        none = await root.client.post(path, data={"csrf_token": root.csrf})
        assert none.status_code == 422 and "Tick the keys" in none.text
        stale(api)
        body = {"fingerprint": fingerprint, "csrf_token": root.csrf}
        asked = await root.client.post(path, data=body)
        assert asked.status_code == 200 and 'name="code"' in asked.text
        done = await root.client.post(path, data={**body, "code": api.code("root")})
        assert done.status_code == 303
        async with services.sessions() as db:
            [pinned] = await hostkeys.pins(db, "hmi-7")
        assert pinned.fingerprint == fingerprint and pinned.added_by == "root"
        page = (await root.client.get("/admin/assets/hmi-7")).text
        assert fingerprint in page and "by root" in page
        [change] = await changes(api)
        assert change["before"] == {"pinned": []} and change["after"] == {"pinned": [fingerprint]}
        reasons = [r["reason"] for r in await refusals(api)]
        assert any("no longer offered" in r for r in reasons)
    finally:
        acceptor.close()
        await acceptor.wait_closed()


async def test_a_failed_scan_says_so(api: Api) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    await api.env.services.authz.add_asset("hmi-7", "127.0.0.1", port, "ssh", actor="test")
    root = await api.login("root")
    answer = await root.client.post("/admin/assets/hmi-7/scan", data={"csrf_token": root.csrf})
    assert answer.status_code == 502 and "The scan failed" in answer.text
    assert f"127.0.0.1:{port}" in answer.text


PASSWORD = "Very-Secret-Target-Pass-9"


async def test_credentials_are_write_only_and_never_echoed(api: Api) -> None:
    services = api.env.services
    root = await api.login("root")
    path = "/admin/assets/plc-1/credential"
    body = {
        "account": "default", "username": "operator", "kind": "password",
        "password": PASSWORD, "csrf_token": root.csrf,
    }  # fmt: skip
    seen: list[str] = []
    stale(api)
    asked = await root.client.post(path, data=body)  # step-up: the secret must be typed again
    seen.append(asked.text)
    assert asked.status_code == 200 and 'name="code"' in asked.text
    assert "type the secret again" in asked.text
    bad = await root.client.post(path, data={**body, "username": "two words"})
    seen.append(bad.text)
    assert bad.status_code == 422 and 'id="err-username"' in bad.text
    done = await root.client.post(path, data={**body, "code": api.code("root")})
    assert done.status_code == 303
    page = await root.client.get("/admin/assets/plc-1")
    seen.append(page.text)
    assert "set on" in page.text and "by root" in page.text and "operator" in page.text
    # Replace it with a private key: still only "set on ... by ...".
    key = asyncssh.generate_private_key("ssh-ed25519")
    pem = key.export_private_key().decode()
    replaced = await root.client.post(
        path, data={**body, "kind": "private-key", "password": "", "private_key": pem}
    )
    assert replaced.status_code == 303
    wrong = await root.client.post(
        path,
        data={**body, "kind": "private-key", "password": "", "private_key": "nope " + PASSWORD},
    )
    seen.append(wrong.text)
    assert wrong.status_code == 422 and "not an unencrypted OpenSSH private key" in wrong.text
    for path_shown in ("/admin/assets/plc-1", "/admin/assets", "/admin"):
        seen.append((await root.client.get(path_shown)).text)
    secret_body = pem.splitlines()[1]
    for text in seen:
        assert PASSWORD not in text and secret_body not in text
    async with services.sessions() as db:
        [stored] = await vault.stored(db, "plc-1")
    assert (stored.kind, stored.set_by, stored.username) == ("private-key", "root", "operator")
    made = await changes(api)
    assert [c["after"]["kind"] for c in made] == ["password", "private-key"]
    assert made[1]["before"] == {"username": "operator", "kind": "password", "value": "(redacted)"}
    for row in await audit_rows(api, "admin.changed"):
        assert PASSWORD not in row.detail and secret_body not in row.detail


# -- users -------------------------------------------------------------------------------
async def test_non_admins_get_404_for_user_pages_and_posts(api: Api) -> None:
    audrey = await auditor(api)
    for path in ("/admin/users", "/admin/users/alice"):
        assert (await audrey.client.get(path)).status_code == 404
    for suffix in ("", "/alice/roles", "/alice/status", "/alice/reset-mfa"):
        body = {"csrf_token": audrey.csrf, "username": "x", "roles": "admin", "to": "disabled"}
        assert (await audrey.client.post("/admin/users" + suffix, data=body)).status_code == 404
    assert len(await refusals(api)) == 6
    async with api.env.services.sessions() as db:
        assert (await onboarding.find_user(db, "alice")).status == "active"


async def test_invite_shows_the_link_once_and_it_enrols(api: Api) -> None:
    root = await api.login("root")
    stale(api)
    body = {"username": "vera", "roles": "vendor", "organisation": "Acme <GmbH>",
            "csrf_token": root.csrf}  # fmt: skip
    # An organisation is a policy name (grants say org:<name>): one the policy cannot hold
    # would stop it from loading, and every session with it.
    bad = await root.client.post("/admin/users", data=body)
    assert bad.status_code == 422 and 'id="err-organisation"' in bad.text
    assert "Acme &lt;GmbH&gt;" in bad.text and 'value="vera"' in bad.text
    body["organisation"] = "acme-gmbh"
    asked = await root.client.post("/admin/users", data=body)
    assert asked.status_code == 200 and 'name="code"' in asked.text and "/enroll/" not in asked.text
    done = await root.client.post("/admin/users", data={**body, "code": api.code("root")})
    assert done.status_code == 200 and done.headers["cache-control"] == "no-store"
    found = re.search(r'value="(https?://[^"]*/enroll/([^"]+))"', done.text)
    assert found is not None
    assert "acme-gmbh" in done.text and "invited" in done.text
    again = (await root.client.get("/admin/users")).text
    assert found[2] not in again  # shown once
    enrol = await api.client().get(f"/enroll/{found[2]}")
    assert enrol.status_code == 200 and "vera" in enrol.text
    [change] = await changes(api)
    assert change["after"] == {
        "roles": ["vendor"],
        "organisation": "acme-gmbh",
        "status": "invited",
    }
    assert found[2] not in json.dumps(change)


async def test_invite_bad_input_and_duplicates(api: Api) -> None:
    root = await api.login("root")
    body = {"username": "no spaces", "roles": "emperor", "csrf_token": root.csrf}
    answer = await root.client.post("/admin/users", data=body)
    assert answer.status_code == 422
    assert 'id="err-username"' in answer.text and 'id="err-roles"' in answer.text
    taken = await root.client.post(
        "/admin/users", data={"username": "alice", "roles": "vendor", "csrf_token": root.csrf}
    )
    assert taken.status_code == 422 and "already exists" in taken.text


async def test_disable_enable_roles_and_reset_mfa(api: Api) -> None:
    services = api.env.services
    alice = await api.login("alice")
    root = await api.login("root")
    page = (await root.client.get("/admin/users/alice")).text
    assert "ends their live sessions" in page
    off = {"to": "disabled", "csrf_token": root.csrf}
    assert (await root.client.post("/admin/users/alice/status", data=off)).status_code == 303
    assert (await alice.client.get("/access")).status_code in (303, 307)  # signed out
    on = {"to": "active", "csrf_token": root.csrf}
    assert (await root.client.post("/admin/users/alice/status", data=on)).status_code == 303
    roles = {"roles": ["vendor", "approver"], "csrf_token": root.csrf}
    assert (await root.client.post("/admin/users/alice/roles", data=roles)).status_code == 303
    reset = await root.client.post("/admin/users/alice/reset-mfa", data={"csrf_token": root.csrf})
    assert reset.status_code == 200 and "/enroll/" in reset.text
    async with services.sessions() as db:
        user = await onboarding.find_user(db, "alice")
        assert (user.status, user.role_names) == ("invited", ["approver", "vendor"])
    made = await changes(api)
    assert [(c["before"]["status"], c["after"]["status"]) for c in made] == [
        ("active", "disabled"), ("disabled", "active"), ("active", "active"),
        ("active", "invited"),
    ]  # fmt: skip
    assert made[2]["after"]["roles"] == ["approver", "vendor"]
    # Locking oneself out is refused, with a message, audited.
    mine = await root.client.post("/admin/users/root/status", data=off)
    assert mine.status_code == 409 and "your own account" in mine.text
    drop = await root.client.post(
        "/admin/users/root/roles", data={"roles": "vendor", "csrf_token": root.csrf}
    )
    assert drop.status_code == 409 and "own admin role" in drop.text
    assert sum(r["status"] == 409 for r in await refusals(api)) == 2


# -- grants ------------------------------------------------------------------------------
GRANT_FORM = {
    "subject_kind": "user", "subject": "alice", "object_kind": "asset", "object": "plc-1",
    "action": "ssh", "effect": "allow", "schedule": "Mon-Fri 07:00-17:00 Europe/Berlin",
}  # fmt: skip


async def test_non_admins_get_404_for_grant_pages_and_posts(api: Api) -> None:
    bob = await api.login("bob")
    assert (await bob.client.get("/admin/grants")).status_code == 404
    [grant] = [g for g in await api.env.services.authz.list_grants() if g.subject == "user:bob"]
    for path in ("/admin/grants", f"/admin/grants/{grant.id}/revoke"):
        body = {**GRANT_FORM, "csrf_token": bob.csrf}
        assert (await bob.client.post(path, data=body)).status_code == 404
    assert len(await refusals(api)) == 3
    assert grant.id in [g.id for g in await api.env.services.authz.list_grants()]


async def test_grant_preview_lists_the_next_three_windows_then_saving_rechecks(api: Api) -> None:
    services = api.env.services
    root = await api.login("root")
    before = len(await services.authz.list_grants())
    # The fixture's clock: Friday 2026-11-27 12:00 UTC (13:00 in Berlin, inside the window).
    body = {**GRANT_FORM, "csrf_token": root.csrf}
    shown = await root.client.post("/admin/grants", data={**body, "preview": "1"})
    assert shown.status_code == 200
    windows = re.findall(r"<li>(.*?) <span", shown.text.split('class="windows"')[1])
    assert windows == [
        "Fri 2026-11-27 13:00 - 17:00 Europe/Berlin",
        "Mon 2026-11-30 07:00 - 17:00 Europe/Berlin",
        "Tue 2026-12-01 07:00 - 17:00 Europe/Berlin",
    ]
    assert "open now" in shown.text and "(06:00-16:00 UTC)" in shown.text
    # Across midnight in UTC, the UTC part names its days.
    overnight = {**body, "schedule": "Mon-Sun 00:00-23:59 Europe/Berlin", "preview": "1"}
    night = await root.client.post("/admin/grants", data=overnight)
    assert "(Sat 2026-11-28 23:00-Sun 2026-11-29 22:59 UTC)" in night.text, night.text
    assert len(await services.authz.list_grants()) == before  # a preview stores nothing
    stale(api)
    asked = await root.client.post("/admin/grants", data=body)
    assert asked.status_code == 200 and 'name="code"' in asked.text and "Next windows" in asked.text
    bad = {**body, "schedule": "Mon-Fri 07:00-17:00 Mars/Olympus", "code": api.code("root")}
    refused = await root.client.post("/admin/grants", data=bad)
    assert refused.status_code == 422 and 'id="err-schedule"' in refused.text
    done = await root.client.post("/admin/grants", data={**body, "code": api.code("root")})
    assert done.status_code == 303
    [made] = [g for g in await services.authz.list_grants() if g.subject == "user:alice"]
    assert made.schedule == GRANT_FORM["schedule"]
    assert (await services.authz.authorize("alice", "plc-1", "ssh")).allowed
    [change] = await changes(api)
    assert change["after"]["schedule"] == GRANT_FORM["schedule"] and change["before"] == {}
    listed = (await root.client.get("/admin/grants")).text
    assert made.id in listed and "standing, by root" in listed


async def test_a_deny_and_a_revoke(api: Api) -> None:
    services = api.env.services
    root = await api.login("root")
    deny = {**GRANT_FORM, "schedule": "", "effect": "deny", "csrf_token": root.csrf}
    await services.authz.add_grant(
        subject_kind="user", subject="alice", object_kind="asset", obj="plc-1", action="ssh",
        actor="test",
    )  # fmt: skip
    assert (await root.client.post("/admin/grants", data=deny)).status_code == 303
    assert not (await services.authz.authorize("alice", "plc-1", "ssh")).allowed
    [denied] = [g for g in await services.authz.list_grants() if g.effect == "deny"]
    path = f"/admin/grants/{denied.id}/revoke"
    stale(api)
    asked = await root.client.post(path, data={"csrf_token": root.csrf})
    assert asked.status_code == 200 and 'name="code"' in asked.text
    done = await root.client.post(path, data={"csrf_token": root.csrf, "code": api.code("root")})
    assert done.status_code == 303
    assert (await services.authz.authorize("alice", "plc-1", "ssh")).allowed
    made = await changes(api)
    assert (made[-1]["before"]["revoked"], made[-1]["after"]["revoked"]) == (False, True)
    again = await root.client.post(path, data={"csrf_token": root.csrf})
    assert again.status_code == 404


async def test_enter_in_the_grant_form_saves_and_the_preview_is_the_second_button(
    api: Api,
) -> None:
    root = await api.login("root")
    page = (await root.client.get("/admin/grants")).text
    form = page.split('action="/admin/grants" novalidate>')[1].split("</form>")[0]
    buttons = re.findall(r"<button[^>]*>([^<]*)</button>", form)
    # A browser's Enter presses the form's first submit button (HTML "implicit submission").
    assert buttons == ["Save grant", "Preview windows"]
    assert "Enter saves" in form


# -- API tokens of every user ------------------------------------------------------------
async def _token(api: Api, username: str, scopes: list[str]) -> tuple[int, str]:
    services = api.env.services
    async with services.sessions() as db, db.begin():
        user_id = (await onboarding.find_user(db, username)).id
        new = await tokens.create_token(db, user_id, scopes, 30, api.env.clock.now)
    return new.token_id, new.token


async def test_tokens_of_every_user_listed_with_last_use_and_revoked_with_step_up(
    api: Api,
) -> None:
    alice_id, alice_token = await _token(api, "alice", ["read", "requests"])
    bob_id, _ = await _token(api, "bob", ["read"])
    used = await api.client().get(
        "/api/v1/access/now", headers={"Authorization": f"Bearer {alice_token}"}
    )
    assert used.status_code == 200
    root = await api.login("root")
    listed = (await root.client.get("/admin/tokens")).text
    rows = re.findall(r"<tr><td>(\d+)</td>(.*?)</tr>", listed, re.S)
    assert [int(i) for i, _ in rows] == [bob_id, alice_id]  # newest first
    alice_row = dict(rows)[str(alice_id)]
    assert "alice" in alice_row and "<code>read</code> <code>requests</code>" in alice_row
    assert "never" not in alice_row and "never" in dict(rows)[str(bob_id)]
    assert alice_token not in listed
    stale(api)
    path = f"/admin/tokens/{alice_id}/revoke"
    asked = await root.client.post(path, data={"csrf_token": root.csrf})
    assert asked.status_code == 200 and 'name="code"' in asked.text
    done = await root.client.post(path, data={"csrf_token": root.csrf, "code": api.code("root")})
    assert done.status_code == 303
    gone = await api.client().get(
        "/api/v1/access/now", headers={"Authorization": f"Bearer {alice_token}"}
    )
    assert gone.status_code == 401
    [change] = await changes(api)
    assert (change["actor"], change["target"], change["what"]) == (
        "root",
        f"token:{alice_id}",
        "token",
    )
    assert change["before"]["revoked"] is False and change["after"]["revoked"] is True
    assert change["after"]["owner"] == "alice" and alice_token not in json.dumps(change)
    # Revoked, unknown and malformed ids: not found, audited; nothing else changes.
    for bad in (str(alice_id), "999999", "1e3", "9" * 40):
        answer = await root.client.post(
            f"/admin/tokens/{bad}/revoke", data={"csrf_token": root.csrf}
        )
        assert answer.status_code == 404, bad
    assert len(await refusals(api)) == 4
    assert (await root.client.post(f"/admin/tokens/{bob_id}/revoke", data={})).status_code == 403


async def test_non_admins_get_404_for_token_and_alert_pages(api: Api) -> None:
    bob_id, _ = await _token(api, "bob", ["read"])
    for user in (await api.login("alice"), await auditor(api)):
        for path in ("/admin/tokens", "/admin/alerts"):
            assert (await user.client.get(path)).status_code == 404, path
        body = {"csrf_token": user.csrf}
        revoke = await user.client.post(f"/admin/tokens/{bob_id}/revoke", data=body)
        assert revoke.status_code == 404
    assert len(await refusals(api)) == 6
    root = await api.login("root")
    assert f"<td>{bob_id}</td>" in (await root.client.get("/admin/tokens")).text


# -- security alerts ---------------------------------------------------------------------
async def test_alerts_are_the_audit_events_that_raised_them(api: Api) -> None:
    audit = api.env.services.audit
    events = (
        ("upstream.hostkey_mismatch", "failure", "alice",
         {"session_id": "s1", "reason": "host key of plc-1 changed " + EVIL}),
        ("session.end", "success", "bob", {"session_id": "s2", "reason": "closed"}),
        ("session.end", "success", "bob",
         {"session_id": "s3", "reason": "client_integrity_failure"}),
        ("login.failure", "failure", "mallory", {"reason": "bad-password"}),
        ("login.failure", "failure", "mallory",
         {"reason": "certificate-not-in-register", "channel": "ssh"}),
    )  # fmt: skip
    for action, result, actor, detail in events:
        await audit.record(actor=actor, action=action, result=result, target="plc-1",
                           source="test", detail=detail)  # fmt: skip
    root = await api.login("root")
    page = await root.client.get("/admin/alerts")
    assert page.status_code == 200
    body = page.text.split('id="list"')[1]
    kinds = re.findall(r'<span class="tag tag-denied">([a-z_]+)</span>', body)
    assert kinds == ["certificate_outside_register", "client_integrity_failure", "hostkey_mismatch"]
    assert "bad-password" not in body and '"s2"' not in body  # ordinary outcomes are no alerts
    assert "&lt;script&gt;" in body and "<script>alert" not in body
    for kind in ("hostkey_mismatch", "client_integrity_failure", "certificate_outside_register"):
        assert f"<code>{kind}</code>" in page.text  # each kind the counter knows is explained


async def test_desktop_certificate_scan_pins_only_the_confirmed_fingerprint(
    api: Api, tmp_path: Path
) -> None:
    """A real Xvnc offering VeNCrypt X509Vnc: the scan shows its certificate's SHA-256,
    nothing is stored until confirmed (with the box ticked and a step-up), a fingerprint the
    asset does not present pins nothing, and the broker then reads the pin."""
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    cert, key, fingerprint = make_certificate(tmp_path)
    target = start_xvnc(tmp_path / "x", security="X509Vnc", password="Pw-12345",
                        certificate=(cert, key))  # fmt: skip
    services = api.env.services
    try:
        await services.authz.add_asset("hmi-vnc", "127.0.0.1", target.port, "vnc", actor="test")
        root = await api.login("root")
        page = (await root.client.get("/admin/assets/hmi-vnc")).text
        assert "No certificate pinned" in page and "Host keys" not in page
        scanned = await root.client.post(
            "/admin/assets/hmi-vnc/certificate-scan", data={"csrf_token": root.csrf}
        )
        assert scanned.status_code == 200 and fingerprint in scanned.text
        async with services.sessions() as db:
            assert await certificates.pinned(db, "hmi-vnc") == ()  # shown, not stored
        path = "/admin/assets/hmi-vnc/certificates"
        unticked = await root.client.post(
            path, data={"fingerprint": fingerprint, "csrf_token": root.csrf}
        )
        assert unticked.status_code == 422 and "Tick the box" in unticked.text
        other = "ab" * 32
        swapped = await root.client.post(
            path, data={"fingerprint": other, "checked": "on", "csrf_token": root.csrf}
        )
        assert swapped.status_code == 409 and "different certificate" in swapped.text
        stale(api)
        body = {"fingerprint": fingerprint, "checked": "on", "csrf_token": root.csrf}
        asked = await root.client.post(path, data=body)
        assert asked.status_code == 200 and 'name="code"' in asked.text
        done = await root.client.post(path, data={**body, "code": api.code("root")})
        assert done.status_code == 303
        async with services.sessions() as db:
            assert await certificates.pinned(db, "hmi-vnc") == (fingerprint,)
        page = (await root.client.get("/admin/assets/hmi-vnc")).text
        assert fingerprint in page and "by root" in page
        [change] = await changes(api)
        assert change["after"] == {"pinned": [fingerprint]}
        reasons = [r["reason"] for r in await refusals(api)]
        assert any("not the confirmed" in r for r in reasons)
    finally:
        target.stop()
