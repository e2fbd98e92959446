"""What the portal's browser tests share: Debian's Chromium driven by Playwright (never a
downloaded browser), the viewport sizes pages are looked at in, screenshots under
``test-artifacts/portal/`` (gitignored) for a person to look at, and the CSP watch."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Browser, Page, sync_playwright

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
