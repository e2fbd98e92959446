"""An RDP desktop as its user sees it: Debian's Chromium (Playwright) against a real
``conduit serve`` in front of a real xrdp + xorgxrdp (tests/rdp_target.py), drawn by the
gateway's renderer (a private Xvnc and xfreerdp) and relayed as RFB like a VNC desktop.

The vendor opens the desktop from the connect page and types a command into the xterm of the
RDP session; its file appears in the RDP user's home. Then the asset's certificate changes
(xrdp restarted with a new one): the next desktop is refused, the page says the asset's
identity could not be verified, and the audit has the host-key/certificate mismatch.
"""

from __future__ import annotations

import pwd
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, expect

from gateway.desktop.renderer import ensure_render_account
from tests.browser_support import chromium, portal_context, shot, watch_csp
from tests.rdp_target import RDPTarget
from tests.support import Served, conduit, init_data_dir, serving
from tests.test_portal_desktop import PASSWORD, _sign_in, _type_on_desktop, _wait_file

pytestmark = pytest.mark.realpeer

ASSET = "hmi-rdp"


@dataclass
class Site:
    server: Served
    data_dir: Path
    secrets: dict[str, str]

    def cli(self, *args: str, stdin: str | None = None) -> str:
        done = conduit(*args, "--data-dir", str(self.data_dir), stdin=stdin)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def audit(self) -> list[dict[str, object]]:
        import json

        return [json.loads(line) for line in self.cli("audit", "export").splitlines()]


@pytest.fixture(scope="module")
def site(rdp_target: RDPTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    ensure_render_account()
    base = tmp_path_factory.mktemp("rdp")
    data_dir = base / "data"
    init_data_dir(data_dir)
    secret_file = base / "vendor.totp"
    done = conduit("user", "add", "vendor", "--role", "vendor", "--org", "acme",
                   "--password-stdin", "--totp-secret-file", str(secret_file),
                   "--data-dir", str(data_dir), stdin=PASSWORD + "\n")  # fmt: skip
    assert done.returncode == 0, done.stderr
    for args, stdin in (
        (("asset", "add", ASSET, "--host", "127.0.0.1", "--port", str(rdp_target.port),
          "--protocol", "rdp"), None),
        (("asset", "credential", ASSET, "--username", rdp_target.username, "--password-stdin"),
         rdp_target.password + "\n"),
        (("asset", "pin-cert", ASSET, "--fingerprint", rdp_target.fingerprint), None),
        (("grant", "add", "--user", "vendor", "--asset", ASSET, "--action", "rdp"), None),
    ):  # fmt: skip
        done = conduit(*args, "--data-dir", str(data_dir), stdin=stdin)
        assert done.returncode == 0, done.stderr
    with serving(data_dir) as (server, _ssh_port):
        yield Site(server, data_dir, {"vendor": secret_file.read_text().strip()})


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def _context(browser: Browser, site: Site) -> BrowserContext:
    return portal_context(browser, site.server.base)


def test_vendor_types_into_an_rdp_desktop_and_a_changed_certificate_is_refused(
    browser: Browser, site: Site, rdp_target: RDPTarget
) -> None:
    home = Path(pwd.getpwnam(rdp_target.username).pw_dir)
    made = home / "made-over-rdp"
    ctx = _context(browser, site)
    page = ctx.new_page()
    violations = watch_csp(page)
    try:
        _sign_in(page, site, "vendor")  # type: ignore[arg-type]
        page.goto("/connect")
        card = page.locator("section.asset", has_text=ASSET)
        expect(card.get_by_text(re.compile(r"^\(RDP, "))).to_be_visible()
        card.get_by_role("link", name="Open desktop in browser").click()
        expect(page.locator("#desk-status")).to_have_text(f"Connected to {ASSET}.", timeout=40000)
        time.sleep(1)  # the session's xterm maps after the first frame
        _type_on_desktop(page, f"touch {made}")
        _wait_file(made, deadline_s=30)
        shot(page, "desktop-rdp")
        assert violations == []

        rdp_target.rotate_certificate()  # the same sign-in: a TOTP code is good once
        page.goto(f"/connect/{ASSET}/desktop")
        banner = page.locator("#desk-end")
        expect(banner).to_be_visible(timeout=40000)
        expect(banner).to_contain_text("identity could not be verified")
        shot(page, "desktop-rdp-certificate-changed")
    finally:
        ctx.close()
    actions = [e["action"] for e in site.audit()]
    assert "upstream.hostkey_mismatch" in actions
