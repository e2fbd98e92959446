"""A desktop viewer for tests and benches without a browser: RFB 3.8 over the portal's
``/ws/desktop`` websocket (or any websocket carrying RFB), as noVNC speaks it.

``open_desktop`` makes a portal session in the database (as a password + TOTP login makes it),
asks the desktop ticket with its CSRF token and opens the socket; ``Viewer`` does the RFB
handshake (security None toward the gateway, VNC authentication when given a password, for a
baseline straight to a target), asks for 32-bit colour and Hextile/CopyRect/RRE/Raw, keeps one
update request outstanding and decodes updates (``gateway.desktop.framebuffer``). Text frames
are the gateway's controls: ``{"type": "end", "reason": ...}`` sets ``ended``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import struct
import time
from pathlib import Path

import httpx
from websockets.asyncio.client import ClientConnection, connect

from gateway.config import Overrides, load_settings
from gateway.db.models import User
from gateway.desktop import rfb
from gateway.desktop.framebuffer import Framebuffer
from gateway.desktop.vnc import _vnc_auth_response
from gateway.identity import pending, portal_sessions
from gateway.keys import load_keyring
from gateway.services import Services
from gateway.web.auth import SESSION_COOKIE

ENCODINGS = (rfb.ENC_HEXTILE, rfb.ENC_COPYRECT, rfb.ENC_RRE, rfb.ENC_RAW)
PIXEL_FORMAT = rfb.PIXEL_FORMAT_BGRX
QUIET_S = 0.05  # no update for this long: the screen has settled
READ_SECONDS = 30  # the most any single read in the handshake waits


class Viewer:
    """RFB 3.8 over websocket binary frames; text frames are controls (``end``)."""

    def __init__(self, ws: ClientConnection, name: str) -> None:
        self.ws, self.name = ws, name
        self.buf = bytearray()
        self.end_reason: str | None = None
        self.ended = asyncio.Event()
        self.ended_at = 0.0  # perf_counter, and wall clock
        self.ended_wall = 0.0
        self.updates = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.active = True  # keep an update request outstanding
        self.decode = True
        self.fb: Framebuffer | None = None
        self.changed = asyncio.Event()
        self.last_update = 0.0
        self.change_at = 0.0
        self.reader: asyncio.Task[None] | None = None
        self.parser: rfb.ServerStreamParser | None = None
        self.cut_texts: list[str] = []  # ServerCutText received

    async def _chunk(self) -> bytes:
        while True:
            message = await self.ws.recv()
            if isinstance(message, str):
                self._control(message)
                continue
            return message

    def _control(self, text: str) -> None:
        control = json.loads(text)
        if control.get("type") == "end" and not self.ended.is_set():
            self.ended_at, self.ended_wall = time.perf_counter(), time.time()
            self.end_reason = str(control.get("reason", ""))
            self.ended.set()

    async def _read(self, n: int) -> bytes:
        async with asyncio.timeout(READ_SECONDS):
            while len(self.buf) < n:
                self.buf += await self._chunk()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def send(self, data: bytes) -> None:
        self.bytes_out += len(data)
        await self.ws.send(data)

    async def handshake(self, password: str | None) -> None:
        """Version, security (None through Conduit, VNC authentication direct), ServerInit;
        then 32-bit colour, the encodings, a full update request and the reader."""
        await self._read(12)
        await self.send(rfb.protocol_version(8))
        types = await self._read((await self._read(1))[0])
        kind = rfb.SEC_VNC_AUTH if password is not None else rfb.SEC_NONE
        if kind not in types:
            raise RuntimeError(f"{self.name}: security {kind} not offered: {list(types)}")
        await self.send(bytes([kind]))
        if password is not None:
            await self.send(_vnc_auth_response(password, await self._read(16)))
        if struct.unpack(">I", await self._read(4))[0] != 0:
            raise RuntimeError(f"{self.name}: security refused")
        await self.send(rfb.client_init(True))
        width, height = struct.unpack(">HH", await self._read(4))
        await self._read(16)
        await self._read(struct.unpack(">I", await self._read(4))[0])
        self.fb = Framebuffer(width, height, PIXEL_FORMAT)
        self.parser = rfb.ServerStreamParser(PIXEL_FORMAT)
        await self.send(rfb.set_pixel_format(PIXEL_FORMAT) + rfb.set_encodings(ENCODINGS))
        leftover = bytes(self.buf)
        self.buf.clear()
        self.reader = asyncio.create_task(self._run(leftover))
        await self.full()

    async def full(self) -> None:
        assert self.fb is not None  # noqa: S101
        request = rfb.framebuffer_update_request(
            0, 0, self.fb.width, self.fb.height, incremental=False
        )
        await self.send(request)

    async def _incremental(self) -> None:
        assert self.fb is not None  # noqa: S101
        await self.send(
            rfb.framebuffer_update_request(0, 0, self.fb.width, self.fb.height, incremental=True)
        )

    async def _run(self, leftover: bytes) -> None:
        assert self.parser is not None and self.fb is not None  # noqa: S101
        data = leftover
        with contextlib.suppress(Exception):
            while True:
                if data:
                    self.bytes_in += len(data)
                    arrived = time.perf_counter()
                    for message in self.parser.feed(data):
                        if isinstance(message, rfb.ServerCutText):
                            self.cut_texts.append(message.text)
                        if not isinstance(message, rfb.FramebufferUpdate):
                            continue
                        self.updates += 1
                        self.last_update = arrived
                        if self.decode:
                            before = bytes(self.fb.rgb) if not self.changed.is_set() else b""
                            self.fb.apply(message)
                            if before and self.fb.rgb != before:
                                self.change_at = arrived
                                self.changed.set()
                        if self.active:
                            await self._incremental()
                data = await self._chunk()
        if not self.ended.is_set():
            self.ended_at, self.ended_wall = time.perf_counter(), time.time()
            self.ended.set()

    async def settle(self, limit_s: float = 5) -> None:
        """Until no update has arrived for ``QUIET_S``."""
        deadline = time.perf_counter() + limit_s
        while time.perf_counter() < deadline:
            await asyncio.sleep(QUIET_S)
            if time.perf_counter() - self.last_update >= QUIET_S:
                return

    async def pause(self) -> None:
        self.active = False
        await self.settle()

    async def resume(self, decode: bool) -> None:
        self.active, self.decode = True, decode
        await self.full()
        await asyncio.sleep(0.2)
        await self.settle()

    async def key(self, keysym: int) -> float:
        """ms from the key press until the framebuffer shows a change."""
        await self.settle()
        self.changed.clear()
        start = time.perf_counter()
        await self.send(rfb.key_event(True, keysym) + rfb.key_event(False, keysym))
        await asyncio.wait_for(self.changed.wait(), 10)
        return (self.change_at - start) * 1000

    async def close(self) -> None:
        await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)


async def portal_session(data_dir: Path, username: str) -> tuple[str, str]:
    """A portal session for ``username`` made in the database: (cookie header, CSRF token)."""
    from sqlalchemy import select

    settings = load_settings(None, Overrides(data_dir=data_dir), environ={})
    services = Services.build(settings, load_keyring(settings))
    try:
        async with services.sessions() as db, db.begin():
            now = services.clock()
            user_id = await db.scalar(select(User.id).where(User.username == username))
            assert user_id is not None, username  # noqa: S101
            raw = await portal_sessions.create(db, user_id, now, now, "127.0.0.1", "test")
        csrf = pending.csrf_token(services.keys.master_key, "session", raw)
    finally:
        await services.close()
    return f"{SESSION_COOKIE}={raw}", csrf


def portal_tls(data_dir: Path) -> ssl.SSLContext:
    """Trust exactly the portal's own certificate (``conduit init`` made it)."""
    return ssl.create_default_context(cafile=str(data_dir / "tls" / "portal.crt"))


