"""Acceptance 1 in Chromium against a real ``conduit serve`` and a real OpenSSH sshd asset.

From an empty site made by ``conduit init``: the first admin enrols through the one-time
link ``conduit serve`` prints, then in the browser only adds a zone needing one approval,
an SSH asset pointing at the sshd target, scans and confirms its host key, stores its
private key, invites a vendor (who follows the link in a second browser context and enrols
TOTP), and adds a schedule grant whose preview lists the next three windows (computed here
independently). The vendor then runs ``hostname`` on the asset with native OpenSSH, answering
password and TOTP code through ``SSH_ASKPASS``. Screenshots of every admin page go to
``test-artifacts/portal/`` (laptop, and a tablet for the grant form).
"""

from __future__ import annotations

import datetime as dt
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pyotp
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.browser_support import LAPTOP, TABLET, chromium, shot
from tests.sshd_target import SSHDTarget
from tests.support import Served, init_data_dir, serving
from tests.test_portal_browser import PASSWORD

pytestmark = pytest.mark.realpeer
VENDOR_PASSWORD = "Vendor-Lantern-Orbit-42"
TZ = "Europe/Berlin"
SCHEDULE = f"Mon-Sun 00:00-23:59 {TZ}"


class Authenticator:
    """A person's TOTP app: codes are single-use, so a second code waits for the next step."""

    def __init__(self, secret: str) -> None:
        self.totp = pyotp.TOTP(secret)
        self.used = -1

    def code(self) -> str:
        deadline = time.monotonic() + 40
        while int(time.time()) // 30 <= self.used:
            assert time.monotonic() < deadline, "no fresh TOTP step"
            time.sleep(0.5)
        self.used = int(time.time()) // 30
        return self.totp.at(self.used * 30)


class Site:
    def __init__(self, server: Served, ssh_port: int, work: Path) -> None:
        self.server, self.ssh_port, self.work = server, ssh_port, work


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("admin")
    init_data_dir(work / "data")  # no user at all: the first admin enrols by the link
    with serving(work / "data") as (server, ssh_port):
        yield Site(server, ssh_port, work)


@pytest.fixture(scope="module")
def browser(site: Site) -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def _shot(page: Page, name: str) -> None:
    shot(page, f"admin-{name}")


def _context(browser: Browser, site: Site) -> BrowserContext:
    return browser.new_context(base_url=site.server.base, ignore_https_errors=True, viewport=LAPTOP)


def _enrol(page: Page, path: str, password: str, username: str = "") -> Authenticator:
    """Follow an enrolment link: the secret the page shows, the first code, the password."""
    page.goto(path)
    expect(page.get_by_role("heading", name="Enrolment")).to_be_visible()
    if username:
        page.get_by_label("Administrator username").fill(username)
    page.get_by_label("New password").fill(password)
    page.get_by_label("Repeat the password").fill(password)
    app = Authenticator(page.locator("code.secret").inner_text().strip())
    page.get_by_label("First code from the app").fill(app.code())
    page.get_by_role("button", name="Enrol").click()
    expect(page.get_by_role("heading", name="Enrolment complete")).to_be_visible()
    return app


def _sign_in(page: Page, user: str, password: str, app: Authenticator) -> None:
    page.goto("/login")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Continue").click()
    page.get_by_label(re.compile("Code from your authenticator")).fill(app.code())
    page.get_by_role("button", name="Sign in").click()
    expect(
        page.get_by_role("link", name="Sign out").or_(page.get_by_role("button", name="Sign out"))
    ).to_be_visible()


def _submit(
    page: Page, button: str, app: Authenticator, refill: tuple[str, str] | None = None
) -> None:
    """Click ``button``; when the form asks for a fresh code (inline step-up), give one."""
    page.get_by_role("button", name=button).click()
    page.wait_for_load_state()
    step = page.locator(".stepup input[name=code]")
    if step.count():
        if refill is not None:  # a secret is not kept across the step-up: type it again
            page.locator(refill[0]).fill(refill[1])
        step.fill(app.code())
        page.get_by_role("button", name=button).click()


def _expected_windows(now: dt.datetime) -> list[str]:
    """The preview rows for SCHEDULE from ``now``, computed here with zoneinfo alone."""
    tz = ZoneInfo(TZ)
    local = now.astimezone(tz)
    days = [local.date() + dt.timedelta(days=n) for n in range(3)]
    first = f"{days[0]:%a %Y-%m-%d} {local:%H:%M} - 23:59 {TZ}"
    rest = [f"{d:%a %Y-%m-%d} 00:00 - 23:59 {TZ}" for d in days[1:]]
    return [first, *rest]


