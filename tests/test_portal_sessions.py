"""Connect, My sessions and Live sessions in Debian's Chromium against a real ``conduit serve``
in front of a real OpenSSH sshd, with real OpenSSH clients.

Acceptance 5: the ``ssh`` command read from the connect page's DOM, run with OpenSSH answering
through ``SSH_ASKPASS``, logs in with the page's connect code at the first prompt. The live
table shows a real SSH session with its bytes, and killing it from the table (inline step-up
once the second factor is old) ends it with the reason, kept verbatim in the audit log.
Screenshots go to ``test-artifacts/portal/``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyotp
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect
from sqlalchemy import select, update

from gateway.config import Overrides, load_settings
from gateway.db.models import User
from gateway.identity.models import PortalSession
from gateway.keys import load_keyring
from gateway.services import Services
from tests.browser_support import LAPTOP, TABLET, chromium, shot
from tests.ssh_gateway import running_gateway
from tests.sshd_target import SSHDTarget
from tests.support import conduit
from tests.test_ssh_jump import PASSWORD, Gateway

pytestmark = pytest.mark.realpeer
APPROVER_PASSWORD = "Amber-Valve-Quiet-Harbour-3"
# Quotes, markup and unicode are kept verbatim; a line break is refused (not printable).
REASON = 'it\'s "wrong asset" <script>x</script> – rüf mich an ✓'


class Site:
    def __init__(self, gateway: Gateway, approver_secret: str) -> None:
        self.gateway, self.approver_secret = gateway, approver_secret


@pytest.fixture(scope="module")
def site(sshd: SSHDTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_gateway(sshd, tmp_path_factory.mktemp("portal-sessions"), users=3) as gateway:
        secret_file = gateway.work / "approver.totp"
        for args, stdin in (
            (("user", "add", "approver", "--role", "approver", "--password-stdin",
              "--totp-secret-file", str(secret_file)), APPROVER_PASSWORD + "\n"),
            (("grant", "add", "--user", "approver", "--asset", "target", "--action", "kill"),
             None),
        ):  # fmt: skip
            done = conduit(*args, "--data-dir", str(gateway.data), stdin=stdin)
            assert done.returncode == 0, done.stderr
        yield Site(gateway, secret_file.read_text().strip())


@pytest.fixture(scope="module")
def browser(site: Site) -> Iterator[Browser]:
    # After ``site``: the gateway's set-up runs its own event loop, which Playwright's would block.
    with chromium() as launched:
        yield launched


@pytest.fixture
def context(browser: Browser, site: Site) -> Iterator[BrowserContext]:
    made = browser.new_context(
        base_url=site.gateway.server.base, ignore_https_errors=True, viewport=LAPTOP
    )
    try:
        yield made
    finally:
        made.close()


def _sign_in(page: Page, user: str, password: str, secret: str, path: str) -> None:
    page.goto(path)
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Continue").click()
    page.get_by_label(re.compile("Code from your authenticator")).fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(re.escape(path) + "$"))


def _no_unsafe_inline(response: object) -> None:
    assert response is not None
    assert response.status == 200  # type: ignore[attr-defined]
    csp = response.all_headers()["content-security-policy"]  # type: ignore[attr-defined]
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp


def _age_second_factor(gateway: Gateway, user: str) -> None:
    """Move the user's portal sessions' last second factor 10 minutes back (limit: 5)."""

    async def change() -> None:
        settings = load_settings(None, Overrides(data_dir=gateway.data), environ={})
        services = Services.build(settings, load_keyring(settings))
        try:
            async with services.sessions() as db, db.begin():
                user_id = await db.scalar(select(User.id).where(User.username == user))
                old = services.clock() - dt.timedelta(minutes=10)
                await db.execute(
                    update(PortalSession).where(PortalSession.user_id == user_id)
                    .values(mfa_at=old)
                )  # fmt: skip
        finally:
            await services.close()

    # In a thread of its own: Playwright's sync API keeps an event loop running in this one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, change()).result()


def _run_shown_command(work: Path, shown: str, code: str) -> tuple[str, list[str]]:
    """``shown`` as a vendor pastes it, plus ``hostname``; OpenSSH without a terminal answers
    every prompt through SSH_ASKPASS with ``code``. Only test isolation is added right after
    ``ssh``: no config file, and a known-hosts file of its own (trust on first use), so the
    run neither reads nor writes the runner's ~/.ssh. Returns stdout and the prompts shown."""
    prompts = work / "connect-prompts"
    prompts.write_text("")
    (work / "connect-code").write_text(code)
    script = work / "connect-askpass.sh"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$1" >> {prompts}\ncat {work}/connect-code\n')
    script.chmod(0o700)
    argv = shlex.split(shown)
    assert argv[0] == "ssh"
    isolation = ["-F", "/dev/null", "-o", f"UserKnownHostsFile={work / 'connect-known'}",
                 "-o", "StrictHostKeyChecking=accept-new", "-o", "ConnectTimeout=10"]  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force",
           "DISPLAY": ":0", "HOME": str(work)}  # fmt: skip
    done = subprocess.run(["setsid", argv[0], *isolation, *argv[1:], "hostname"], env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout, prompts.read_text().splitlines()


def test_the_shown_ssh_command_logs_in_with_the_code_at_the_first_prompt(
    context: BrowserContext, site: Site
) -> None:
    gateway = site.gateway
    page = context.new_page()
    _sign_in(page, "vendor0", PASSWORD, gateway.secrets["vendor0"], "/connect")
    _no_unsafe_inline(page.reload())
    card = page.locator("section.asset[data-asset=target]")
    expect(card.get_by_role("heading", name="target")).to_be_visible()
    expect(page.locator("section.asset[data-asset=other]")).to_have_count(0)  # not granted
    expect(card.get_by_role("link", name="Open terminal in browser")).to_have_attribute(
        "href", "/connect/target/terminal"
    )
    card.get_by_role("button", name="Get a one-time connect code").click()
    code = card.locator(".connect-code").inner_text().strip()
    assert re.fullmatch(r"[A-Za-z0-9_-]{24}", code)
    shown = card.locator("dt:text-is('Shell') + dd code").inner_text().strip()
    assert shown.startswith("ssh -p ") and "PreferredAuthentications=keyboard-interactive" in shown
    # The copy button puts exactly the shown text on the clipboard.
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    card.get_by_role("button", name="Copy: Shell").click()
    assert page.evaluate("navigator.clipboard.readText()") == shown
    # The fingerprint to compare when OpenSSH first asks to trust the gateway: the one the
    # gateway's SSH port really offers (read with OpenSSH's own tools).
    scanned = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", "-p", str(gateway.ssh_port), "127.0.0.1"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-f", "-"], input=scanned, capture_output=True, text=True,
        timeout=30, check=True,
    ).stdout.split()  # fmt: skip
    expect(page.locator("ul.fingerprints")).to_contain_text(listed[1])
    shot(page, "connect-with-code")
    page.set_viewport_size(TABLET)
    shot(page, "connect-with-code-tablet")

    out, prompts = _run_shown_command(gateway.work, shown, code)
    assert out.strip() == socket.gethostname()
    assert len(prompts) == 1 and "Password" in prompts[0], prompts  # the first prompt took it
    for text in (gateway.server.stdout, "".join(gateway.server._err_lines)):
        assert code not in text  # shown once on the page, never logged
    page.goto("/connect")
    assert code not in page.content()

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Sessions").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("My sessions")
    expect(page.locator("tbody tr").first).to_contain_text("target")
    page.set_viewport_size(LAPTOP)
    shot(page, "my-sessions")
    response = page.goto("/live")
    assert response is not None and response.status == 404  # a vendor: like a missing page
    _no_unsafe_inline(page.goto("/sessions"))


