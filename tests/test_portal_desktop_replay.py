"""Desktop replay as an auditor sees it: Debian's Chromium (Playwright) against a real
``conduit serve`` in front of a real TigerVNC ``Xvnc`` with a small ``xterm``.

The vendor's session paints the root window a known colour (``xsetroot -solid``) at a known
time, types a line into the xterm, and later paints the root another colour. An auditor opens
the recording in the player, seeks between the two paints and finds the first colour in
noVNC's canvas, seeks after the second and finds the second; the key track shows the typed
line; the markers list the watch. The same offsets decoded on the server side
(``desktop_replay.frame_at`` over the parts the page read) give the same colours; the
thumbnail is a PNG of the last frame, shown in the history list. Screenshots go to
``test-artifacts/portal/``.
"""

from __future__ import annotations

import datetime as dt
import json
import struct
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from gateway.web.desktop_replay import frame_at, read_part
from gateway.web.replay import peek_header
from recordings.desktop import DesktopEvent
from recordings.events import Event
from tests.browser_support import chromium, shot, watch_csp
from tests.desktop_site import VncSite, browser_context, served_vnc_site, sign_in_as
from tests.desktop_targets import missing_reason
from tests.support import clean_env

pytestmark = pytest.mark.realpeer

VNC_PASSWORD = "vault-Rp4!pw"  # noqa: S105 - the target's, vaulted
ASSET = "hmi-replay"
USERS = [("vendor", "vendor"), ("auditor", "auditor"), ("approver", "approver")]
FIRST, SECOND = (192, 48, 32), (32, 160, 64)  # the root window's two colours
SPOT = (600, 450)  # a pixel of the root window, clear of the xterm
GAP = 3.0  # seconds between the paints (keyframes every second)


class Site(VncSite):
    def paint(self, colour: tuple[int, int, int]) -> float:
        """The root window in ``colour``; the wall-clock time it was asked."""
        at = time.time()
        subprocess.run(
            ["xsetroot", "-solid", "#{:02x}{:02x}{:02x}".format(*colour)],
            env=self.desk.env, check=True, timeout=10,
        )  # fmt: skip
        return at


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    missing = missing_reason("xterm", "xsetroot")
    if missing:
        pytest.skip(missing)
    base = tmp_path_factory.mktemp("replay")
    # Keyframes every second; small parts, so the page reads the recording in several.
    served_env = clean_env() | {
        "CONDUIT_DESKTOP__KEYFRAME_SECONDS": "1",
        "CONDUIT_DESKTOP__REPLAY_PART_BYTES": str(4 << 10),
    }
    # A small xterm in the top-left corner; the rest is the root window the test paints.
    with served_vnc_site(base, VNC_PASSWORD, "40x8+0+0", USERS, ASSET, served_env) as made:
        yield Site(made.server, made.data_dir, made.secrets, made.desk)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def _canvas_colour(page: Page) -> tuple[int, int, int]:
    rgba = page.evaluate(
        """([x, y]) => {
            const canvas = document.querySelector('#desk canvas');
            return Array.from(canvas.getContext('2d').getImageData(x, y, 1, 1).data);
        }""",
        list(SPOT),
    )
    return int(rgba[0]), int(rgba[1]), int(rgba[2])


def _seek(page: Page, seconds: float) -> None:
    page.locator("#seek").fill(f"{seconds:.1f}")
    expect(page.locator("#desk")).to_have_attribute("data-state", "paused", timeout=20000)
    expect(page.locator("#desk")).to_have_attribute("data-time", f"{seconds:.1f}00")


def _audit(site: Site) -> list[dict[str, Any]]:
    return [json.loads(line) for line in site.cli("audit", "export").splitlines()]


def _wait_ended(site: Site, session_id: str) -> None:
    deadline = time.monotonic() + 20
    while not any(e["action"] == "session.end" and e["detail"].get("session_id") == session_id
                  for e in _audit(site)):  # fmt: skip
        assert time.monotonic() < deadline, "the desktop session did not end"
        time.sleep(0.3)


def _recording(site: Site, session_id: str) -> tuple[str, dt.datetime]:
    events = _audit(site)
    starts = [e for e in events if e["action"] == "session.start"
              and e["detail"].get("session_id") == session_id]  # fmt: skip
    recording_id = str(starts[0]["detail"]["recording_id"])
    files = [p for p in site.data_dir.rglob(f"{recording_id}*") if p.is_file()]
    assert files, recording_id
    with files[0].open("rb") as stream:
        return recording_id, peek_header(stream).started_at