async def open_socket(
    base: str, data_dir: Path, username: str, asset: str, size: tuple[int, int] = (1024, 768)
) -> ClientConnection:
    """The desktop websocket of ``username`` on ``asset`` at the portal ``base`` URL (http or
    https), ticket spent; no RFB spoken yet. ``httpx.HTTPStatusError`` if the ticket is refused;
    the socket's own refusals come as its close."""
    cookie, csrf = await portal_session(data_dir, username)
    tls = portal_tls(data_dir) if base.startswith("https:") else None
    async with httpx.AsyncClient(timeout=60, verify=tls or True) as client:
        answer = await client.post(
            f"{base}/connect/{asset}/desktop/ticket",
            headers={"Cookie": cookie, "X-CSRF-Token": csrf},
        )
        answer.raise_for_status()
    ticket = answer.json()["ticket"]
    url = base.replace("http", "ws", 1) + (
        f"/ws/desktop?ticket={ticket}&width={size[0]}&height={size[1]}"
    )
    headers = {"Cookie": cookie, "Origin": base}
    return await connect(url, additional_headers=headers, max_size=None, ssl=tls, compression=None)


async def open_desktop(
    base: str, data_dir: Path, username: str, asset: str, size: tuple[int, int] = (1024, 768)
) -> Viewer:
    """``open_socket``, then the RFB handshake and a first full update requested."""
    viewer = Viewer(await open_socket(base, data_dir, username, asset, size), "conduit")
    await viewer.handshake(None)
    return viewer