def _askpass_ssh(
    site: Site, route: str, password: str, code: str
) -> subprocess.CompletedProcess[str]:
    """Native OpenSSH as the vendor: the password at the first prompt, the code at the
    verification prompt (SSH_ASKPASS); no config file, its own known-hosts file."""
    work = site.work
    (work / "pw").write_text(password)
    (work / "code").write_text(code)
    script = work / "askpass.sh"
    script.write_text(f'#!/bin/sh\ncase "$1" in\n  *erification*) cat {work}/code ;;\n'
                      f"  *) cat {work}/pw ;;\nesac\n")  # fmt: skip
    script.chmod(0o700)
    env = {"PATH": "/usr/bin:/bin", "SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force",
           "DISPLAY": ":0", "HOME": str(work)}  # fmt: skip
    argv = ["setsid", "ssh", "-F", "/dev/null", "-p", str(site.ssh_port),
            "-o", f"UserKnownHostsFile={work / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=accept-new", "-o", "PubkeyAuthentication=no",
            "-o", "ConnectTimeout=10", f"{route}@127.0.0.1", "hostname"]  # fmt: skip
    return subprocess.run(argv, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60, check=False)  # fmt: skip


def test_acceptance_1_from_conduit_init_to_a_vendor_ssh_session(
    browser: Browser, site: Site, sshd: SSHDTarget
) -> None:
    link = site.server.wait_for_output(r"https?://\S+(/enroll/\S+)")
    context = _context(browser, site)
    page = context.new_page()
    admin = _enrol(page, link.group(1), PASSWORD, username="ada")
    _shot(page, "enrolled")
    _sign_in(page, "ada", PASSWORD, admin)
    page.get_by_role("link", name="Admin").click()
    expect(page.get_by_role("heading", name="Administration")).to_be_visible()
    _shot(page, "overview")

    # A zone needing one approval (and bad input answered beside the field).
    page.get_by_role("link", name="Zones").first.click()
    page.get_by_label("Name").fill("line-1")
    page.get_by_label("Approvals a request needs").fill("1")
    _submit(page, "Add zone", admin)
    expect(page.locator("ul.tree")).to_contain_text("line-1")
    expect(page.locator("ul.tree")).to_contain_text("1 approval")
    page.get_by_label("Name").fill("bad name!")
    page.get_by_role("button", name="Add zone").click()
    expect(page.locator("#err-name")).to_be_visible()
    _shot(page, "zones-refused")

    # The SSH asset, its host key scanned and confirmed, its key stored.
    page.goto("/admin/assets")
    page.get_by_label("Name").fill("plc-7")
    page.get_by_label("Host").fill("127.0.0.1")
    page.get_by_label("Port").fill(str(sshd.port))
    page.get_by_label("line-1").check()
    _submit(page, "Add asset", admin)
    expect(page.get_by_role("heading", name="Asset plc-7")).to_be_visible()
    page.get_by_role("button", name="Scan host keys").click()
    offered = page.locator("input[name=fingerprint]")
    expect(offered.first).to_be_visible()
    wanted = _fingerprint(sshd.directory / "host_ed25519.pub")
    page.locator(f'input[name=fingerprint][value="{wanted}"]').check()
    _shot(page, "asset-scanned")
    _submit(page, "Pin the ticked keys", admin)
    expect(page.locator("section[aria-labelledby=hostkeys] table")).to_contain_text(wanted)
    key_text = sshd.client_key.read_text()
    page.get_by_label("User name on the asset").fill("root")
    page.get_by_role("radio", name="Private key").check()
    page.locator("#private_key").fill(key_text)
    _submit(page, "Store credential", admin, refill=("#private_key", key_text))
    expect(page.locator("section[aria-labelledby=credentials] table")).to_contain_text("root")
    assert "PRIVATE KEY" not in page.content()  # write-only
    _shot(page, "asset")
    page.goto("/admin/assets")
    _shot(page, "assets")

    # A vendor invited; the link followed in a second browser (another person).
    page.goto("/admin/users")
    page.get_by_label("User name").fill("vera")
    page.get_by_role("checkbox", name="vendor").check()
    page.get_by_label(re.compile("Vendor organisation")).fill("Acme Corp")
    page.get_by_role("button", name="Invite").click()
    expect(page.locator("#err-organisation")).to_be_visible()  # the policy could not hold it
    expect(page.get_by_label("User name")).to_have_value("vera")  # nothing typed is lost
    page.get_by_label(re.compile("Vendor organisation")).fill("acme")
    _submit(page, "Invite", admin)
    invite = page.get_by_label("Enrolment link").input_value()
    _shot(page, "users-invited")
    vendor_context = _context(browser, site)
    vendor = _enrol(vendor_context.new_page(), re.sub(r"^https?://[^/]+", "", invite),
                    VENDOR_PASSWORD)  # fmt: skip
    vendor_context.close()
    page.goto("/admin/users")
    expect(page.locator("table")).to_contain_text("vera")

    # A schedule grant: the preview lists the next three windows, then it is saved.
    page.goto("/admin/grants")
    page.get_by_label("Name").fill("vera")
    page.get_by_label("Asset or zone").fill("plc-7")
    page.get_by_label("Schedule").fill(SCHEDULE)
    _wait_clear_of_midnight()
    before = dt.datetime.now(dt.UTC)
    page.get_by_role("button", name="Preview windows").click()
    rows = page.locator("ol.windows li")
    expect(rows).to_have_count(3)
    after = dt.datetime.now(dt.UTC)
    shown = [re.sub(r"\s+\(.*\)$", "", r).strip() for r in rows.all_inner_texts()]
    assert shown in (_expected_windows(before), _expected_windows(after)), shown
    _shot(page, "grants-preview")
    page.set_viewport_size(TABLET)
    _shot(page, "grants-preview-tablet")
    page.set_viewport_size(LAPTOP)
    page.get_by_label("Schedule").press("Enter")  # Enter saves, it does not preview again
    page.wait_for_load_state()
    if page.locator(".stepup input[name=code]").count():
        page.locator(".stepup input[name=code]").fill(admin.code())
        page.locator(".stepup input[name=code]").press("Enter")
    expect(page.locator("table")).to_contain_text("user:vera")
    _shot(page, "grants")

    # The vendor's native ssh session to the asset.
    done = _askpass_ssh(site, "vera+plc-7", VENDOR_PASSWORD, vendor.code())
    assert done.returncode == 0, done.stderr + "".join(site.server._err_lines[-30:])
    assert done.stdout.strip() == socket.gethostname()

    _tokens_of_every_user(page, site, admin)
    # A rebuilt (or impersonated) asset: the next session is refused and raises an alert.
    sshd.rotate_host_key()
    refused = _askpass_ssh(site, "vera+plc-7", VENDOR_PASSWORD, vendor.code())
    assert refused.returncode != 0
    page.goto("/admin/alerts")
    row = page.locator("table tbody tr").first
    expect(row).to_contain_text("hostkey_mismatch")
    expect(row).to_contain_text("vera")
    _shot(page, "alerts")
    page.set_viewport_size(TABLET)
    _shot(page, "alerts-tablet")
    context.close()


