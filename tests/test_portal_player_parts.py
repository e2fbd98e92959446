"""The player on a large recording, in Chromium (Playwright) against a real ``conduit serve``:
a terminal recording just over the parts threshold (``player.PART_FILE_BYTES``), written by
the real recordings service and ``RecordingWriter`` (``bench.evidence_site``), opens in
parts: the first part shows the first frame, the note says the recording comes in parts, and
its "Next part" link opens the next part further on. Screenshots (laptop and tablet) go to
``test-artifacts/portal/``.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from bench.evidence_site import EVENT_BYTES, Site
from gateway.web.player import PART_FILE_BYTES
from tests.browser_support import LAPTOP, TABLET, chromium, shot, watch_csp
from tests.support import Served, serving

pytestmark = pytest.mark.realpeer

OUTPUT_BYTES = PART_FILE_BYTES + 2 * EVENT_BYTES  # just over the threshold


def numbered(i: int) -> bytes | None:
    """Output block ``i`` (until ``OUTPUT_BYTES``): lines that each name their block, so any
    screen of it says where in the recording it is."""
    if i * EVENT_BYTES >= OUTPUT_BYTES:
        return None
    lines = b"".join(f"block {i:08d} line {n:04d} pump 3 nominal\r\n".encode() for n in range(2000))
    return lines[:EVENT_BYTES]


@dataclass
class Big:
    server: Served
    recording_id: str
    cookie: tuple[str, str]


def _write_site(root: Path) -> tuple[Path, str, tuple[str, str]]:
    """The site and its large recording, made on an event loop of their own (Playwright's
    sync API owns this thread's)."""

    async def make() -> tuple[Path, str, tuple[str, str]]:
        site = await Site.create(root)
        try:
            recording = await site.record("vendor", "plc-big", numbered)
            return site.data_dir, recording, await site.auditor_cookie()
        finally:
            await site.close()

    made: list[tuple[Path, str, tuple[str, str]]] = []
    worker = threading.Thread(target=lambda: made.append(asyncio.run(make())))
    worker.start()
    worker.join()
    assert made, "the site could not be made (see the thread's traceback above)"
    return made[0]


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Big]:
    data_dir, recording, cookie = _write_site(tmp_path_factory.mktemp("player-parts"))
    with serving(data_dir) as (server, _ssh):
        yield Big(server, recording, cookie)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def _screen(page: Page) -> str:
    return page.locator("#player .ap-term").inner_text().replace("\u00a0", " ")


def _blocks(page: Page) -> list[int]:
    return [int(n) for n in re.findall(r"block (\d{8}) line", _screen(page))]


def test_a_large_recording_plays_in_parts_with_a_next_part_link(big: Big, browser: Browser) -> None:
    context = browser.new_context(
        base_url=big.server.base, ignore_https_errors=True, viewport=LAPTOP
    )
    name, value = big.cookie
    context.add_cookies([{"name": name, "value": value, "url": big.server.base}])
    page = context.new_page()
    csp = watch_csp(page)
    page.goto(f"/evidence/recordings/{big.recording_id}")
    note = page.locator("#part-note")
    expect(note).to_contain_text("loads about 8 MiB of it at a time, from 0.0 s")
    assert page.get_by_role("link", name="First part").count() == 0
    # The first frame (the first output event, block 0), not the blank screen before it.
    expect(page.locator("#player .ap-term")).to_contain_text("block 00000000 line",
                                                              timeout=20_000)  # fmt: skip
    assert set(_blocks(page)) == {0}
    link = page.get_by_role("link", name="Next part")
    expect(link).to_be_visible(timeout=20_000)
    shot(page, "evidence-player-parts-laptop")
    page.set_viewport_size(TABLET)
    shot(page, "evidence-player-parts-tablet")
    page.set_viewport_size(LAPTOP)
    href = link.get_attribute("href") or ""
    found = re.fullmatch(rf"/evidence/recordings/{big.recording_id}\?t=([0-9.]+)", href)
    assert found, href
    first_end = float(found.group(1))
    assert first_end > 1  # a part of 8 MiB covers well over a second of 10 ms blocks
    link.click()
    expect(page).to_have_url(re.compile(r"\?t=[0-9.]+$"))
    expect(note).to_contain_text(f"from {first_end:.1f} s")
    expect(page.locator("#player .ap-term")).to_contain_text("pump 3 nominal", timeout=20_000)
    later = _blocks(page)
    assert later and min(later) > 50, later  # the next part's screen, not the first's
    expect(page.get_by_role("link", name="Next part")).to_be_visible(timeout=20_000)
    first = page.get_by_role("link", name="First part")
    assert first.get_attribute("href") == f"/evidence/recordings/{big.recording_id}"
    shot(page, "evidence-player-part-2-laptop")
    assert csp == []
    context.close()
