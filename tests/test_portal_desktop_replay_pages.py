"""The desktop player's page and data in process: who may read them, what is audited, bounds.

The app runs over ASGI on SQLite and PostgreSQL (``api`` fixture of ``test_api_access``);
the recordings are real, written by the recordings service with the relay's event types.
The browser acceptance against a real Xvnc is ``test_portal_desktop_replay``.
"""

from __future__ import annotations

import html
import json
import re

from gateway.desktop import rfb
from gateway.recorder.service import SessionInfo
from gateway.web.desktop_replay import read_part
from recordings import Kind
from recordings.desktop import DesktopEvent, StartPoint
from tests.test_api_access import Api, api
from tests.test_api_sessions import audit_rows
from tests.test_identity_helpers import env
from tests.test_portal_evidence_pages import EVIL, auditor, record_terminal

__all__ = ["api", "env"]
RGBX = rfb.PixelFormat(32, 24, False, True, 255, 255, 255, 0, 8, 16)


async def record_desktop(api: Api, user: str = "alice") -> str:
    services = api.env.services
    writer = await services.recordings.start(
        SessionInfo(user, "hmi-1", "vnc", f"desk-{user}"), kind=Kind.DESKTOP,
        on_failure=lambda reason: None,
    )  # fmt: skip
    writer.record(DesktopEvent.START, StartPoint(32, 24, RGBX.pack(), "hmi").payload())
    red = (200 | 30 << 8 | 20 << 16).to_bytes(4, "little")
    writer.record(
        DesktopEvent.FROM_SERVER,
        rfb.framebuffer_update([(0, 0, 32, 24, rfb.ENC_RAW, red * (32 * 24))]),
    )
    writer.record(DesktopEvent.TO_SERVER, rfb.key_event(True, ord("x")))
    writer.record(DesktopEvent.MARKER, EVIL.encode())
    await services.recordings.close(writer, "closed")
    return writer.recording_id


def data_paths(recording_id: str) -> list[str]:
    base = f"/evidence/recordings/{recording_id}"
    return [f"{base}/desktop-index", f"{base}/rfb?from=0", f"{base}/thumbnail.png"]


async def test_others_get_404_for_the_page_and_its_data_and_it_is_audited(api: Api) -> None:
    real = await record_desktop(api)
    paths = [f"/evidence/recordings/{real}", *data_paths(real), *data_paths("0" * 32)]
    for name in ("alice", "bob"):
        person = await api.login(name)
        for path in paths:
            answer = await person.client.get(path)
            assert answer.status_code == 404, (name, path)
            assert answer.headers["content-type"].startswith("text/html")
    assert len(await audit_rows(api, "portal.refused")) == 2 * len(paths)
    assert not await audit_rows(api, "recording.viewed")
    anonymous = api.client()
    for path in data_paths(real):
        assert (await anonymous.get(path)).status_code == 401


async def test_the_page_plays_with_novnc_and_its_data_is_audited_once(api: Api) -> None:
    recording_id = await record_desktop(api)
    audrey = await auditor(api)
    page = await audrey.client.get(f"/evidence/recordings/{recording_id}")
    assert page.status_code == 200, page.text
    csp = page.headers["content-security-policy"]
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert 'src="/static/desktop_player.js"' in page.text and "<script>" not in page.text
    view_pass = html.unescape(re.search(r'data-pass="([^"]+)"', page.text).group(1))  # type: ignore[union-attr]
    assert len(await audit_rows(api, "recording.viewed")) == 1
    base = f"/evidence/recordings/{recording_id}"
    index = await audrey.client.get(f"{base}/desktop-index", params={"pass": view_pass})
    assert index.status_code == 200
    found = index.json()
    assert found["starts"][0][1] == 0 and found["has_input"] is True
    assert [k for _, k in found["keys"]] == ["x"]
    assert [m for _, m in found["markers"]] == [EVIL]  # JSON; the page sets it as text
    part = await audrey.client.get(f"{base}/rfb", params={"from": "0", "pass": view_pass})
    assert part.status_code == 200 and part.headers["x-next-event"] == ""
    assert [e.type for e in read_part(part.content)] == [
        DesktopEvent.START,
        DesktopEvent.FROM_SERVER,
    ]
    thumb = await audrey.client.get(f"{base}/thumbnail.png", params={"pass": view_pass})
    assert thumb.status_code == 200 and thumb.content.startswith(b"\x89PNG")
    assert thumb.headers["cache-control"] == "no-store"
    assert len(await audit_rows(api, "recording.viewed")) == 1  # the pass covered them
    await audrey.client.get(f"{base}/rfb?from=0")
    await audrey.client.get(f"{base}/thumbnail.png")  # seen within the pass time: no event
    viewed = await audit_rows(api, "recording.viewed")
    assert [json.loads(v.detail)["via"] for v in viewed] == ["page", "rfb"]
    history = await audrey.client.get("/evidence")
    assert f'src="{base}/thumbnail.png"' in history.text


async def test_bounds_and_other_kinds(api: Api) -> None:
    recording_id = await record_desktop(api)
    terminal = await record_terminal(api, "alice", b"hello\r\n")
    audrey = await auditor(api)
    base = f"/evidence/recordings/{recording_id}"
    for bad in ("-1", "abc", "1e3", "9" * 14, ""):
        answer = await audrey.client.get(f"{base}/rfb", params={"from": bad})
        assert answer.status_code == 422, bad
    later = await audrey.client.get(f"{base}/rfb", params={"from": "99"})
    assert later.status_code == 200 and list(read_part(later.content)) == []
    for path in data_paths(terminal):
        assert (await audrey.client.get(path)).status_code == 404
    cast = await audrey.client.get(f"{base}/cast")
    assert cast.status_code == 404