def _tokens_of_every_user(page: Page, site: Site, admin: Authenticator) -> None:
    """The admin makes a token on their account page, uses it once, sees it listed with
    its last use, and revokes it; the token stops working."""
    page.goto("/account")
    page.get_by_label("Scopes").fill("read")
    page.get_by_role("button", name="Create token").click()
    token = page.locator(".new-secret code").inner_text().strip()
    with site.server.client() as client:
        used = client.get("/api/v1/access/now", headers={"Authorization": f"Bearer {token}"})
        assert used.status_code == 200
        page.goto("/admin/tokens")
        row = page.locator("table tbody tr", has_text="ada")
        expect(row).to_contain_text("read")
        expect(row.locator("td").nth(4)).not_to_contain_text("never")
        _shot(page, "tokens")
        _submit(page, "Revoke", admin)
        expect(page.get_by_text("No API tokens in use.")).to_be_visible()
        gone = client.get("/api/v1/access/now", headers={"Authorization": f"Bearer {token}"})
        assert gone.status_code == 401


def _fingerprint(public_key: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(public_key)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return out.split()[1]


def _wait_clear_of_midnight() -> None:
    """The schedule closes at 23:59 local time: start the last minutes after midnight."""
    deadline = time.monotonic() + 150
    while dt.datetime.now(ZoneInfo(TZ)).strftime("%H:%M") >= "23:57":
        assert time.monotonic() < deadline
        time.sleep(1)