def _long_session(gateway: Gateway) -> subprocess.Popen[bytes]:
    """vendor1 in a shell that has sent ~100 kB and then waits."""
    user = "vendor1"
    proc = gateway.background(
        f"{user}+target", "seq 1 20000; echo started; sleep 120", gateway.code(user)
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == b"started":
            return proc
    raise AssertionError(proc.stderr.read() if proc.stderr else "no output")


def test_live_table_shows_a_real_session_and_kills_it_with_the_reason(
    context: BrowserContext, site: Site
) -> None:
    gateway = site.gateway
    proc = _long_session(gateway)
    try:
        page = context.new_page()
        csp_errors: list[str] = []
        page.on("console", lambda m: csp_errors.append(m.text) if "Content Security" in m.text
                else None)  # fmt: skip
        _sign_in(page, "approver", APPROVER_PASSWORD, site.approver_secret, "/live")
        _no_unsafe_inline(page.reload())
        row = page.locator("#live-rows tr", has_text="vendor1")
        expect(row).to_contain_text("acme")
        expect(row).to_contain_text("target")
        # Bytes are published by the owner about once a second; the table follows by itself.
        expect(row.locator(".bytes-down")).not_to_have_attribute("data-bytes", "0", timeout=10_000)
        assert int(row.locator(".bytes-down").get_attribute("data-bytes") or 0) > 100_000
        expect(row.get_by_role("link", name="Watch")).to_have_attribute(
            "href", re.compile(r"^/sessions/[A-Za-z0-9_-]+/watch$")
        )
        shot(page, "live-table")
        page.set_viewport_size(TABLET)
        shot(page, "live-table-tablet")
        page.set_viewport_size(LAPTOP)

        row.get_by_role("link", name="Kill").click()
        reason = page.get_by_label(re.compile("^Reason"))
        reason.fill("two\nlines")  # an <input> drops the line break: send it as a form would
        session_id = page.url.split("kill=")[1].split("#")[0]
        refused = page.request.post(
            f"/live/{session_id}/kill",
            form={"reason": "two\nlines", "csrf_token": _csrf(page)},
        )
        assert refused.status == 422 and "line breaks" in refused.text()
        no_csrf = page.request.post(f"/live/{session_id}/kill", form={"reason": "x"})
        assert no_csrf.status == 403

        _age_second_factor(gateway, "approver")
        reason.fill(REASON)
        page.get_by_role("button", name="Kill session").click()
        expect(page.get_by_role("alert")).to_contain_text("needs a fresh code")
        expect(page.get_by_label(re.compile("^Reason"))).to_have_value(REASON)
        shot(page, "live-kill-stepup")
        next_code = pyotp.TOTP(site.approver_secret).at(time.time() + 30)
        page.get_by_role("textbox", name="Code from your authenticator app").fill(next_code)
        page.get_by_role("button", name="Kill session").click()
        expect(page.get_by_role("status")).to_contain_text("Kill requested")

        status = proc.wait(timeout=10)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert status != 0
    assert f"session ended: killed: {REASON}" in err.decode()
    events = gateway.audit_until("session.end")
    [kill] = [e for e in events if e["action"] == "session.kill"]
    assert kill["actor"] == "approver" and kill["detail"]["note"] == REASON  # type: ignore[index]
    refusals = [e for e in events if e["action"] == "portal.refused" and e["actor"] == "approver"]
    assert {r["detail"]["status"] for r in refusals} == {403, 422}  # type: ignore[index]
    expect(page.locator("#live-rows tr", has_text="vendor1")).to_have_count(0, timeout=10_000)
    assert csp_errors == []


def _csrf(page: Page) -> str:
    value = page.locator("form.signout input[name=csrf_token]").get_attribute("value")
    assert value
    return value
