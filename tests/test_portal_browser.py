"""The portal as its users see it: Debian's Chromium (Playwright) against a real `conduit serve`.

Each role signs in with password and TOTP, lands on its home page, sees its own menu and not
the others' entries, opens the account page from the menu and signs out. Screenshots of every
page per role go to ``test-artifacts/portal/`` (gitignored) for a person to look at.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.browser_support import LAPTOP, TABLET, chromium, shot, watch_csp
from tests.support import Served, conduit, init_data_dir, serving

pytestmark = pytest.mark.realpeer

PASSWORD = "Copper-Meadow-Signal-7"
ASSET = "plc-line1"
MENU = {
    "vendor": ["Home", "My access", "Connect", "Sessions", "Account"],
    "approver": ["Home", "Requests", "Live sessions", "Account"],
    "auditor": ["Home", "Live sessions", "Evidence", "Account"],
    "admin": [
        "Home",
        "My access",
        "Connect",
        "Sessions",
        "Requests",
        "Live sessions",
        "Evidence",
        "Admin",
        "Account",
    ],
}
EVERY_ENTRY = {
    "Home",
    "My access",
    "Connect",
    "Sessions",
    "Requests",
    "Live sessions",
    "Evidence",
    "Admin",
    "Account",
}
HOME_SECTION = {
    "vendor": "My access",
    "approver": "Requests waiting for a decision",
    "auditor": "Evidence",
    "admin": "Requests waiting for a decision",
}
# (user, role): one login per user in this module, as a TOTP code is good for one login.
USERS = [
    ("vendor", "vendor"),
    ("approver", "approver"),
    ("auditor", "auditor"),
    ("admin", "admin"),
    ("vendor-b", "vendor"),
    ("approver-b", "approver"),
]


class Site:
    def __init__(self, server: Served, data_dir: Path, secrets: dict[str, str]) -> None:
        self.server, self.data_dir, self.secrets = server, data_dir, secrets


def _cli(data_dir: Path, *args: str, stdin: str | None = None) -> None:
    done = conduit(*args, "--data-dir", str(data_dir), stdin=stdin)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    data_dir = tmp_path_factory.mktemp("portal") / "data"
    init_data_dir(data_dir)
    secrets: dict[str, str] = {}
    for user, role in USERS:
        secret_file = data_dir.parent / f"{user}.totp"
        org = ["--org", "acme"] if role == "vendor" else []
        _cli(data_dir, "user", "add", user, "--role", role, *org, "--password-stdin",
             "--totp-secret-file", str(secret_file), stdin=PASSWORD + "\n")  # fmt: skip
        secrets[user] = secret_file.read_text().strip()
    _cli(data_dir, "zone", "add", "line-1")
    _cli(data_dir, "asset", "add", ASSET, "--host", "127.0.0.1", "--port", "22",
         "--protocol", "ssh", "--zone", "line-1")  # fmt: skip
    _cli(data_dir, "grant", "add", "--user", "vendor", "--asset", ASSET, "--action", "ssh")
    _cli(data_dir, "grant", "add", "--role", "vendor", "--asset", ASSET, "--action", "request")
    # Approvers decide requests on line-1: the queue and badge show what they may decide.
    _cli(data_dir, "grant", "add", "--role", "approver", "--zone", "line-1", "--action", "approve")
    with serving(data_dir) as (server, _ssh_port):
        yield Site(server, data_dir, secrets)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def context(browser: Browser, site: Site) -> Iterator[BrowserContext]:
    # The gateway's own self-signed certificate (checked in test_init).
    made = browser.new_context(base_url=site.server.base, ignore_https_errors=True, viewport=LAPTOP)
    try:
        yield made
    finally:
        made.close()


def _sign_in(page: Page, site: Site, user: str, shots: str = "") -> None:
    """Password, then the current TOTP code, from the login form ``page`` is on."""
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(PASSWORD)
    if shots:
        shot(page, f"{shots}-login")
    page.get_by_role("button", name="Continue").click()
    page.get_by_label(re.compile("Code from your authenticator")).fill(
        pyotp.TOTP(site.secrets[user]).now()
    )
    if shots:
        shot(page, f"{shots}-login-code")
    page.get_by_role("button", name="Sign in").click()


def _menu(page: Page) -> list[str]:
    labels = page.locator("nav[aria-label=Main] .menu > li > a").all_inner_texts()
    return [re.sub(r"\s*\d+\s*pending$", "", label).strip() for label in labels]


def _csrf(page: Page) -> str:
    value = page.locator("form.signout input[name=csrf_token]").get_attribute("value")
    assert value
    return value


def _audit_actions(site: Site) -> list[dict[str, object]]:
    exported = conduit("audit", "export", "--data-dir", str(site.data_dir))
    assert exported.returncode == 0, exported.stderr
    return [json.loads(line) for line in exported.stdout.splitlines()]


def test_signed_out_start_page_shows_sign_in_and_a_strict_csp(
    context: BrowserContext, site: Site
) -> None:
    page = context.new_page()
    csp_errors = watch_csp(page)
    response = page.goto("/")
    assert response is not None and response.status == 200
    csp = response.headers["content-security-policy"]
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    expect(page.get_by_role("link", name="Sign in")).to_be_visible()
    expect(page.locator("nav[aria-label=Main]")).to_have_count(0)
    assert "<script" not in page.content()  # script only once signed in
    shot(page, "signed-out-start")
    page.get_by_role("link", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    # A page for signed-in users sends the visitor to the login form and back afterwards.
    for path in ("/home", "/account", "/requests", "/evidence", "/connect"):
        page.goto(path)
        expect(page).to_have_url(re.compile(rf"/login\?next={re.escape(path)}$"))
    assert csp_errors == []


@pytest.mark.parametrize("user", ["vendor", "approver", "auditor", "admin"])
def test_each_role_signs_in_to_its_home_and_menu_then_signs_out(
    context: BrowserContext, site: Site, user: str
) -> None:
    role = user
    page = context.new_page()
    csp_errors = watch_csp(page)
    page.goto("/home")
    expect(page).to_have_url(re.compile(r"/login\?next=/home$"))
    _sign_in(page, site, user, shots=role)

    expect(page).to_have_url(re.compile(r"/home$"))
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Welcome, {user}")
    expect(page.get_by_role("heading", name=HOME_SECTION[role])).to_be_visible()
    expect(page.locator(".banner")).to_be_visible()
    assert _menu(page) == MENU[role]
    for absent in EVERY_ENTRY - set(MENU[role]):
        expect(page.get_by_role("link", name=absent, exact=True)).to_have_count(0)
    assert page.evaluate("typeof htmx") == "object"  # served from our origin, pinned
    if role == "vendor":
        expect(page.get_by_role("cell", name=ASSET, exact=True)).to_be_visible()  # "my access"
    shot(page, f"{role}-home")
    page.set_viewport_size(TABLET)
    shot(page, f"{role}-home-tablet")
    page.set_viewport_size(LAPTOP)

    # Every menu entry opens its page; the keyboard reaches the menu with visible focus.
    for label in MENU[role]:
        page.locator("nav[aria-label=Main]").get_by_role("link", name=label).first.click()
        expect(page.locator("[aria-current=page]")).to_contain_text(label)
        shot(page, f"{role}-{label.lower()}")
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Account {user}")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(page.locator("nav[aria-label=Main] a").first).to_be_focused()
    shot(page, f"{role}-keyboard-focus")

    # Sign-out without the session's CSRF token is refused and leaves the session alive.
    refused = page.request.post("/logout", form={"csrf_token": "forged"}, max_redirects=0)
    assert refused.status == 403
    assert page.request.post("/logout", max_redirects=0).status == 403
    page.goto("/home")
    expect(page).to_have_url(re.compile(r"/home$"))

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto("/account")
    expect(page).to_have_url(re.compile(r"/login\?next=/account$"))
    logouts = [e for e in _audit_actions(site) if e["action"] == "logout" and e["actor"] == user]
    assert len(logouts) == 1 and logouts[0]["result"] == "success"
    assert csp_errors == []


def test_vendor_gets_404_on_approver_pages_and_the_badge_refreshes_in_place(
    browser: Browser, site: Site
) -> None:
    contexts = [
        browser.new_context(base_url=site.server.base, ignore_https_errors=True, viewport=LAPTOP)
        for _ in range(2)
    ]
    try:
        vendor, approver = (c.new_page() for c in contexts)
        csp_errors = watch_csp(approver)
        approver.goto("/login")
        _sign_in(approver, site, "approver-b")
        badge = approver.locator("#pending-badge")
        expect(badge).to_have_text(re.compile(r"^0\b"))

        vendor.goto("/login")
        _sign_in(vendor, site, "vendor-b")
        for path in ("/requests", "/requests/badge", "/evidence"):
            response = vendor.goto(path)
            assert response is not None and response.status == 404, path
        expect(vendor.get_by_role("heading", level=1)).to_have_text("Not found")
        shot(vendor, "vendor-404-requests")
        refused = [e for e in _audit_actions(site)
                   if e["action"] == "portal.refused" and e["actor"] == "vendor-b"]  # fmt: skip
        assert sorted(str(e["target"]) for e in refused) == [
            "/evidence", "/requests", "/requests/badge"]  # fmt: skip

        start = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
        filed = vendor.request.post(
            "/api/v1/requests",
            data={
                "assets": [ASSET],
                "actions": ["ssh"],
                "reason": "replace the line 1 firmware",
                "start": start,
                "duration_minutes": 30,
            },
            headers={"X-CSRF-Token": _csrf(vendor)},
        )
        assert filed.status == 201, filed.text()

        # The badge is an htmx partial: it refreshes in place, without a page load.
        approver.evaluate("window.conduitMarker = 1")
        approver.evaluate("htmx.trigger('#pending-badge', 'refresh')")
        expect(badge).to_have_text(re.compile(r"^1\b"))
        assert approver.evaluate("window.conduitMarker") == 1  # same document: no navigation
        shot(approver, "approver-badge-refreshed")
        approver.locator("nav[aria-label=Main]").get_by_role("link", name="Requests").click()
        expect(approver.get_by_role("cell", name="replace the line 1 firmware")).to_be_visible()
        shot(approver, "approver-requests-one-pending")
        assert csp_errors == []
    finally:
        for c in contexts:
            c.close()


def test_only_named_npm_files_are_served(site: Site) -> None:
    with site.server.client() as client:
        served = client.get("/assets/htmx.min.js")
        assert served.status_code == 200 and "htmx" in served.text[:2000]
        assert served.headers["content-type"].startswith("text/javascript")
        for path in ("/assets/htmx.esm.js", "/assets/..%2Fpackage.json", "/node_modules/htmx.org"):
            assert client.get(path).status_code == 404, path
