"""An RDP desktop as its user sees it: Debian's Chromium (Playwright) against a real
``conduit serve`` in front of a real xrdp + xorgxrdp (tests/rdp_target.py), drawn by the
gateway's renderer (a private Xvnc and xfreerdp) and relayed as RFB like a VNC desktop.

The vendor opens the desktop from the connect page and types a command into the xterm of the
RDP session; its file appears in the RDP user's home. An auditor replays the recording: the
key track holds the command, and the frame at the end shows the session's white xterm on its
black desktop, in the browser's player and decoded on the server. Then the asset's certificate
changes (xrdp restarted with a new one): the next desktop is refused, the page says the asset's
identity could not be verified, and the audit has the host-key/certificate mismatch.
"""

from __future__ import annotations

import pwd
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from gateway.desktop.renderer import ensure_render_account
from gateway.web.desktop_replay import frame_at
from tests.browser_support import chromium, shot, watch_csp
from tests.desktop_site import (
    DesktopSite,
    add_asset,
    add_grant,
    add_users,
    browser_context,
    cli,
    sign_in_as,
)
from tests.rdp_target import RDPTarget
from tests.support import init_data_dir, serving
from tests.test_portal_desktop import _type_on_desktop, _wait_file
from tests.test_portal_desktop_replay import _parts, _seek

pytestmark = pytest.mark.realpeer

ASSET = "hmi-rdp"


@pytest.fixture(scope="module")
def site(rdp_target: RDPTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DesktopSite]:
    ensure_render_account()
    base = tmp_path_factory.mktemp("rdp")
    data_dir = base / "data"
    init_data_dir(data_dir)
    secrets = add_users(data_dir, base, [("vendor", "vendor"), ("auditor", "auditor")])
    add_asset(data_dir, ASSET, rdp_target.port, rdp_target.password, protocol="rdp",
              username=rdp_target.username)  # fmt: skip
    cli(data_dir, "asset", "pin-cert", ASSET, "--fingerprint", rdp_target.fingerprint)
    add_grant(data_dir, "vendor", ASSET, "rdp")
    with serving(data_dir) as (server, _ssh_port):
        yield DesktopSite(server, data_dir, secrets)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def test_vendor_types_into_an_rdp_desktop_and_a_changed_certificate_is_refused(
    browser: Browser, site: DesktopSite, rdp_target: RDPTarget
) -> None:
    home = Path(pwd.getpwnam(rdp_target.username).pw_dir)
    made = home / "made-over-rdp"
    ctx = browser_context(browser, site)
    page = ctx.new_page()
    violations = watch_csp(page)
    try:
        sign_in_as(page, site, "vendor")
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
        listed = page.request.get("/api/v1/sessions").json()
        session_id = next(str(s["id"]) for s in listed if s["user"] == "vendor")

        rdp_target.rotate_certificate()  # the same sign-in: a TOTP code is good once
        page.goto(f"/connect/{ASSET}/desktop")
        banner = page.locator("#desk-end")
        expect(banner).to_be_visible(timeout=40000)
        expect(banner).to_contain_text("identity could not be verified")
        shot(page, "desktop-rdp-certificate-changed")
    finally:
        ctx.close()
    events = site.audit()
    assert "upstream.hostkey_mismatch" in [e["action"] for e in events]
    (start,) = [e for e in events if e["action"] == "session.start"
                and e["detail"].get("session_id") == session_id]  # type: ignore[union-attr]  # fmt: skip
    recording_id = str(start["detail"]["recording_id"])  # type: ignore[index]

    ctx = browser_context(browser, site)
    auditor = ctx.new_page()
    try:
        sign_in_as(auditor, site, "auditor")
        auditor.goto(f"/evidence/recordings/{recording_id}")
        expect(auditor.locator("#player-status")).to_contain_text("Ready", timeout=30000)
        expect(auditor.locator("#keys")).to_contain_text("touch")
        replayed, _count = _parts(auditor, recording_id)
        end = replayed[-1].offset_seconds
        _seek(auditor, round(end - 0.1, 1))
        frame = frame_at(replayed, round(end - 0.1, 1))
        assert frame is not None
        for x, y, colour in ((150, 200, WHITE), (frame.width - 40, frame.height - 40, BLACK)):
            assert _pixel(auditor, x, y) == colour
            assert frame.region_colour(x - 5, y - 5, 10, 10) == colour
        shot(auditor, "desktop-rdp-replay")
    finally:
        ctx.close()


WHITE, BLACK = (255, 255, 255), (0, 0, 0)  # the session's xterm, its desktop around it


def _pixel(page: Page, x: int, y: int) -> tuple[int, int, int]:
    rgba = page.evaluate(
        """([x, y]) => Array.from(document.querySelector('#desk canvas')
            .getContext('2d').getImageData(x, y, 1, 1).data)""",
        [x, y],
    )
    return int(rgba[0]), int(rgba[1]), int(rgba[2])
