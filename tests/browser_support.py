"""What the portal's browser tests share: Debian's Chromium driven by Playwright (never a
downloaded browser), the viewport sizes pages are looked at in, screenshots under
``test-artifacts/portal/`` (gitignored) for a person to look at, and the CSP watch."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import pyotp
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "portal"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
LAPTOP = {"width": 1280, "height": 800}
TABLET = {"width": 820, "height": 1180}


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless, closed afterwards."""
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def shot(page: Page, name: str) -> Path:
    """A full-page screenshot named ``name`` (lower case, spaces as dashes)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name.lower().replace(' ', '-')}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def watch_csp(page: Page) -> list[str]:
    """Console messages about the CSP: the pages and their scripts must never trip it."""
    seen: list[str] = []
    page.on(
        "console",
        lambda msg: seen.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    return seen


def portal_context(browser: Browser, base_url: str) -> BrowserContext:
    """A fresh browser profile on the portal at ``base_url`` (its self-signed TLS accepted),
    at laptop size."""
    return browser.new_context(base_url=base_url, ignore_https_errors=True, viewport=LAPTOP)


def sign_in(page: Page, user: str, password: str, totp_secret: str) -> None:
    """Sign ``user`` in through the login pages with the password and the current TOTP code
    (a code is good once: a second sign-in of the same user needs the next 30 s window)."""
    page.goto("/login")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Continue").click()
    page.get_by_label(re.compile("Code from your authenticator")).fill(
        pyotp.TOTP(totp_secret).now()
    )
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/home$"))