def _parts(page: Page, recording_id: str) -> tuple[list[Event], int]:
    """Every part of the recording's RFB, as the player reads them, and how many parts."""
    events: list[Event] = []
    following, parts = "0", 0
    while following:
        answer = page.request.get(f"/evidence/recordings/{recording_id}/rfb?from={following}")
        assert answer.status == 200, answer.text()
        events += read_part(answer.body())
        following = answer.headers.get("x-next-event", "")
        parts += 1
    return events, parts


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_auditor_replays_a_desktop_at_known_offsets(browser: Browser, site: Site) -> None:
    contexts = [browser_context(browser, site) for _ in range(3)]
    vendor, auditor, approver = (c.new_page() for c in contexts)
    violations = watch_csp(vendor) + watch_csp(auditor)
    try:
        site.paint((0, 0, 0))
        sign_in_as(vendor, site, "vendor")
        vendor.goto(f"/connect/{ASSET}/desktop")
        expect(vendor.locator("#desk-status")).to_have_text(f"Connected to {ASSET}.", timeout=20000)
        listed = vendor.request.get("/api/v1/sessions").json()
        session_id = next(str(s["id"]) for s in listed if s["user"] == "vendor")
        sign_in_as(approver, site, "approver")  # a watch: a marker in the recording
        approver.goto(f"/sessions/{session_id}/watch")
        expect(approver.locator("#desk-status")).to_have_text("Watching live.", timeout=20000)
        approver.close()
        time.sleep(1)
        first_at = site.paint(FIRST)
        time.sleep(GAP / 2)
        vendor.locator("#desk canvas").click(position={"x": 60, "y": 40})
        vendor.keyboard.type("echo replayed", delay=20)
        vendor.keyboard.press("Enter")
        time.sleep(GAP / 2)
        second_at = site.paint(SECOND)
        time.sleep(GAP)
        vendor.close()  # the vendor leaves: the session ends and its recording closes
        _wait_ended(site, session_id)
        recording_id, started = _recording(site, session_id)
        between = first_at + GAP / 2 - started.timestamp()
        after = second_at + GAP / 2 - started.timestamp()

        sign_in_as(auditor, site, "auditor")
        auditor.goto(f"/evidence/recordings/{recording_id}")
        expect(auditor.locator("#player-status")).to_contain_text("Ready", timeout=30000)
        expect(auditor.locator("#keys")).to_contain_text("echo replayed")
        expect(auditor.locator("#keys")).to_contain_text("Return")
        expect(auditor.locator("#markers")).to_contain_text("watched by approver")

        _seek(auditor, between)
        assert _canvas_colour(auditor) == FIRST
        shot(auditor, "desktop-replay-first")
        _seek(auditor, after)
        assert _canvas_colour(auditor) == SECOND
        shot(auditor, "desktop-replay-second")

        # The same offsets decoded on the server side, from the parts the page reads.
        events, parts = _parts(auditor, recording_id)
        assert events[0].type == DesktopEvent.START
        assert parts > 2  # so the page, too, read and played across parts
        for seconds, colour in ((round(between, 1), FIRST), (round(after, 1), SECOND)):
            frame = frame_at(events, seconds)
            assert frame is not None
            assert frame.region_colour(SPOT[0] - 10, SPOT[1] - 10, 20, 20) == colour

        # Pause holds the clock and the picture.
        _seek(auditor, 1.0)
        auditor.get_by_role("button", name="Play", exact=True).click()
        expect(auditor.locator("#desk")).to_have_attribute("data-state", "playing")
        auditor.get_by_role("button", name="Pause", exact=True).click()
        expect(auditor.locator("#desk")).to_have_attribute("data-state", "paused")
        held = auditor.locator("#desk").get_attribute("data-time")
        time.sleep(0.5)
        assert auditor.locator("#desk").get_attribute("data-time") == held

        # Play from just before the second paint: the colour changes while playing at 4x.
        _seek(auditor, second_at - 1 - started.timestamp())
        assert _canvas_colour(auditor) == FIRST
        auditor.locator("#speed").select_option("4")
        auditor.get_by_role("button", name="Play", exact=True).click()
        expect(auditor.locator("#desk")).to_have_attribute("data-state", "paused", timeout=20000)
        assert _canvas_colour(auditor) == SECOND
        expect(auditor.locator("#player-status")).to_have_text("End of the recording.")

        thumb = auditor.request.get(f"/evidence/recordings/{recording_id}/thumbnail.png")
        assert thumb.status == 200
        assert thumb.headers["cache-control"] == "no-store"
        assert _png_size(thumb.body())[0] <= 320
        auditor.goto("/evidence")
        image = auditor.locator(f"img.history-thumb[src*='{recording_id}']")
        expect(image).to_be_visible()
        assert auditor.evaluate(
            "(el) => el.complete && el.naturalWidth > 0", image.element_handle()
        )
        shot(auditor, "desktop-replay-history")
        assert violations == []
    finally:
        for context in contexts:
            context.close()
