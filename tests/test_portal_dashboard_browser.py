"""The admin dashboard in Chromium against a real ``conduit serve``: the charts render under
the strict CSP (canvases with bars in the accent colour, no CSP console message, no script
error), beside the same numbers as tables; screenshots at laptop and tablet size.

The site is made by ``conduit init``; the admin with ``conduit user add``, two vendors of two
organisations with ``conduit user invite``, and their sessions as catalog rows written into
the site's database before it serves (recording real sessions is the SSH tests' job). The
aggregates themselves are checked in process (``test_portal_dashboard``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
from playwright.sync_api import Browser, Page, expect

from gateway.config import Overrides, load_settings
from gateway.db.engine import make_engine, make_sessionmaker
from gateway.recorder.tables import STATE_CLOSED, RecordingRow
from tests.browser_support import LAPTOP, TABLET, chromium, shot, watch_csp
from tests.support import conduit, init_data_dir, serving
from tests.test_portal_browser import PASSWORD

pytestmark = pytest.mark.realpeer
# (user, days ago, sessions that day): 6 for vera (Acme), 3 for otto (Bolt), 1 for the admin.
SESSIONS = [("vera", 0, 2), ("vera", 1, 1), ("vera", 12, 3), ("otto", 5, 2), ("otto", 29, 1),
            ("admin", 3, 1)]  # fmt: skip


async def _write_sessions(data_dir: Path) -> None:
    settings = load_settings(None, Overrides(data_dir=data_dir), environ={})
    engine = make_engine(settings)
    now = dt.datetime.now(dt.UTC)
    try:
        async with make_sessionmaker(engine)() as db, db.begin():
            for user, days_ago, count in SESSIONS:
                at = now - dt.timedelta(days=days_ago, minutes=1)
                for _ in range(count):
                    db.add(
                        RecordingRow(
                            id=secrets.token_hex(8), kind="terminal", username=user,
                            asset="plc-1", protocol="ssh", session_id=secrets.token_hex(8),
                            node="node-a", data_key_id="k1", state=STATE_CLOSED,
                            started_at=at, ended_at=at, end_reason="closed", size_bytes=4096,
                        )
                    )  # fmt: skip
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    data_dir = tmp_path_factory.mktemp("dash") / "data"
    init_data_dir(data_dir)
    secret_file = data_dir.parent / "admin.totp"
    made = conduit(
        "user", "add", "admin", "--role", "admin", "--password-stdin", "--totp-secret-file",
        str(secret_file), "--data-dir", str(data_dir), stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    for name, org in (("vera", "acme-automation"), ("otto", "bolt-controls")):
        invited = conduit("user", "invite", name, "--role", "vendor", "--org", org,
                          "--data-dir", str(data_dir))  # fmt: skip
        assert invited.returncode == 0, invited.stderr
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # pytest-asyncio holds a loop here
        pool.submit(asyncio.run, _write_sessions(data_dir)).result()
    with serving(data_dir) as (server, _ssh_port):
        yield server.base, secret_file.read_text().strip()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


# Pixels of the bars' colour (portal.css --accent, #0b63a8) on a chart's canvas.
BAR_PIXELS = """(box) => {
  const canvas = box.querySelector("canvas");
  const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  let n = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i] === 0x0b && data[i + 1] === 0x63 && data[i + 2] === 0xa8) n++;
  }
  return n;
}"""


def _bars(page: Page, chart: str) -> int:
    count: int = page.locator(chart).evaluate(BAR_PIXELS)
    return count


def test_the_dashboard_draws_its_charts_under_the_csp(
    browser: Browser, site: tuple[str, str]
) -> None:
    base, secret = site
    context = browser.new_context(base_url=base, ignore_https_errors=True, viewport=LAPTOP)
    page = context.new_page()
    csp = watch_csp(page)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # A refusal for the dashboard to list: an admin form post without a session (401, audited).
    assert page.request.post("/admin/zones").status == 401
    page.goto("/login")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Continue").click()
    page.get_by_label(re.compile("Code from your authenticator")).fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("link", name="Admin").click()
    page.get_by_role("link", name="Dashboard").first.click()
    expect(page.get_by_role("heading", name="Dashboard", exact=True)).to_be_visible()

    for chart in ("#chart-per-day", "#chart-per-org"):
        expect(page.locator(f"{chart}[data-drawn=true] canvas")).to_have_count(1)
        assert _bars(page, chart) > 100, chart
    expect(page.locator("table.per-org")).to_contain_text("bolt-controls")
    expect(page.locator("#live-count")).to_have_text("0")
    expect(page.get_by_text("10 sessions started in these 30 days.")).to_be_visible()
    expect(page.locator("table.refusals")).to_contain_text("portal.refused")
    page.get_by_text("Sessions per day as a table").click()
    expect(page.locator("table.per-day tbody tr")).to_have_count(30)
    shot(page, "admin-dashboard-laptop")
    page.set_viewport_size(TABLET)
    page.wait_for_function(
        "() => document.querySelector('#chart-per-day canvas').clientWidth < 800"
    )
    assert _bars(page, "#chart-per-day") > 100
    shot(page, "admin-dashboard-tablet")
    assert csp == [] and errors == []
    context.close()
