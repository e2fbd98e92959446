"""The desktop relay between a viewer and a real Xvnc: the viewer's handshake, what reaches
the target (encodings cut to the stateless set, pixel format, clipboard by grant), what is
recorded (start points, keyframes, input), and a watcher whose input reaches nothing.

The viewer is this test speaking RFB over in-memory frames, as noVNC does over the
websocket; the target, the recording container and the parsers are the real ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.desktop import rfb, vnc
from gateway.desktop.bridge import OFFERED_ENCODINGS, DesktopRelay, watch
from recordings import Kind
from recordings.desktop import DesktopEvent, parse_start
from tests.desktop_targets import XvncTarget, missing_reason, start_xvnc
from tests.recordings.recording_helpers import Env, make_env

PASSWORD = "Relay-pw1"
REASON = missing_reason("xsetroot")
pytestmark = [pytest.mark.skipif(bool(REASON), reason=REASON or "tools present")]
RGBX = rfb.PixelFormat(32, 24, False, True, 255, 255, 255, 0, 8, 16)
NOVNC_ENCODINGS = [rfb.ENC_TIGHT, rfb.ENC_ZRLE, rfb.ENC_HEXTILE, rfb.ENC_RRE, rfb.ENC_RAW,
                   rfb.ENC_COPYRECT, rfb.ENC_CURSOR, rfb.ENC_DESKTOP_SIZE, rfb.ENC_LAST_RECT,
                   rfb.ENC_EXTENDED_DESKTOP_SIZE, -258, -261, -313]  # fmt: skip


class Viewer:
    """The browser's side: frames it sends are queued; what it receives is kept in order."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.received = bytearray()
        self.got = asyncio.Event()

    async def send(self, data: bytes) -> None:
        self.received += data
        self.got.set()

    async def receive(self) -> bytes | None:
        return await self.inbox.get()

    async def take(self, n: int) -> bytes:
        async with asyncio.timeout(10):
            while len(self.received) < n:
                self.got.clear()
                await self.got.wait()
        out = bytes(self.received[:n])
        del self.received[:n]
        return out

    async def handshake(self) -> tuple[int, int, str]:
        assert await self.take(12) == b"RFB 003.008\n"
        self.inbox.put_nowait(b"RFB 003.008\n")
        assert await self.take(2) == bytes([1, rfb.SEC_NONE])
        self.inbox.put_nowait(bytes([rfb.SEC_NONE]))
        assert await self.take(4) == b"\0\0\0\0"
        self.inbox.put_nowait(b"\x01")
        head = await self.take(24)
        name = await self.take(int.from_bytes(head[20:24], "big"))
        return int.from_bytes(head[0:2], "big"), int.from_bytes(head[2:4], "big"), name.decode()


@pytest.fixture
async def target(tmp_path: Path) -> AsyncIterator[XvncTarget]:
    started = start_xvnc(tmp_path / "xvnc", password=PASSWORD, geometry="320x240")
    yield started
    started.stop()


async def _relay(
    target: XvncTarget, env: Env, *, grants: frozenset[str] = frozenset(), keyframes: float = 60
) -> tuple[DesktopRelay, vnc.VncConnection]:
    conn = await vnc.open_vnc(vnc.VncTarget("127.0.0.1", target.port), PASSWORD)
    writer = await env.start(kind=Kind.DESKTOP)
    relay = DesktopRelay(conn, writer, name="hmi-1", record_input=True, grants=grants,
                         on_activity=lambda: None, keyframe_seconds=keyframes)  # fmt: skip
    return relay, conn


def _events(env: Env, recording_id: str) -> list[tuple[int, bytes]]:
    events, _result = env.read(recording_id)
    return [(e.type, e.payload) for e in events]


async def _updates(viewer: Viewer, count: int) -> list[rfb.FramebufferUpdate]:
    parser = rfb.ServerStreamParser(RGBX)
    found: list[rfb.FramebufferUpdate] = []
    async with asyncio.timeout(15):
        while len(found) < count:
            while not viewer.received:
                viewer.got.clear()
                await viewer.got.wait()
            data = bytes(viewer.received)
            viewer.received.clear()
            found += [m for m in parser.feed(data) if isinstance(m, rfb.FramebufferUpdate)]
    return found


