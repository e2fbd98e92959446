"""The browser terminal and live watch, as their users see them: Debian's Chromium
(Playwright) against a real ``conduit serve`` in front of a real OpenSSH sshd asset.

A vendor with a standing grant (given with the CLI) opens the terminal from the connect
page, runs commands and resizes the window; an approver with a kill grant watches the
session from the live table (seeing output typed before the watch opened) and kills it there;
the vendor's terminal shows the reason, the recording verifies and carries the reason and
the browser's size; the spent websocket URL and a foreign origin are refused; someone
without the capability gets 404; a native OpenSSH session can be watched too. Screenshots
go to ``test-artifacts/portal/``.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.typing import Origin

from tests.browser_support import LAPTOP, TABLET, chromium, portal_context, shot, sign_in, watch_csp
from tests.sshd_target import SSHDTarget
from tests.support import Served, conduit, init_data_dir, serving
from tests.test_ssh_jump import PASSWORD, Gateway

pytestmark = pytest.mark.realpeer

ASSET = "plc-term"
KILL_NOTE = "wrong asset, call me"
USERS = [("vendor", "vendor"), ("approver", "approver"), ("tech", "vendor"), ("admin", "admin"),
         ("signer", "vendor"), ("watcher", "approver")]  # fmt: skip


@dataclass
class Site:
    server: Served
    data_dir: Path
    secrets: dict[str, str]
    gateway: Gateway

    def cli(self, *args: str) -> str:
        done = conduit(*args, "--data-dir", str(self.data_dir))
        assert done.returncode == 0, done.stderr
        return done.stdout

    def audit(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.cli("audit", "export").splitlines()]

    def audit_until(self, action: str, session_id: str) -> dict[str, object]:
        end = time.monotonic() + 15
        while True:
            found = [e for e in self.audit() if e["action"] == action
                     and _detail(e).get("session_id") == session_id]  # fmt: skip
            if found or time.monotonic() > end:
                assert found, f"no {action} for {session_id}"
                return found[0]
            time.sleep(0.2)


def _detail(event: dict[str, object]) -> dict[str, object]:
    detail = event.get("detail")
    return detail if isinstance(detail, dict) else {}


def _cli(data_dir: Path, *args: str, stdin: str | None = None) -> None:
    done = conduit(*args, "--data-dir", str(data_dir), stdin=stdin)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def site(sshd: SSHDTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    data_dir = tmp_path_factory.mktemp("term") / "data"
    init_data_dir(data_dir)
    secrets: dict[str, str] = {}
    for user, role in USERS:
        secret_file = data_dir.parent / f"{user}.totp"
        org = ["--org", "acme"] if role == "vendor" else []
        _cli(data_dir, "user", "add", user, "--role", role, *org, "--password-stdin",
             "--totp-secret-file", str(secret_file), stdin=PASSWORD + "\n")  # fmt: skip
        secrets[user] = secret_file.read_text().strip()
    _cli(data_dir, "asset", "add", ASSET, "--host", "127.0.0.1", "--port", str(sshd.port),
         "--protocol", "ssh")  # fmt: skip
    _cli(data_dir, "asset", "credential", ASSET, "--username", "root",
         "--key-file", str(sshd.client_key))  # fmt: skip
    _cli(data_dir, "asset", "pin-hostkey", ASSET, "--key", sshd.host_public_key)
    for user, action in (("vendor", "ssh"), ("tech", "ssh"), ("approver", "kill"),
                         ("signer", "ssh"), ("watcher", "watch")):  # fmt: skip
        _cli(data_dir, "grant", "add", "--user", user, "--asset", ASSET, "--action", action)
    with serving(data_dir) as (server, ssh_port):
        work = data_dir.parent / "client"
        work.mkdir()
        yield Site(server, data_dir, secrets, Gateway(data_dir, server, ssh_port, secrets, work))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def _context(browser: Browser, site: Site) -> BrowserContext:
    return portal_context(browser, site.server.base)


def _sign_in(page: Page, site: Site, user: str) -> None:
    sign_in(page, user, PASSWORD, site.secrets[user])


def _rows(page: Page) -> list[str]:
    texts = page.locator(".xterm-rows > div").all_inner_texts()
    return [t.replace("\u00a0", " ").rstrip() for t in texts]


def _wait_row(page: Page, pattern: str, deadline_s: float = 15) -> re.Match[str]:
    """The first terminal row matching ``pattern`` once xterm has drawn it."""
    end = time.monotonic() + deadline_s
    while True:
        rows = _rows(page)
        for row in rows:
            found = re.fullmatch(pattern, row)
            if found:
                return found
        if time.monotonic() > end:
            raise AssertionError(f"no row {pattern!r} in {rows}")
        time.sleep(0.1)


def _type(page: Page, line: str) -> None:
    page.keyboard.type(line)
    page.keyboard.press("Enter")


def _stty_size(page: Page, tag: str) -> tuple[int, int]:
    _type(page, f"echo {tag} $(stty size) {tag}")
    found = _wait_row(page, rf"{tag} (\d+) (\d+) {tag}")
    return int(found.group(1)), int(found.group(2))


def _session_of(page: Page, user: str, protocol: str) -> str:
    listed = page.request.get("/api/v1/sessions")
    assert listed.status == 200, listed.text()
    ids = [s["id"] for s in listed.json() if (s["user"], s["protocol"]) == (user, protocol)]
    assert len(ids) == 1, listed.json()
    return str(ids[0])


def _cookie(context: BrowserContext) -> str:
    cookies = {c["name"]: c["value"] for c in context.cookies()}
    return f"__Host-conduit_session={cookies['__Host-conduit_session']}"


def _ws_close_code(url: str, cookie: str, origin: str) -> int:
    """Open ``url`` as a script would (cookie, chosen Origin); the close code it gets."""
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    with connect(
        url, ssl=tls, origin=Origin(origin), additional_headers={"Cookie": cookie},
        open_timeout=10,
    ) as ws:  # fmt: skip
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=10)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


def test_vendor_terminal_watch_and_kill(browser: Browser, site: Site) -> None:
    vendor_ctx, approver_ctx = _context(browser, site), _context(browser, site)
    try:
        vendor = vendor_ctx.new_page()
        csp_errors = watch_csp(vendor)
        sockets: list[str] = []
        vendor.on("websocket", lambda ws: sockets.append(ws.url))
        _sign_in(vendor, site, "vendor")
        vendor.goto("/connect")
        vendor.get_by_role("link", name="Open terminal").click()
        expect(vendor).to_have_url(re.compile(rf"/connect/{ASSET}/terminal$"))
        expect(vendor.locator("#term-status")).to_have_text(f"Connected to {ASSET}.")
        vendor.locator("#term .xterm").click()
        _wait_row(vendor, r".*[#$]")  # the shell's prompt: typing before it garbles the screen
        _type(vendor, "hostname")
        _wait_row(vendor, re.escape(socket.gethostname()))
        _type(vendor, r"printf '\x1b[31mred\x1b[0m\n'")
        red = vendor.locator(".xterm-rows span.xterm-fg-1", has_text=re.compile(r"^red$"))
        expect(red).to_have_count(1)
        # Drawn red: xterm's palette rule reached the page through the CSSOM, not inline.
        color = red.evaluate("e => getComputedStyle(e).color")
        r, g, b = map(int, re.findall(r"\d+", color)[:3])
        assert r >= 150 and g < 80 and b < 80, color  # xterm's palette red, #cd0000
        first_rows, first_cols = _stty_size(vendor, "SZ1")
        assert first_rows == vendor.locator(".xterm-rows > div").count()
        shot(vendor, "vendor-terminal")

        vendor.set_viewport_size(TABLET)
        end = time.monotonic() + 10
        while (size := _stty_size(vendor, f"SZ{int(time.monotonic() * 10)}")) == (
            first_rows, first_cols,
        ) and time.monotonic() < end:  # fmt: skip
            time.sleep(0.2)  # the fit addon resizes on the next frame
        rows, cols = size
        assert cols < first_cols and rows == vendor.locator(".xterm-rows > div").count()
        shot(vendor, "vendor-terminal-tablet")
        vendor.set_viewport_size(LAPTOP)

        approver = approver_ctx.new_page()
        approver_csp = watch_csp(approver)
        _sign_in(approver, site, "approver")
        # The live table lists the browser session; its Watch link opens the watch view.
        approver.goto("/live")
        row = approver.locator("#live-rows tr", has_text="web-ssh").filter(has_text="vendor")
        expect(row).to_have_count(1)
        session_id = row.get_attribute("data-session") or ""
        assert session_id == _session_of(approver, "vendor", "web-ssh")
        row.get_by_role("link", name="Watch").click()
        expect(approver).to_have_url(re.compile(rf"/sessions/{session_id}/watch$"))
        expect(approver.locator("#term-status")).to_contain_text("Watching live")
        _wait_row(approver, re.escape(socket.gethostname()))  # typed before the watch opened
        expect(approver.locator(".xterm-rows span.xterm-fg-1", has_text="red")).to_have_count(1)
        vendor.locator("#term .xterm").click()
        _type(vendor, "echo after-the-watch-$((6*7))")
        _wait_row(approver, "after-the-watch-42")  # followed live
        shot(approver, "approver-watch")
        approver.set_viewport_size(TABLET)
        shot(approver, "approver-watch-tablet")
        watched = site.audit_until("session.watched", session_id)
        assert (watched["actor"], _detail(watched)["user"]) == ("approver", "vendor")

        # Someone without watch, kill or admin on the asset: 404, as for a missing session.
        for path in (f"/sessions/{session_id}/watch", "/sessions/nope-0000/watch"):
            response = vendor_ctx.new_page().goto(path)
            assert response is not None and response.status == 404, path

        # Kill from the live table, in a second tab: the watch tab stays open to see the end.
        killer = approver_ctx.new_page()
        killer.goto("/live")
        killer.locator(f'#live-rows tr[data-session="{session_id}"]').get_by_role(
            "link", name="Kill"
        ).click()
        killer.get_by_label(re.compile("^Reason")).fill(KILL_NOTE)
        killer.get_by_role("button", name="Kill session").click()
        expect(killer.get_by_role("status")).to_contain_text("Kill requested")
        ended = f"conduit: session ended: killed: {KILL_NOTE}"
        _wait_row(vendor, re.escape(ended), deadline_s=5)
        expect(vendor.locator("#term-status")).to_have_text(f"Session ended: killed: {KILL_NOTE}")
        _wait_row(approver, re.escape(ended), deadline_s=5)
        expect(approver.locator("#term-status")).to_have_text(f"Watch ended: killed: {KILL_NOTE}")
        shot(vendor, "vendor-terminal-killed")

        end_event = site.audit_until("session.end", session_id)
        assert _detail(end_event)["reason"] == "killed"
        assert _detail(end_event)["note"] == KILL_NOTE
        recording = str(_detail(end_event)["recording_id"])
        assert "intact" in site.cli("recordings", "verify", recording)
        cast = site.cli("recordings", "export", recording, "--format", "asciicast",
                        "--output", "-").splitlines()  # fmt: skip
        header = json.loads(cast[0])
        assert (header["width"], header["height"]) == (first_cols, first_rows)
        assert any(KILL_NOTE in line and '"m"' in line for line in cast[1:])
        assert any(f'"r", "{cols}x{rows}"' in line for line in cast[1:])  # the resize

        # The spent websocket URL cannot resume the killed session; another origin is refused.
        [terminal_url] = [u for u in sockets if "/ws/terminal" in u]
        cookie, origin = _cookie(vendor_ctx), site.server.base
        assert _ws_close_code(terminal_url, cookie, origin) == 1008
        watch_url = terminal_url.split("/ws/")[0] + f"/ws/watch/{session_id}"
        assert _ws_close_code(watch_url, _cookie(approver_ctx), "https://evil.example") == 1008
        refusals = [_detail(e)["reason"] for e in site.audit() if e["action"] == "portal.refused"]
        assert any("used terminal ticket" in str(r) for r in refusals)
        assert any("origin https://evil.example" in str(r) for r in refusals)
        assert csp_errors == [] and approver_csp == []
    finally:
        vendor_ctx.close()
        approver_ctx.close()


def test_a_revoked_watcher_and_a_signed_out_vendor_lose_their_sockets(
    browser: Browser, site: Site
) -> None:
    """A watch stops when the watcher's grant is revoked mid-watch (audited); a browser
    terminal ends when the portal sign-in that opened it ends (sign-out in another tab)."""
    vendor_ctx, watcher_ctx = _context(browser, site), _context(browser, site)
    try:
        vendor = vendor_ctx.new_page()
        _sign_in(vendor, site, "signer")
        vendor.goto(f"/connect/{ASSET}/terminal")
        expect(vendor.locator("#term-status")).to_have_text(f"Connected to {ASSET}.")
        vendor.locator("#term .xterm").click()
        _wait_row(vendor, r".*[#$]")
        watcher = watcher_ctx.new_page()
        _sign_in(watcher, site, "watcher")
        session_id = _session_of(watcher, "signer", "web-ssh")
        watcher.goto(f"/sessions/{session_id}/watch")
        expect(watcher.locator("#term-status")).to_contain_text("Watching live")

        grants = site.cli("grant", "list").splitlines()
        [grant_id] = [g.split()[0] for g in grants if "user:watcher" in g]
        site.cli("grant", "revoke", grant_id)
        stopped = "watch stopped: you may no longer watch this session"
        _wait_row(watcher, re.escape(f"conduit: {stopped}"))
        expect(watcher.locator("#term-status")).to_have_text(
            "Watch ended: you may no longer watch this session", timeout=5000
        )
        refusals = [_detail(e)["reason"] for e in site.audit() if e["action"] == "portal.refused"]
        assert f"watch of {session_id} on {ASSET} stopped: no watch capability" in refusals

        # Sign out in a second tab of the vendor's browser: the open terminal ends with it.
        other = vendor_ctx.new_page()
        other.goto("/home")
        other.get_by_role("button", name="Sign out").click()
        expect(other).to_have_url(re.compile(r"/login$"))
        _wait_row(vendor, re.escape("conduit: session ended: signed_out"))
        expect(vendor.locator("#term-status")).to_have_text("Session ended: signed_out")
        end_event = site.audit_until("session.end", session_id)
        assert _detail(end_event)["reason"] == "signed_out"
    finally:
        vendor_ctx.close()
        watcher_ctx.close()


def test_native_ssh_session_can_be_watched(browser: Browser, site: Site) -> None:
    gateway = site.gateway
    proc = gateway.background(f"tech+{ASSET}", "echo native-marker-$((40+2)); sleep 60",
                              gateway.code("tech"))  # fmt: skip
    context = _context(browser, site)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"native-marker-42"
        page = context.new_page()
        _sign_in(page, site, "admin")  # no grant: the any-asset capability of the role
        session_id = _session_of(page, "tech", "ssh")
        page.goto(f"/sessions/{session_id}/watch")
        expect(page.locator("#term-status")).to_contain_text("Watching live")
        _wait_row(page, "native-marker-42")
        watched = site.audit_until("session.watched", session_id)
        assert (watched["actor"], _detail(watched)["user"]) == ("admin", "tech")
    finally:
        context.close()
        proc.kill()
        proc.communicate(timeout=10)  # reaps it and closes its pipes


def test_xterm_files_are_served_with_their_types(site: Site) -> None:
    with site.server.client() as client:
        for name, kind in (("xterm.js", "text/javascript"), ("addon-fit.js", "text/javascript"),
                           ("xterm.css", "text/css")):  # fmt: skip
            served = client.get(f"/assets/{name}")
            assert served.status_code == 200 and served.headers["content-type"].startswith(kind)
