"""The desktop relay: a viewer (noVNC in the browser) on one side, the target's RFB on the other.

The gateway has already authenticated to the target (``vnc.open_vnc``); toward the viewer it
is the RFB server: version 3.8, security type None (the websocket was authenticated by the
portal), then the target's ServerInit. From there every message is framed by
``gateway.desktop.rfb`` in both directions and checked before it is forwarded:

- the viewer's SetEncodings is cut to ``OFFERED_ENCODINGS``: encodings that carry no state
  from one message to the next, so a player can start at any keyframe (FORMAT.md, desktop);
- its pixel format must be 32-bit true colour (what noVNC asks for; the thumbnail and the
  replay decode it); SetDesktopSize is dropped (the viewer scales, it does not resize);
- its clipboard reaches the target only with ``clipboard-in`` granted, the target's reaches
  it only with ``clipboard-out``; each refusal is a marker in the recording;
- key and pointer events count as activity (the idle timeout); update requests do not.

Everything relayed is recorded as whole messages (``recordings.desktop``), the viewer's
input only when the asset records input. Every ``KEYFRAME_SECONDS`` the relay writes a start
point and asks the target for a full update. Watchers (``join``) get the same server
messages from the next message on, after a fresh full update; nothing they send is
forwarded. Does not decide access, open the session or talk HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.desktop import rfb
from gateway.desktop.vnc import VncConnection
from gateway.errors import UpstreamError
from recordings.desktop import DesktopEvent, StartPoint
from recordings.writer import RecordingWriter

log = logging.getLogger(__name__)

OFFERED_ENCODINGS = frozenset(
    {
        rfb.ENC_RAW,
        rfb.ENC_COPYRECT,
        rfb.ENC_RRE,
        rfb.ENC_HEXTILE,
        rfb.ENC_CURSOR,
        rfb.ENC_DESKTOP_SIZE,
        rfb.ENC_LAST_RECT,
    }
)
KEYFRAME_SECONDS = 5.0
GREETING_SECONDS = 15.0  # the viewer's side of the handshake
RECORDER_HIGH = 16 << 20  # recording queued before reading from the target pauses
RECORDER_LOW = 4 << 20
WATCH_QUEUE_BYTES = 32 << 20  # server messages queued for one watcher before it is dropped
MAX_WATCHERS = 8
INPUT_GRANTS = ("clipboard-in", "clipboard-out", "file-transfer")

# End reasons (recordings/FORMAT.md footer codes)
CLIENT_CLOSED = "client_closed"
CLOSED = "closed"
PROTOCOL_ERROR = "protocol_error"


class Viewer(Protocol):
    """The browser side: whole websocket binary frames (control frames are the web layer's)."""

    async def send(self, data: bytes) -> None: ...

    async def receive(self) -> bytes | None:
        """The next binary frame, or None once the viewer has gone."""
        ...


class ViewerRefused(rfb.RFBError):
    """The viewer asked for something the relay does not do (a message for its status line)."""


def rgbx_like(pixel_format: rfb.PixelFormat) -> bool:
    """32-bit true colour with 8 bits per channel: what viewers ask for and we decode."""
    pf = pixel_format
    return (
        pf.true_colour
        and pf.bits_per_pixel == 32
        and (pf.red_max, pf.green_max, pf.blue_max) == (255, 255, 255)
        and {pf.red_shift, pf.green_shift, pf.blue_shift} <= {0, 8, 16, 24}
    )


async def _next_message(viewer: Viewer, parser: rfb.ClientStreamParser) -> rfb.ClientMessage:
    while True:
        data = await viewer.receive()
        if data is None:
            raise ConnectionResetError("viewer left during the handshake")
        messages = parser.feed(data)
        if messages:
            if len(messages) > 1:
                raise rfb.RFBError("viewer sent more than the handshake asked for")
            return messages[0]


async def greet(
    viewer: Viewer, init: StartPoint, pixel_format: rfb.PixelFormat
) -> rfb.ClientStreamParser:
    """The viewer's handshake, the gateway as server: RFB 3.8, security None, ServerInit.
    Returns the viewer's parser, positioned after ClientInit."""
    parser = rfb.ClientStreamParser()
    async with asyncio.timeout(GREETING_SECONDS):
        await viewer.send(rfb.protocol_version(8))
        version = await _next_message(viewer, parser)
        if not isinstance(version, rfb.ProtocolVersion) or version.effective_minor != 8:
            await viewer.send(rfb.connection_failed("this gateway speaks RFB 3.8 only"))
            raise ViewerRefused("viewer is not RFB 3.8")
        await viewer.send(rfb.security_types([rfb.SEC_NONE]))
        choice = await _next_message(viewer, parser)
        if not isinstance(choice, rfb.SecurityChoice) or choice.type != rfb.SEC_NONE:
            raise ViewerRefused("viewer chose a security type that was not offered")
        await viewer.send(rfb.security_result(True))
        client_init = await _next_message(viewer, parser)
        if not isinstance(client_init, rfb.ClientInit):
            raise ViewerRefused("viewer sent no ClientInit")
        await viewer.send(rfb.server_init(init.width, init.height, pixel_format, init.name))
    return parser


@dataclass
class Watcher:
    """One read-only viewer of a live desktop: server messages queued for it."""

    name: str
    queue: deque[bytes]
    queued: int = 0
    dropped: bool = False
    wake: asyncio.Event = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.wake = asyncio.Event()

    def push(self, data: bytes) -> None:
        if self.dropped:
            return
        if self.queued + len(data) > WATCH_QUEUE_BYTES:
            self.dropped = True  # too slow: the watch ends, the session goes on
            self.queue.clear()
        else:
            self.queue.append(data)
            self.queued += len(data)
        self.wake.set()

    async def next(self) -> bytes | None:
        """Queued bytes joined, or None once this watcher was dropped or the session ended."""
        while not self.queue:
            if self.dropped:
                return None
            self.wake.clear()
            await self.wake.wait()
        data = b"".join(self.queue)
        self.queue.clear()
        self.queued = 0
        return data


class DesktopRelay:
    """One live desktop session's relay: target, recording, viewer and watchers."""

    def __init__(
        self,
        upstream: VncConnection,
        writer: RecordingWriter,
        *,
        name: str,
        record_input: bool,
        grants: frozenset[str],
        on_activity: Callable[[], None],
        keyframe_seconds: float = KEYFRAME_SECONDS,
    ) -> None:
        init = upstream.server_init
        self.keyframe_seconds = keyframe_seconds
        self.upstream = upstream
        self.writer = writer
        self.name = name
        self.record_input = record_input
        self.grants = grants
        self.on_activity = on_activity
        self.width, self.height = init.width, init.height
        self.pixel_format = upstream.pixel_format
        self.watchers: list[Watcher] = []
        self.refusals: list[str] = []  # why something the viewer sent was not forwarded
        self._marked: set[str] = set()
        self._send_lock = asyncio.Lock()

    def start_point(self) -> StartPoint:
        return StartPoint(self.width, self.height, self.pixel_format.pack(), self.name)

    async def greet(self, viewer: Viewer) -> rfb.ClientStreamParser:
        parser = await greet(viewer, self.start_point(), self.pixel_format)
        self.writer.record(DesktopEvent.START, self.start_point().payload())
        return parser

    # -- the session ---------------------------------------------------------------------------
    async def run(self, viewer: Viewer, parser: rfb.ClientStreamParser) -> str:
        """Relay until one side ends; the end reason. ``RFBError`` ends it as a protocol error
        (logged with the reason, the session only)."""
        tasks = {
            asyncio.create_task(self._from_target(viewer), name="desktop-out"): "out",
            asyncio.create_task(self._from_viewer(viewer, parser), name="desktop-in"): "in",
            asyncio.create_task(self._keyframes(), name="desktop-keyframes"): "keyframes",
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for watcher in self.watchers:
                watcher.dropped = True
                watcher.wake.set()
        first = next(iter(done))
        error = first.exception()
        if isinstance(error, rfb.RFBError):
            log.warning("desktop %s: protocol error: %s", self.writer.recording_id, error.reason)
            return PROTOCOL_ERROR
        if isinstance(error, (UpstreamError, OSError, ConnectionError)):
            return CLOSED if tasks[first] == "out" else CLIENT_CLOSED
        if error is not None:
            raise error
        return CLOSED if tasks[first] == "out" else CLIENT_CLOSED

    async def _from_target(self, viewer: Viewer) -> None:
        while True:
            messages = await self.upstream.receive()
            if not messages:
                return  # the target closed
            out: list[bytes] = []
            for message in messages:
                raw = self._server_message(message)
                if raw:
                    out.append(raw)
            if not out:
                continue
            data = b"".join(out)
            self.writer.record(DesktopEvent.FROM_SERVER, data)
            for watcher in self.watchers:  # whole messages: a watcher joins at a boundary
                watcher.push(data)
            await viewer.send(data)
            if self.writer.queued_bytes > RECORDER_HIGH:
                await self.writer.room(RECORDER_LOW)

    def _server_message(self, message: rfb.ServerMessage) -> bytes:
        if isinstance(message, rfb.FramebufferUpdate):
            for rect in message.rectangles:
                if rect.encoding in (rfb.ENC_DESKTOP_SIZE, rfb.ENC_EXTENDED_DESKTOP_SIZE):
                    self.width, self.height = rect.width, rect.height
            return message.raw
        if isinstance(message, rfb.ServerCutText):
            if "clipboard-out" not in self.grants:
                self._mark("clipboard from the desktop not granted: dropped")
                return b""
            return message.raw
        if isinstance(message, (rfb.Bell, rfb.SetColourMapEntries)):
            return message.raw
        raise rfb.RFBError(f"target sent {type(message).__name__} after the handshake")

    async def _from_viewer(self, viewer: Viewer, parser: rfb.ClientStreamParser) -> None:
        while True:
            data = await viewer.receive()
            if data is None:
                return
            forwarded: list[bytes] = []
            recorded: list[bytes] = []
            for message in parser.feed(data):
                raw = self._client_message(message)
                if raw:
                    forwarded.append(raw)
                    if not isinstance(message, rfb.FramebufferUpdateRequest):
                        recorded.append(raw)  # requests are the viewer's pacing, not input
            if not forwarded:
                continue
            async with self._send_lock:
                await self.upstream.send(b"".join(forwarded))
            if recorded and self.record_input:
                self.writer.record(DesktopEvent.TO_SERVER, b"".join(recorded))

    def _client_message(self, message: rfb.ClientMessage) -> bytes:
        if isinstance(message, (rfb.KeyEvent, rfb.PointerEvent)):
            self.on_activity()
            return message.raw
        if isinstance(message, rfb.FramebufferUpdateRequest):
            return message.raw
        if isinstance(message, rfb.SetEncodings):
            offered = [e for e in rfb.filter_encodings(message.encodings) if e in OFFERED_ENCODINGS]
            if rfb.ENC_RAW not in offered:
                offered.append(rfb.ENC_RAW)
            return rfb.set_encodings(offered)
        if isinstance(message, rfb.SetPixelFormat):
            if not rgbx_like(message.pixel_format):
                raise ViewerRefused("viewer asked for a pixel format other than 32-bit colour")
            changed = message.pixel_format != self.pixel_format
            self.pixel_format = message.pixel_format
            if changed:  # a player starting at the first start point decodes in this format
                self.writer.record(DesktopEvent.START, self.start_point().payload())
            return message.raw
        if isinstance(message, rfb.ClientCutText):
            if "clipboard-in" not in self.grants:
                self._mark("clipboard to the desktop not granted: dropped")
                return b""
            return message.raw
        if isinstance(message, rfb.SetDesktopSize):
            return b""
        raise rfb.RFBError(f"viewer sent {type(message).__name__} after the handshake")

    def _mark(self, text: str) -> None:
        """A refusal, once per kind per session, in the recording and for the page."""
        if text in self._marked:
            return
        self._marked.add(text)
        self.refusals.append(text)
        self.writer.record(DesktopEvent.MARKER, text.encode())

    async def full_update(self, *, keyframe: bool) -> None:
        """Ask the target for the whole screen (a keyframe also writes a start point)."""
        if keyframe:
            self.writer.record(DesktopEvent.START, self.start_point().payload())
        request = rfb.framebuffer_update_request(0, 0, self.width, self.height, incremental=False)
        async with self._send_lock:
            await self.upstream.send(request)

    async def _keyframes(self) -> None:
        while True:
            await asyncio.sleep(self.keyframe_seconds)
            await self.full_update(keyframe=True)

    # -- watchers ------------------------------------------------------------------------------
    def join(self, name: str) -> Watcher:
        if len([w for w in self.watchers if not w.dropped]) >= MAX_WATCHERS:
            raise ViewerRefused("too many people are watching this desktop")
        watcher = Watcher(name, deque())
        self.watchers = [w for w in self.watchers if not w.dropped] + [watcher]
        self.writer.record(DesktopEvent.MARKER, f"watched by {name}".encode())
        return watcher

    def leave(self, watcher: Watcher) -> None:
        watcher.dropped = True
        watcher.wake.set()
        self.watchers = [w for w in self.watchers if w is not watcher]


async def watch(relay: DesktopRelay, viewer: Viewer, name: str) -> str:
    """Serve one watcher until it leaves or the session ends: the handshake with the
    desktop's current size, a fresh full update, then the session's server messages. Its
    input is read and dropped. Returns why it ended."""
    await greet(viewer, relay.start_point(), relay.pixel_format)
    watcher = relay.join(name)

    async def send() -> str:
        await relay.full_update(keyframe=False)
        while True:
            data = await watcher.next()
            if data is None:
                return "ended"
            await viewer.send(data)

    async def drain() -> str:
        while await viewer.receive() is not None:
            pass  # a watcher's input reaches nothing
        return "left"

    tasks = [asyncio.create_task(send()), asyncio.create_task(drain())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return str(next(iter(done)).result())  # an error is the caller's to report
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        relay.leave(watcher)