async def test_viewer_gets_the_target_screen_in_stateless_encodings_and_all_is_recorded(
    target: XvncTarget, tmp_path: Path
) -> None:
    env = make_env(tmp_path / "rec")
    target.paint("#00ff00")
    relay, conn = await _relay(target, env, keyframes=0.5)
    viewer = Viewer()
    greeting = asyncio.create_task(relay.greet(viewer))
    assert await viewer.handshake() == (320, 240, "hmi-1")
    parser = await greeting
    running = asyncio.create_task(relay.run(viewer, parser))
    viewer.inbox.put_nowait(rfb.set_pixel_format(RGBX) + rfb.set_encodings(NOVNC_ENCODINGS))
    viewer.inbox.put_nowait(rfb.framebuffer_update_request(0, 0, 320, 240, incremental=False))
    updates = await _updates(viewer, 1)
    encodings = {r.encoding for u in updates for r in u.rectangles}
    assert encodings <= OFFERED_ENCODINGS, encodings
    viewer.inbox.put_nowait(rfb.key_event(True, ord("a")) + rfb.key_event(False, ord("a")))
    for _ in range(6):  # keep asking, as noVNC does, while keyframes go by
        viewer.inbox.put_nowait(rfb.framebuffer_update_request(0, 0, 320, 240, incremental=True))
        await asyncio.sleep(0.25)
    viewer.inbox.put_nowait(None)  # the viewer leaves
    assert await running == "client_closed"
    await conn.close()
    await relay.writer.close("client_closed")

    events = _events(env, relay.writer.recording_id)
    assert events[0][0] == DesktopEvent.START
    assert parse_start(events[0][1]).name == "hmi-1"
    starts = [p for t, p in events if t == DesktopEvent.START]
    assert len(starts) >= 3  # the first and keyframes every 0.5 s
    # The first is the target's own format; the viewer's SetPixelFormat makes the next one,
    # so a player starting anywhere decodes in the format the updates were sent in.
    assert parse_start(starts[0]).pixel_format == rfb.PIXEL_FORMAT_BGRX.pack()
    assert parse_start(starts[1]).pixel_format == RGBX.pack()
    assert parse_start(starts[-1]).pixel_format == RGBX.pack()
    sent = b"".join(p for t, p in events if t == DesktopEvent.TO_SERVER)
    recorded = rfb.ClientStreamParser(handshake=False).feed(sent)
    kinds = [type(m) for m in recorded]
    assert rfb.FramebufferUpdateRequest not in kinds  # pacing is not input
    assert rfb.KeyEvent in kinds
    (forwarded,) = [m for m in recorded if isinstance(m, rfb.SetEncodings)]
    assert set(forwarded.encodings) <= OFFERED_ENCODINGS
    assert rfb.ENC_TIGHT not in forwarded.encodings and rfb.ENC_HEXTILE in forwarded.encodings
    # What the viewer was sent is exactly what was recorded from the server.
    received = b"".join(p for t, p in events if t == DesktopEvent.FROM_SERVER)
    server = rfb.ServerStreamParser(RGBX).feed(received)
    assert any(isinstance(m, rfb.FramebufferUpdate) for m in server)


async def test_a_viewer_asking_for_a_pixel_format_we_do_not_decode_ends_with_a_protocol_error(
    target: XvncTarget, tmp_path: Path
) -> None:
    env = make_env(tmp_path / "rec")
    relay, conn = await _relay(target, env)
    viewer = Viewer()
    greeting = asyncio.create_task(relay.greet(viewer))
    await viewer.handshake()
    running = asyncio.create_task(relay.run(viewer, await greeting))
    sixteen = rfb.PixelFormat(16, 16, False, True, 31, 63, 31, 11, 5, 0)
    viewer.inbox.put_nowait(rfb.set_pixel_format(sixteen))
    async with asyncio.timeout(10):
        assert await running == "protocol_error"
    await conn.close()
    await relay.writer.close("protocol_error")


async def test_clipboard_reaches_the_target_only_when_granted(
    target: XvncTarget, tmp_path: Path
) -> None:
    for grants, reaches in ((frozenset(), False), (frozenset({"clipboard-in"}), True)):
        env = make_env(tmp_path / f"rec-{reaches}")
        relay, conn = await _relay(target, env, grants=grants)
        viewer = Viewer()
        greeting = asyncio.create_task(relay.greet(viewer))
        await viewer.handshake()
        running = asyncio.create_task(relay.run(viewer, await greeting))
        viewer.inbox.put_nowait(rfb.client_cut_text("pasted secret"))
        viewer.inbox.put_nowait(rfb.key_event(True, ord("x")))  # a message after it
        await asyncio.sleep(0.5)
        viewer.inbox.put_nowait(None)
        await running
        await conn.close()
        await relay.writer.close("client_closed")
        events = _events(env, relay.writer.recording_id)
        sent = b"".join(p for t, p in events if t == DesktopEvent.TO_SERVER)
        cut = [m for m in rfb.ClientStreamParser(handshake=False).feed(sent)
               if isinstance(m, rfb.ClientCutText)]  # fmt: skip
        markers = [p.decode() for t, p in events if t == DesktopEvent.MARKER]
        assert bool(cut) is reaches
        assert any("clipboard to the desktop not granted" in m for m in markers) is not reaches


async def test_a_watcher_sees_the_screen_and_its_input_reaches_nothing(
    target: XvncTarget, tmp_path: Path
) -> None:
    env = make_env(tmp_path / "rec")
    relay, conn = await _relay(target, env)
    vendor = Viewer()
    greeting = asyncio.create_task(relay.greet(vendor))
    await vendor.handshake()
    running = asyncio.create_task(relay.run(vendor, await greeting))
    vendor.inbox.put_nowait(rfb.set_pixel_format(RGBX) + rfb.set_encodings([rfb.ENC_RAW]))
    vendor.inbox.put_nowait(rfb.framebuffer_update_request(0, 0, 320, 240, incremental=False))
    await _updates(vendor, 1)

    watcher = Viewer()
    watching = asyncio.create_task(watch(relay, watcher, "bob"))
    assert await watcher.handshake() == (320, 240, "hmi-1")
    watcher.inbox.put_nowait(rfb.key_event(True, ord("q")) + rfb.pointer_event(1, 5, 5))
    target.paint("#ff0000")
    for _ in range(4):
        vendor.inbox.put_nowait(rfb.framebuffer_update_request(0, 0, 320, 240, incremental=True))
        await asyncio.sleep(0.2)
    assert await _updates(watcher, 1)  # the fresh full update, then the session's
    watcher.inbox.put_nowait(None)
    assert await watching == "left"
    vendor.inbox.put_nowait(None)
    await running
    await conn.close()
    await relay.writer.close("client_closed")
    events = _events(env, relay.writer.recording_id)
    sent = b"".join(p for t, p in events if t == DesktopEvent.TO_SERVER)
    keys = [m for m in rfb.ClientStreamParser(handshake=False).feed(sent)
            if isinstance(m, (rfb.KeyEvent, rfb.PointerEvent))]  # fmt: skip
    assert keys == []  # the vendor typed nothing; the watcher's input was dropped
    assert "watched by bob" in [p.decode() for t, p in events if t == DesktopEvent.MARKER]
