"""A large recording plays in parts: the player page asks for a bounded part of the cast, so
the first frame does not wait for the whole recording (asciinema-player downloads a cast
whole before drawing). In process over ASGI (``api`` fixture); the part size and the size
threshold are lowered for the test so a recording of a few hundred KiB counts as large.
"""

from __future__ import annotations

import html
import json
import re

import pytest

from gateway.recorder.service import SessionInfo
from gateway.web import player
from gateway.web.replay import PART_END, TAIL_BYTES, starting_at
from recordings import Kind
from recordings.events import Event
from recordings.terminal import TerminalEvent, resize_payload
from tests.test_api_access import Api, api
from tests.test_identity_helpers import env
from tests.test_portal_evidence_pages import auditor

__all__ = ["api", "env"]
LINES = 12000


async def record_long(api: Api) -> tuple[str, int]:
    """A recording of ``LINES`` numbered output lines, one event each; its file size."""
    writer = await api.env.services.recordings.start(
        SessionInfo("alice", "plc-1", "ssh", "sess-long"), kind=Kind.TERMINAL,
        on_failure=lambda reason: None,
    )  # fmt: skip
    writer.record(TerminalEvent.RESIZE, resize_payload(100, 30))
    for n in range(LINES):
        writer.record(
            TerminalEvent.OUTPUT, f"line {n:05d} of a long listing {'.' * 60}\r\n".encode()
        )
    entry = await api.env.services.recordings.close(writer, "closed")
    return writer.recording_id, entry.size_bytes


def cast_url_of(page_text: str) -> str:
    found = re.search(r'data-cast="([^"]+)"', page_text)
    assert found, page_text[:500]
    return html.unescape(found.group(1))


async def test_a_large_recording_gets_a_bounded_first_part_and_a_small_one_the_whole(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    recording_id, size = await record_long(api)
    audrey = await auditor(api)
    whole = await audrey.client.get(cast_url_of(
        (await audrey.client.get(f"/evidence/recordings/{recording_id}")).text))  # fmt: skip
    assert "part=1" not in str(whole.url) and f"line {LINES - 1:05d}" in whole.text
    monkeypatch.setattr(player, "PART_FILE_BYTES", size // 2)
    monkeypatch.setattr(player, "PART_CAST_BYTES", 256 << 10)
    page = await audrey.client.get(f"/evidence/recordings/{recording_id}")
    assert 'id="next-part"' in page.text and "loads about" in page.text
    url = cast_url_of(page.text)
    assert "part=1" in url and "from=0.000000" in url
    cast = await audrey.client.get(url)
    assert cast.status_code == 200
    lines = [json.loads(line) for line in cast.text.splitlines()]
    assert (lines[0]["width"], lines[0]["height"]) == (100, 30)
    assert 256 << 10 <= len(cast.content) < len(whole.content) // 3
    assert "line 00000" in lines[1][2]  # the first frame is in the first part
    assert f"line {LINES - 1:05d}" not in cast.text  # the rest is not sent
    assert lines[-1][1:] == ["m", PART_END] and lines[-1][0] == lines[-2][0]


async def test_a_later_part_starts_with_the_screen_before_its_offset(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    recording_id, size = await record_long(api)
    audrey = await auditor(api)
    events = [json.loads(x) for x in (await audrey.client.get(
        f"/evidence/recordings/{recording_id}/cast")).text.splitlines()[1:]]  # fmt: skip
    at = next(e[0] for e in events if e[1] == "o" and "line 06000" in e[2])
    monkeypatch.setattr(player, "PART_FILE_BYTES", size // 2)
    monkeypatch.setattr(player, "PART_CAST_BYTES", 256 << 10)
    page = await audrey.client.get(f"/evidence/recordings/{recording_id}?t={at}")
    assert f"from {at:.1f} s" in page.text
    lines = [
        json.loads(x) for x in (await audrey.client.get(cast_url_of(page.text))).text.splitlines()
    ]
    before = [e[2] for e in events if e[1] == "o" and e[0] < at]
    after = [e[2] for e in events if e[1] == "o" and e[0] >= at]
    assert (lines[0]["width"], lines[0]["height"]) == (100, 30)  # the last resize before
    assert lines[1][0] == round(at - 1e-6, 6) and lines[1][1] == "o"  # shown at the offset
    assert lines[1][2].endswith(before[-1]) and after[0] not in lines[1][2]  # the screen
    assert len(lines[1][2]) <= TAIL_BYTES
    assert lines[2][2] == after[0]  # then the recording from the offset on


def test_starting_at_keeps_only_the_last_resize_and_a_bounded_tail() -> None:
    big = b"x" * (TAIL_BYTES + 10)
    events = [
        Event(0, TerminalEvent.RESIZE, resize_payload(80, 24)),
        Event(1, TerminalEvent.OUTPUT, big),
        Event(2, TerminalEvent.RESIZE, resize_payload(120, 40)),
        Event(3, TerminalEvent.MARKER, b"typed: ls"),
        Event(4, TerminalEvent.OUTPUT, b"tail end"),
        Event(5, TerminalEvent.OUTPUT, b"from here"),
    ]
    out = list(starting_at(events, 5))
    assert [(e.offset_us, e.type) for e in out] == [
        (4, TerminalEvent.RESIZE), (4, TerminalEvent.OUTPUT), (5, TerminalEvent.OUTPUT)
    ]  # fmt: skip
    assert out[0].payload == resize_payload(120, 40)
    assert len(out[1].payload) == TAIL_BYTES and out[1].payload.endswith(b"xtail end")
    assert out[2].payload == b"from here"
    assert list(starting_at(events, 0)) == events  # from the start: unchanged
