"""Auditors replay and search in the browser: Debian's Chromium (Playwright) against a real
``conduit serve`` in front of a real OpenSSH sshd asset.

A vendor prints a unique word over native OpenSSH through the gateway; an auditor finds the
session in the history, searches for the word, opens the hit, and the player shows the word
on its screen at that offset (read from the player's DOM), with no CSP complaint; the audit
log then holds ``recording.viewed`` with the auditor's name; the vendor gets 404 for the
same pages. Screenshots (laptop and tablet) go to ``test-artifacts/portal/``.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser_support import LAPTOP, TABLET, chromium, shot, sign_in, watch_csp
from tests.sshd_target import SSHDTarget
from tests.support import Served, conduit, init_data_dir, serving
from tests.test_ssh_jump import PASSWORD, Gateway

pytestmark = pytest.mark.realpeer

ASSET = "plc-hist"
WORD = "okapi" + secrets.token_hex(4)
USERS = [("vendor", "vendor"), ("audrey", "auditor")]


@dataclass
class Site:
    server: Served
    data_dir: Path
    secrets: dict[str, str]
    gateway: Gateway
    vendor_state: dict[str, object] | None = None  # the vendor's signed-in browser session

    def audit(self) -> list[dict[str, object]]:
        done = conduit("audit", "export", "--data-dir", str(self.data_dir))
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]


def _cli(data_dir: Path, *args: str, stdin: str | None = None) -> None:
    done = conduit(*args, "--data-dir", str(data_dir), stdin=stdin)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def site(sshd: SSHDTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    data_dir = tmp_path_factory.mktemp("hist") / "data"
    init_data_dir(data_dir)
    found: dict[str, str] = {}
    for user, role in USERS:
        secret_file = data_dir.parent / f"{user}.totp"
        _cli(data_dir, "user", "add", user, "--role", role, "--password-stdin",
             "--totp-secret-file", str(secret_file), stdin=PASSWORD + "\n")  # fmt: skip
        found[user] = secret_file.read_text().strip()
    _cli(data_dir, "asset", "add", ASSET, "--host", "127.0.0.1", "--port", str(sshd.port),
         "--protocol", "ssh")  # fmt: skip
    _cli(data_dir, "asset", "credential", ASSET, "--username", "root",
         "--key-file", str(sshd.client_key))  # fmt: skip
    _cli(data_dir, "asset", "pin-hostkey", ASSET, "--key", sshd.host_public_key)
    _cli(data_dir, "grant", "add", "--user", "vendor", "--asset", ASSET, "--action", "ssh")
    with serving(data_dir) as (server, ssh_port):
        work = data_dir.parent / "client"
        work.mkdir()
        yield Site(server, data_dir, found, Gateway(data_dir, server, ssh_port, found, work))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def _sign_in(page: Page, site: Site, user: str) -> None:
    sign_in(page, user, PASSWORD, site.secrets[user])


def _vendor_prints_the_word(browser: Browser, site: Site) -> None:
    """The vendor signs in to the portal first (this step's code), then prints the word over
    native OpenSSH with the next step's code: a code is single-use and must move forward."""
    context = browser.new_context(base_url=site.server.base, ignore_https_errors=True)
    _sign_in(context.new_page(), site, "vendor")
    site.vendor_state = dict(context.storage_state())
    context.close()
    command = f"echo first line; sleep 1; echo the word is {WORD}; sleep 1; echo last line"
    done = site.gateway.ssh(f"vendor+{ASSET}", command, site.gateway.code("vendor", step=1))
    assert done.returncode == 0, done.stderr
    assert WORD in done.stdout


def _screen_text(page: Page) -> str:
    return page.locator("#player .ap-term").inner_text().replace("\u00a0", " ")


def test_an_auditor_finds_the_word_and_the_player_shows_it(browser: Browser, site: Site) -> None:
    _vendor_prints_the_word(browser, site)
    context = browser.new_context(
        base_url=site.server.base, ignore_https_errors=True, viewport=LAPTOP
    )
    page = context.new_page()
    csp = watch_csp(page)
    _sign_in(page, site, "audrey")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Evidence").click()
    expect(page).to_have_url(re.compile(r"/evidence$"))
    expect(page.locator("table.history tbody tr")).to_have_count(1)
    expect(page.locator("table.history")).to_contain_text("vendor")
    expect(page.locator("table.history .integrity")).to_have_text("intact")
    shot(page, "evidence-history-laptop")
    page.get_by_role("navigation", name="Evidence").get_by_role("link", name="Search").click()
    page.get_by_label(re.compile("Words")).fill(WORD)
    page.get_by_role("button", name="Search").click()
    hit = page.locator("table.hits tbody tr")
    expect(hit).to_have_count(1)
    expect(hit.locator("mark")).to_have_text(WORD)
    shot(page, "evidence-search-laptop")
    offset = float(hit.get_by_role("link").inner_text().split()[0])
    assert 0.5 < offset < 5  # printed about a second after the session started
    hit.get_by_role("link").click()
    expect(page).to_have_url(re.compile(r"/evidence/recordings/[0-9a-f]{32}\?t=[0-9.]+&hit=1$"))
    expect(page.locator("#player .ap-term")).to_contain_text(WORD, timeout=15_000)
    screen = _screen_text(page)
    assert "last line" not in screen  # the screen at the hit, not the end of the recording
    shot(page, "evidence-player-laptop")
    page.set_viewport_size(TABLET)
    shot(page, "evidence-player-tablet")
    page.goto("/evidence")
    shot(page, "evidence-history-tablet")
    assert csp == []
    viewed = [e for e in site.audit() if e["action"] == "recording.viewed"]
    assert viewed and all(e["actor"] == "audrey" for e in viewed)
    assert len(viewed) == 1  # one page view, one event (the cast came with its pass)
    context.close()


def test_the_vendor_gets_not_found_for_every_evidence_page(browser: Browser, site: Site) -> None:
    assert site.vendor_state is not None, "runs after the auditor's test"
    context = browser.new_context(
        base_url=site.server.base, ignore_https_errors=True, viewport=LAPTOP,
        storage_state=site.vendor_state,  # type: ignore[arg-type]
    )  # fmt: skip
    page = context.new_page()
    page.goto("/home")
    assert page.get_by_role("link", name="Evidence").count() == 0
    recording = (
        next(e["target"] for e in site.audit() if e["action"] == "recording.viewed")
        if any(e["action"] == "recording.viewed" for e in site.audit())
        else "0" * 32
    )
    for path in ("/evidence", f"/evidence/search?q={WORD}", f"/evidence/recordings/{recording}",
                 f"/evidence/recordings/{recording}/cast"):  # fmt: skip
        answer = page.goto(path)
        assert answer is not None and answer.status == 404, path
        assert WORD not in page.content()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        refused = [e for e in site.audit() if e["action"] == "portal.refused"
                   and e["actor"] == "vendor"]  # fmt: skip
        if len(refused) >= 4:
            break
        time.sleep(0.2)
    assert len(refused) >= 4
    context.close()
