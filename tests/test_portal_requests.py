"""Access requests in the browser: a vendor asks, approvers decide (Chromium against a real
`conduit serve`).

Acceptance 1 and 2 of issue 15: the vendor sees an asset as requestable, files a 30-minute
request (an empty reason and a window past the policy maximum are refused with visible
messages); an approver sees the badge, opens the request, is asked for a fresh code inline
and approves; a zone needing two approvers needs a second one; the requester cannot approve
their own request. Then the vendor's asset is available now until HH:MM. Negative paths:
another vendor's request answers 404, a post without CSRF token is refused, vendors get 404
on approver pages. Screenshots go to ``test-artifacts/portal/``.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import time
from collections.abc import Iterator

import pyotp
import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect

from tests.browser_support import LAPTOP, TABLET, chromium, shot, watch_csp
from tests.support import conduit, init_data_dir, serving
from tests.test_portal_browser import PASSWORD, Site, _audit_actions, _cli, _sign_in

pytestmark = pytest.mark.realpeer

PLC = "plc-line1"  # zone line-1: one approval, at most 2 hours
SIS = "sis-1"  # zone safety: two approvals
HMI = "hmi-2"  # a standing weekly window for the vendor, not open now
USERS = [
    ("vendor", ["vendor"], "acme"),
    ("vendor-b", ["vendor"], "acme"),
    ("approver", ["approver"], ""),
    ("approver-2", ["approver"], ""),
    ("lead", ["vendor", "approver"], "acme"),  # files requests and approves others'
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    data_dir = tmp_path_factory.mktemp("requests") / "data"
    init_data_dir(data_dir)
    secrets: dict[str, str] = {}
    for user, roles, org in USERS:
        secret_file = data_dir.parent / f"{user}.totp"
        extra = [a for role in roles for a in ("--role", role)] + (["--org", org] if org else [])
        _cli(data_dir, "user", "add", user, *extra, "--password-stdin",
             "--totp-secret-file", str(secret_file), stdin=PASSWORD + "\n")  # fmt: skip
        secrets[user] = secret_file.read_text().strip()
    _cli(data_dir, "zone", "add", "line-1", "--max-request-hours", "2")
    _cli(data_dir, "zone", "add", "safety", "--approvals", "2")
    for asset, zone, protocol in ((PLC, "line-1", "ssh"), (SIS, "safety", "ssh"),
                                  (HMI, "line-1", "vnc")):  # fmt: skip
        _cli(data_dir, "asset", "add", asset, "--host", "127.0.0.1", "--port", "22",
             "--protocol", protocol, "--zone", zone)  # fmt: skip
    for zone in ("line-1", "safety"):
        _cli(data_dir, "grant", "add", "--org", "acme", "--zone", zone, "--action", "request")
        _cli(data_dir, "grant", "add", "--role", "approver", "--zone", zone, "--action", "approve")
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).strftime("%a")
    _cli(data_dir, "grant", "add", "--user", "vendor", "--asset", HMI, "--action", "vnc",
         "--schedule", f"{later} 07:00-08:00 UTC")  # fmt: skip
    with serving(data_dir) as (server, _ssh_port):
        yield Site(server, data_dir, secrets)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


class People:
    """One signed-in browser context per user for the whole module: a TOTP code signs in
    once, so each person signs in once."""

    def __init__(self, browser: Browser, site: Site) -> None:
        self.browser, self.site = browser, site
        self.pages: dict[str, Page] = {}
        self.contexts: list[BrowserContext] = []

    def __call__(self, user: str) -> Page:
        if user not in self.pages:
            context = self.browser.new_context(
                base_url=self.site.server.base, ignore_https_errors=True, viewport=LAPTOP,
                timezone_id="Europe/Berlin",
            )  # fmt: skip
            self.contexts.append(context)
            page = context.new_page()
            page.goto("/login")
            _sign_in(page, self.site, user)
            expect(page).to_have_url(re.compile(r"/home$"))
            self.pages[user] = page
        return self.pages[user]

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture(scope="module")
def people(browser: Browser, site: Site) -> Iterator[People]:
    made = People(browser, site)
    try:
        yield made
    finally:
        made.close()


def _row(page: Page, asset: str) -> Locator:
    return page.locator("table.access tbody tr").filter(has=page.get_by_role("cell", name=asset))


def _csrf(page: Page) -> str:
    value = page.locator("form.signout input[name=csrf_token]").get_attribute("value")
    assert value
    return value


def _age_second_factor(site: Site, user: str) -> None:
    """Make ``user``'s portal sessions' last second factor 10 minutes old (limit: 5)."""
    with sqlite3.connect(site.data_dir / "conduit.db") as db:
        rows = db.execute(
            "SELECT s.id, s.mfa_at FROM portal_sessions s JOIN users u ON u.id = s.user_id "
            "WHERE u.username = ?",
            (user,),
        ).fetchall()
        assert rows
        for session_id, mfa_at in rows:
            aged = dt.datetime.fromisoformat(mfa_at) - dt.timedelta(minutes=10)
            db.execute(
                "UPDATE portal_sessions SET mfa_at = ? WHERE id = ?",
                (aged.isoformat(sep=" "), session_id),
            )


def _next_code(site: Site, user: str) -> str:
    """The code of the next 30-second step: the sign-in spent the current one."""
    return pyotp.TOTP(site.secrets[user]).at(time.time() + 30)


def _file(page: Page, asset: str, action: str, minutes: str, reason: str) -> None:
    page.goto(f"/access/request?asset={asset}")
    expect(page.get_by_role("checkbox", name=re.compile(asset))).to_be_checked()
    page.get_by_role("checkbox", name=action, exact=True).check()
    page.get_by_label("Duration in minutes").fill(minutes)
    page.get_by_label("Reason").fill(reason)
    page.get_by_role("button", name="File the request").click()


def _request_id(page: Page) -> str:
    found = re.search(r"filed=(r-[0-9a-f]+)", page.url)
    assert found, page.url
    return found.group(1)


def _state(site: Site, request_id: str) -> str:
    listed = conduit("request", "list", "--data-dir", str(site.data_dir))
    assert listed.returncode == 0, listed.stderr
    line = next(x for x in listed.stdout.splitlines() if request_id in x)
    return line


FILED: dict[str, str] = {}


def test_vendor_files_a_request_and_the_form_refuses_bad_input(people: People) -> None:
    vendor = people("vendor")
    csp_errors = watch_csp(vendor)
    vendor.get_by_role("navigation", name="Main").get_by_role("link", name="My access").click()
    expect(vendor).to_have_url(re.compile(r"/access$"))
    expect(_row(vendor, PLC)).to_contain_text("requestable")
    expect(_row(vendor, SIS)).to_contain_text("requestable")
    hmi = _row(vendor, HMI)
    expect(hmi).to_contain_text(re.compile(r"next window \w{3} 07:00 UTC"))
    expect(hmi.locator(".local")).to_contain_text("your time")
    shot(vendor, "vendor-access")

    vendor.get_by_role("link", name=f"Request access to {PLC}").click()
    expect(vendor.get_by_role("checkbox", name=re.compile(PLC))).to_be_checked()
    expect(
        vendor.get_by_text("zone line-1, ssh, at most 2 hours")
    ).to_be_visible()  # the policy's maximum
    shot(vendor, "vendor-request-form")
    vendor.set_viewport_size(TABLET)
    shot(vendor, "vendor-request-form-tablet")
    vendor.set_viewport_size(LAPTOP)

    # Empty reason: refused beside the field, and what was typed stays.
    vendor.get_by_role("checkbox", name="ssh", exact=True).check()
    vendor.get_by_label("Duration in minutes").fill("30")
    vendor.get_by_role("button", name="File the request").click()
    expect(vendor.locator("#err-reason")).to_have_text(re.compile("Say why you need access"))
    expect(vendor.get_by_label("Duration in minutes")).to_have_value("30")
    expect(vendor.get_by_role("checkbox", name="ssh", exact=True)).to_be_checked()
    shot(vendor, "vendor-request-empty-reason")

    # A window past the policy's maximum (2 hours in zone line-1).
    vendor.get_by_label("Reason").fill("replace the line 1 firmware")
    vendor.get_by_label("Duration in minutes").fill("180")
    vendor.get_by_role("button", name="File the request").click()
    expect(vendor.locator("#err-duration")).to_have_text(re.compile("at most 120 minutes"))
    expect(vendor.get_by_label("Reason")).to_have_value("replace the line 1 firmware")
    vendor.set_viewport_size(TABLET)
    shot(vendor, "vendor-request-too-long-tablet")
    vendor.set_viewport_size(LAPTOP)

    # A start in the past.
    vendor.get_by_label("Duration in minutes").fill("30")
    vendor.get_by_role("radio", name=re.compile("Later")).check()
    vendor.get_by_label("Date").fill("2020-01-01")
    vendor.get_by_label("Time").fill("08:00")
    vendor.get_by_role("button", name="File the request").click()
    expect(vendor.locator("#err-start")).to_have_text(re.compile("in the past"))

    vendor.get_by_role("radio", name="Now").check()
    vendor.get_by_role("button", name="File the request").click()
    expect(vendor).to_have_url(re.compile(r"/access/requests\?filed=r-"))
    FILED[PLC] = _request_id(vendor)
    expect(vendor.get_by_role("status")).to_contain_text("waits for approval")
    expect(vendor.locator(f"#req-{FILED[PLC]}")).to_contain_text("pending")

    _file(vendor, SIS, "ssh", "30", "calibrate the safety loop")
    FILED[SIS] = _request_id(vendor)
    shot(vendor, "vendor-my-requests")
    vendor.goto("/access")
    expect(_row(vendor, PLC)).to_contain_text("request pending")

    refusals = [e for e in _audit_actions(people.site)
                if e["action"] == "portal.refused" and e["actor"] == "vendor"]  # fmt: skip
    assert len(refusals) == 3, refusals  # empty reason, too long, past start
    assert csp_errors == []


def test_approvers_decide_with_inline_step_up_and_two_for_the_safety_zone(
    people: People,
) -> None:
    site = people.site
    approver = people("approver")
    csp_errors = watch_csp(approver)
    expect(approver.locator("#pending-badge")).to_have_text(re.compile(r"^2\b"))
    approver.get_by_role("navigation", name="Main").get_by_role("link", name="Requests").click()
    expect(approver.get_by_role("cell", name="replace the line 1 firmware")).to_be_visible()
    shot(approver, "approver-queue")
    approver.get_by_role("link", name=re.compile(f"Open request of vendor for {PLC}")).click()
    expect(approver.get_by_text("acme")).to_be_visible()  # the vendor organisation
    expect(approver.get_by_text("0 of 1")).to_be_visible()
    shot(approver, "approver-request")

    # The second factor is older than the limit: the same form asks for a code.
    _age_second_factor(site, "approver")
    approver.get_by_label(re.compile("Comment")).fill("ok, call the shift lead first")
    approver.get_by_role("button", name="Approve").click()
    code = approver.get_by_role("textbox", name=re.compile("Code from your authenticator"))
    expect(code).to_be_visible()
    expect(approver.get_by_label(re.compile("Comment"))).to_have_value(
        "ok, call the shift lead first"
    )
    assert "pending" in _state(site, FILED[PLC])  # nothing decided without the code
    shot(approver, "approver-request-step-up")
    code.fill("000000" if _next_code(site, "approver") != "000000" else "111111")
    approver.get_by_role("button", name="Confirm: approve").click()
    expect(approver.get_by_text("That code was not accepted")).to_be_visible()
    assert "pending" in _state(site, FILED[PLC])
    approver.get_by_role("textbox", name=re.compile("Code from your authenticator")).fill(
        _next_code(site, "approver")
    )
    # The code form carries the decision chosen (approve) and nothing else.
    expect(approver.get_by_role("button", name="Deny")).to_have_count(0)
    approver.get_by_role("button", name="Confirm: approve").click()
    expect(approver).to_have_url(re.compile(rf"/requests/{FILED[PLC]}\?done=approved$"))
    expect(approver.get_by_role("status")).to_have_text("Approved.")
    expect(approver.locator(".tag")).to_have_text("approved")
    expect(approver.get_by_text("1 of 1")).to_be_visible()
    shot(approver, "approver-request-approved")

    # The safety zone needs two approvers: the first leaves it pending at 1 of 2.
    approver.goto(f"/requests/{FILED[SIS]}")
    approver.get_by_role("button", name="Approve").click()
    expect(approver.get_by_text("1 of 2")).to_be_visible()
    expect(approver.locator(".tag")).to_have_text("pending")
    expect(approver.get_by_role("button", name="Approve")).to_have_count(1)
    approver.get_by_role("button", name="Approve").click()  # a second yes from the same person
    expect(approver.get_by_role("alert")).to_contain_text("already approved")
    shot(approver, "approver-request-one-of-two")
    second = people("approver-2")
    expect(second.locator("#pending-badge")).to_have_text(re.compile(r"^1\b"))
    second.goto(f"/requests/{FILED[SIS]}")
    expect(second.get_by_text("Approved by approver")).to_be_visible()
    second.get_by_role("button", name="Approve").click()
    expect(second.locator(".tag")).to_have_text("approved")
    expect(second.locator("#pending-badge")).to_have_text(re.compile(r"^0\b"))
    assert csp_errors == []

    # The vendor's assets are available now, until the end of the approved window.
    vendor = people("vendor")
    vendor.goto("/access")
    for asset in (PLC, SIS):
        row = _row(vendor, asset)
        expect(row).to_contain_text(re.compile(r"available now until (\w{3} )?\d\d:\d\d UTC"))
        expect(row.locator(".local")).to_contain_text("your time")
    shot(vendor, "vendor-access-approved")
    vendor.goto("/access/requests")
    expect(vendor.locator(f"#req-{FILED[PLC]}")).to_contain_text("ok, call the shift lead first")
    shot(vendor, "vendor-my-requests-approved")
    vendor.goto("/home")
    expect(_row(vendor, PLC)).to_contain_text("available now")
    shot(vendor, "vendor-home-access")


def test_requester_cannot_approve_their_own_request(people: People) -> None:
    lead = people("lead")
    _file(lead, PLC, "sftp-read", "20", "copy the line 1 logs")
    own = _request_id(lead)
    lead.goto("/requests")
    expect(lead.get_by_role("cell", name="copy the line 1 logs")).to_have_count(0)
    lead.goto(f"/requests/{own}")
    expect(lead.get_by_text("This is your own request")).to_be_visible()
    expect(lead.get_by_role("button", name="Approve")).to_have_count(0)
    expect(lead.get_by_role("button", name="Deny")).to_have_count(0)
    shot(lead, "lead-own-request")
    posted = lead.request.post(
        f"/requests/{own}/approve", form={"csrf_token": _csrf(lead)}, max_redirects=0
    )
    assert posted.status == 403 and "cannot approve your own request" in posted.text()
    api = lead.request.post(
        f"/api/v1/requests/{own}/approve", data={}, headers={"X-CSRF-Token": _csrf(lead)}
    )
    assert api.status == 403
    assert "pending" in _state(people.site, own)


def test_other_vendors_requests_answer_not_found_and_posts_need_csrf(people: People) -> None:
    site = people.site
    other = people("vendor-b")
    theirs, missing = FILED[PLC], "r-0000000000000000"
    answers = []
    for request_id in (theirs, missing):
        response = other.request.post(
            f"/access/requests/{request_id}/cancel", form={"csrf_token": _csrf(other)},
            max_redirects=0,
        )  # fmt: skip
        answers.append((response.status, response.text()))
    assert answers[0][0] == answers[1][0] == 404
    assert answers[0][1].replace(theirs, "ID") == answers[1][1].replace(missing, "ID")
    other.goto("/access/requests")
    expect(other.get_by_text("replace the line 1 firmware")).to_have_count(0)
    for path in ("/requests", f"/requests/{theirs}", "/requests/badge"):
        response = other.goto(path)
        assert response is not None and response.status == 404, path
    shot(other, "vendor-b-404-request")

    # A post without the session's CSRF token is refused, and nothing is filed.
    forged = other.request.post(
        "/access/request",
        form={"assets": PLC, "actions": "ssh", "when": "now", "duration_minutes": "30",
              "reason": "no token"},
        max_redirects=0,
    )  # fmt: skip
    assert forged.status == 403
    other.goto("/access/requests")
    expect(other.get_by_text("no token")).to_have_count(0)

    # vendor-b files and cancels their own request.
    _file(other, PLC, "ssh", "15", "check the cabinet temperature")
    mine = _request_id(other)
    other.locator(f"#req-{mine}").get_by_role("button", name=re.compile("Cancel")).click()
    expect(other.locator(f"#req-{mine}")).to_contain_text("cancelled")
    expect(other.locator(f"#req-{mine}").get_by_role("button")).to_have_count(0)
    shot(other, "vendor-b-cancelled")

    refused = [e for e in _audit_actions(site)
               if e["action"] == "portal.refused" and e["actor"] == "vendor-b"]  # fmt: skip
    targets = [str(e["target"]) for e in refused]
    assert f"/access/requests/{theirs}/cancel" in targets
    assert f"/access/requests/{missing}/cancel" in targets
    assert "/access/request" in targets  # the post without CSRF token
    assert "/requests" in targets


def test_vendor_pages_need_a_session(site: Site) -> None:
    with site.server.client() as client:
        for path in ("/access", "/access/request", "/access/requests"):
            response = client.get(path)
            assert response.status_code == 303 and "/login?next=" in response.headers["location"]
        assert client.post("/access/request", data={"reason": "x"}).status_code == 401
