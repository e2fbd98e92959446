"""Desktop sessions as their users see them: Debian's Chromium (Playwright) against a real
``conduit serve`` in front of a real TigerVNC ``Xvnc`` (VNC authentication) running an
``xterm``.

The vendor opens the desktop from the connect page and types a command into the xterm on
the target desktop; the command's file appears on the target. An approver watches the
session live: what the watcher types reaches nothing. The approver's kill ends the desktop
and the vendor's page shows the reason over it. The recording verifies and holds the
session's RFB stream with start points; the vaulted VNC password appears in no log, no
recording, no page and no process argv. Screenshots go to ``test-artifacts/portal/``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser_support import chromium, shot, watch_csp
from tests.desktop_site import VncSite, browser_context, served_vnc_site, sign_in_as
from tests.desktop_targets import missing_reason

pytestmark = pytest.mark.realpeer

VNC_PASSWORD = "vault-Qx7!pw"  # noqa: S105 - the target's, vaulted; must leak nowhere
ASSET = "hmi-vnc"
USERS = [("vendor", "vendor"), ("approver", "approver")]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VncSite]:
    missing = missing_reason("xterm", "xsetroot")
    if missing:
        pytest.skip(missing)
    base = tmp_path_factory.mktemp("desk")
    # An xterm over the whole screen: with no window manager the keyboard goes to the
    # window under the pointer, which is then always the xterm.
    with served_vnc_site(base, VNC_PASSWORD, "100x40+0+0", USERS, ASSET) as made:
        yield made


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def _wait_file(path: Path, deadline_s: float = 20) -> None:
    end = time.monotonic() + deadline_s
    while not path.exists():
        assert time.monotonic() < end, f"{path.name} never appeared on the target"
        time.sleep(0.1)


def _type_on_desktop(page: Page, line: str) -> None:
    canvas = page.locator("#desk canvas")
    canvas.click(position={"x": 200, "y": 200})
    page.keyboard.type(line, delay=15)
    page.keyboard.press("Enter")


def _session_id(page: Page, user: str) -> str:
    listed = page.request.get("/api/v1/sessions")
    assert listed.status == 200, listed.text()
    ids = [s["id"] for s in listed.json() if (s["user"], s["protocol"]) == (user, "vnc")]
    assert len(ids) == 1, listed.json()
    return str(ids[0])


def test_vendor_desktop_watch_and_kill(browser: Browser, site: VncSite) -> None:
    vendor_ctx, approver_ctx = browser_context(browser, site), browser_context(browser, site)
    vendor, approver = vendor_ctx.new_page(), approver_ctx.new_page()
    violations = watch_csp(vendor) + watch_csp(approver)
    try:
        sign_in_as(vendor, site, "vendor")
        vendor.goto("/connect")
        card = vendor.locator("section.asset", has_text=ASSET)
        expect(card.get_by_text(re.compile(r"^\(VNC, "))).to_be_visible()
        card.get_by_role("link", name="Open desktop in browser").click()
        expect(vendor).to_have_url(re.compile(rf"/connect/{ASSET}/desktop$"))
        expect(vendor.locator("#desk-status")).to_have_text(f"Connected to {ASSET}.", timeout=20000)
        expect(vendor.locator("#desk canvas")).to_be_visible()

        _type_on_desktop(vendor, "touch made-by-vendor")
        _wait_file(site.desk.work / "made-by-vendor")
        shot(vendor, "desktop-vendor")

        session_id = _session_id(vendor, "vendor")
        sign_in_as(approver, site, "approver")
        approver.goto(f"/sessions/{session_id}/watch")
        expect(approver.locator("#desk-status")).to_have_text("Watching live.", timeout=20000)
        expect(approver.locator("#desk canvas")).to_be_visible()
        # What the watcher types reaches nothing; the vendor's next line proves the order.
        _type_on_desktop(approver, "touch made-by-watcher")
        _type_on_desktop(vendor, "touch second-by-vendor")
        _wait_file(site.desk.work / "second-by-vendor")
        assert not (site.desk.work / "made-by-watcher").exists()
        shot(approver, "desktop-watch")

        site.cli("sessions", "kill", session_id, "--reason", "wrong machine")
        banner = vendor.locator("#desk-end")
        expect(banner).to_be_visible(timeout=10000)
        expect(banner).to_have_text("Session ended: killed: wrong machine")
        expect(vendor.locator("#desk-status")).to_have_text("Session ended: killed: wrong machine")
        expect(vendor.locator("#desk img.desk-last")).to_be_attached()
        shot(vendor, "desktop-killed")
        assert violations == []
    finally:
        vendor_ctx.close()
        approver_ctx.close()

    events = site.audit()
    ends = [e for e in events if e["action"] == "session.end"
            and e["detail"].get("session_id") == session_id]  # type: ignore[union-attr]  # fmt: skip
    assert ends and ends[0]["detail"]["reason"] == "killed"  # type: ignore[index]
    assert any(e["action"] == "session.watched" for e in events)
    starts = [e for e in events if e["action"] == "session.start"
              and e["detail"].get("session_id") == session_id]  # type: ignore[union-attr]  # fmt: skip
    recording_id = str(starts[0]["detail"]["recording_id"])  # type: ignore[index]
    verified = site.cli("recordings", "verify", recording_id)
    assert "intact" in verified, verified


def test_the_vnc_password_leaks_nowhere(browser: Browser, site: VncSite) -> None:
    """After a session: not in the data directory (logs, database, recordings: encrypted or
    not, the bytes are checked), not in any process's argv, not in a page."""
    needle = VNC_PASSWORD.encode()
    for path in site.data_dir.rglob("*"):
        if path.is_file():
            assert needle not in path.read_bytes(), path
    assert needle not in (site.server.stdout + "".join(site.server._err_lines)).encode()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert needle not in cmdline.read_bytes(), cmdline
        except OSError:
            continue
