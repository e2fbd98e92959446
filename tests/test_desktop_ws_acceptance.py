"""Desktop sessions at the websocket level, against real targets and a real ``conduit serve``: no
browser, a Python RFB client speaking to ``/ws/desktop`` as noVNC does (``tests.desktop_ws``).

Targets: TigerVNC ``Xvnc`` (VNC authentication) running an ``xterm`` with ``bash`` in a work
directory, ``x11vnc`` sharing that display, and a hostile VNC server (an asyncio server in this
module: a valid handshake, then malformed or oversized messages). Checked: a hostile target ends
its own session only (``protocol_error`` in the audit) while a desktop on the real Xvnc goes
on; an x11vnc desktop works; revoking the grant and a grant's end each end a live desktop and
the page gets the ``end`` control with the reason; ``[desktop] max_sessions = 1`` refuses a
second desktop with close code 1013 and ``session.denied`` (audited before the close); a
ClientCutText reaches the target's clipboard only with ``clipboard-in`` (checked by pasting it
into the xterm's bash: the command it holds runs or not), and the refusal is a marker in the
recording. Timings (the 1 s
bound) are measured in ``bench/desktop.py``, not here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from gateway.desktop import rfb
from tests.desktop_site import DesktopSite, add_asset, add_grant, add_users, xvnc_with_xterm
from tests.desktop_targets import XvncTarget, missing_reason, start_x11vnc
from tests.desktop_ws import Viewer, open_desktop, open_socket
from tests.support import clean_env, conduit, init_data_dir, serving

pytestmark = pytest.mark.realpeer

VNC_PASSWORD = "vault-Qx7!pw"  # noqa: S105 - the target's, vaulted
SHIFT, CONTROL, INSERT, RETURN = 0xFFE1, 0xFFE3, 0xFF63, 0xFF0D
HOSTILE = {
    "unknown message type": b"\x7f" + bytes(64),
    "rectangle bigger than any framebuffer": struct.pack(">BxH", 0, 1)
    + struct.pack(">HHHHi", 0, 0, 60000, 60000, rfb.ENC_RAW)
    + bytes(1024),
    "cut text of 2 GiB announced": struct.pack(">B3xI", 3, 0x7FFFFFFF) + b"x" * 1024,
    "encoding never offered": struct.pack(">BxH", 0, 1)
    + struct.pack(">HHHHi", 0, 0, 16, 16, 12345)
    + bytes(64),
}


# -- the hostile target --------------------------------------------------------------------------
class HostileServer:
    """RFB 3.8, security None, a ServerInit of 1024x768; after the viewer's first message, the
    payload of ``next_payload``; then it holds the connection open (the gateway must end it)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.next_payload = b""
        self.port = 0
        self.served = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()
        server.close()
        self.loop.run_until_complete(server.wait_closed())
        self.loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        payload = self.next_payload
        try:
            writer.write(rfb.protocol_version(8))
            await reader.readexactly(12)
            writer.write(rfb.security_types([rfb.SEC_NONE]))
            await reader.readexactly(1)
            writer.write(rfb.security_result(True))
            await reader.readexactly(1)  # ClientInit
            writer.write(rfb.server_init(1024, 768, rfb.PIXEL_FORMAT_BGRX, "hostile"))
            await writer.drain()
            await reader.read(1)  # the viewer's first message, through the gateway
            writer.write(payload)
            await writer.drain()
            self.served += 1
            await asyncio.wait_for(reader.read(), 60)  # until the gateway hangs up
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


# -- the site ------------------------------------------------------------------------------------
@dataclass
class Site(DesktopSite):
    target: XvncTarget
    work: Path
    hostile: HostileServer

    def ended(self, session_id: str) -> dict[str, object]:
        """The ``session.end`` event of a session, once it is written (bounded wait)."""
        deadline = time.monotonic() + 20
        while True:
            for event in self.audit():
                if event["action"] == "session.end" and _detail(event, "session_id") == session_id:
                    return event
            assert time.monotonic() < deadline, f"no session.end for {session_id}"
            time.sleep(0.2)

    def last_session(self, user: str, asset: str) -> tuple[str, str]:
        """(session id, recording id) of the user's newest session on ``asset``."""
        starts = [e for e in self.audit() if e["action"] == "session.start"
                  and (e["actor"], e["target"]) == (user, asset)]  # fmt: skip
        assert starts, f"no session of {user} on {asset}"
        return _detail(starts[-1], "session_id"), _detail(starts[-1], "recording_id")


def _detail(event: dict[str, object], key: str) -> str:
    detail = event["detail"]
    assert isinstance(detail, dict)
    return str(detail.get(key, ""))


def _vendors(data_dir: Path, *names: str) -> dict[str, str]:
    return add_users(data_dir, data_dir, [(name, "vendor") for name in names])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    missing = missing_reason("xterm", "x11vnc")
    if missing:
        pytest.skip(missing)
    base = tmp_path_factory.mktemp("deskws")
    data_dir = base / "data"
    init_data_dir(data_dir)
    # An xterm over the screen: the viewers put the pointer on it.
    with xvnc_with_xterm(base, VNC_PASSWORD, "1024x768", "100x40+0+0") as desk:
        hostile = HostileServer()
        x11vnc = None
        try:
            x11vnc = start_x11vnc(base / "xvnc", desk.target, VNC_PASSWORD)
            secrets = _vendors(data_dir, "vendor", "clipper", "ender")
            add_asset(data_dir, "hmi-vnc", desk.target.port, VNC_PASSWORD)
            add_asset(data_dir, "hmi-x11vnc", x11vnc.port, VNC_PASSWORD)
            add_asset(data_dir, "hostile", hostile.port, None)
            for asset in ("hmi-vnc", "hmi-x11vnc", "hostile"):
                add_grant(data_dir, "vendor", asset, "vnc")
            add_grant(data_dir, "clipper", "hmi-vnc", "vnc")
            add_grant(data_dir, "clipper", "hmi-vnc", "clipboard-in")
            with serving(data_dir) as (server, _ssh_port):
                yield Site(server, data_dir, secrets, desk.target, desk.work, hostile)
        finally:
            if x11vnc is not None:
                x11vnc.stop()
            hostile.close()


# -- helpers on a viewer -----------------------------------------------------------------------
async def _first_update(viewer: Viewer) -> None:
    async with asyncio.timeout(30):
        while viewer.updates == 0:
            assert not viewer.ended.is_set(), viewer.end_reason
            await asyncio.sleep(0.05)


async def _type_line(viewer: Viewer, text: str) -> None:
    """The pointer over the xterm, Ctrl-U (a clean line), ``text``, Return."""
    keys = rfb.pointer_event(0, 300, 200)
    keys += rfb.key_event(True, CONTROL) + rfb.key_event(True, ord("u"))
    keys += rfb.key_event(False, ord("u")) + rfb.key_event(False, CONTROL)
    for char in text:
        keys += rfb.key_event(True, ord(char)) + rfb.key_event(False, ord(char))
    keys += rfb.key_event(True, RETURN) + rfb.key_event(False, RETURN)
    await viewer.send(keys)


async def _paste(viewer: Viewer) -> None:
    """Shift+Insert in the xterm: paste the PRIMARY selection (Xvnc sets it from cut text);
    then Return (bash takes a paste as text, bracketed: Return runs it)."""
    await viewer.send(
        rfb.pointer_event(0, 300, 200)
        + rfb.key_event(True, SHIFT) + rfb.key_event(True, INSERT)
        + rfb.key_event(False, INSERT) + rfb.key_event(False, SHIFT)
    )  # fmt: skip
    await asyncio.sleep(0.3)  # the xterm has asked for the selection and inserted it
    await viewer.send(rfb.key_event(True, RETURN) + rfb.key_event(False, RETURN))


async def _wait_file(path: Path, seconds: float = 20) -> None:
    """Until ``path`` exists on the target (the typed command ran); bounded."""
    deadline = time.monotonic() + seconds
    while not await asyncio.to_thread(path.exists):
        assert time.monotonic() < deadline, f"{path.name} never appeared on the target"
        await asyncio.sleep(0.1)


async def _desktop(site: Site, user: str, asset: str) -> Viewer:
    viewer = await open_desktop(site.server.base, site.data_dir, user, asset)
    await _first_update(viewer)
    return viewer


async def _desktop_once_granted(site: Site, user: str, asset: str) -> Viewer:
    """A desktop for a grant just added: retried until the gateway's policy has it."""
    deadline = time.monotonic() + 20
    while True:
        viewer = await open_desktop(site.server.base, site.data_dir, user, asset)
        try:
            await _first_update(viewer)
            return viewer
        except AssertionError:
            await viewer.close()
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


# -- tests ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_target_ends_only_its_own_session(site: Site, kind: str) -> None:
    site.hostile.next_payload = HOSTILE[kind]
    served = site.hostile.served

    async def run() -> str:
        good = await _desktop(site, "vendor", "hmi-vnc")
        try:
            bad = await open_desktop(site.server.base, site.data_dir, "vendor", "hostile")
            try:
                async with asyncio.timeout(30):
                    await bad.ended.wait()
                reason = str(bad.end_reason)
            finally:
                await bad.close()
            # The other desktop goes on: typed keys still draw on the real target.
            marker = f"after-hostile-{len(kind)}"
            await _type_line(good, f"touch {marker}")
            await _wait_file(site.work / marker)
            assert not good.ended.is_set()
            return reason
        finally:
            await good.close()

    shown = asyncio.run(run())
    assert site.hostile.served == served + 1
    assert "malformed" in shown, shown
    session_id, _ = site.last_session("vendor", "hostile")
    assert _detail(site.ended(session_id), "reason") == "protocol_error"
    with site.server.client() as client:
        assert client.get("/readyz").json()["status"] == "ready"


def test_an_x11vnc_desktop_works(site: Site) -> None:
    async def run() -> None:
        viewer = await _desktop(site, "vendor", "hmi-x11vnc")
        try:
            assert viewer.fb is not None and (viewer.fb.width, viewer.fb.height) == (1024, 768)
            await _type_line(viewer, "touch via-x11vnc")
            await _wait_file(site.work / "via-x11vnc")
        finally:
            await viewer.close()

    asyncio.run(run())
    session_id, _ = site.last_session("vendor", "hmi-x11vnc")
    assert _detail(site.ended(session_id), "reason") == "client_closed"


def test_revoking_the_grant_ends_a_live_desktop(site: Site) -> None:
    grant_id = add_grant(site.data_dir, "ender", "hmi-vnc", "vnc")

    async def run() -> str:
        viewer = await _desktop_once_granted(site, "ender", "hmi-vnc")
        try:
            site.cli("grant", "revoke", grant_id)
            async with asyncio.timeout(30):
                await viewer.ended.wait()
            return str(viewer.end_reason)
        finally:
            await viewer.close()

    shown = asyncio.run(run())
    assert "revoked" in shown, shown
    session_id, _ = site.last_session("ender", "hmi-vnc")
    assert _detail(site.ended(session_id), "reason") == "revoked"


def test_a_grants_end_ends_a_live_desktop(site: Site) -> None:
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=8)).isoformat(timespec="seconds")
    add_grant(site.data_dir, "ender", "hmi-vnc", "vnc", "--until", until)

    async def run() -> str:
        viewer = await _desktop_once_granted(site, "ender", "hmi-vnc")
        try:
            async with asyncio.timeout(60):
                await viewer.ended.wait()
            return str(viewer.end_reason)
        finally:
            await viewer.close()

    shown = asyncio.run(run())
    assert "expired" in shown, shown
    session_id, _ = site.last_session("ender", "hmi-vnc")
    assert _detail(site.ended(session_id), "reason") == "expired"


def test_the_clipboard_reaches_the_target_only_with_clipboard_in(site: Site) -> None:
    async def run() -> None:
        # Without the grant: the cut text is dropped; pasting brings nothing that runs.
        viewer = await _desktop(site, "vendor", "hmi-vnc")
        try:
            await viewer.send(rfb.client_cut_text("touch clip-denied"))
            await asyncio.sleep(0.5)  # as long as the granted case below waits
            await _type_line(viewer, "")
            await _paste(viewer)
            await _type_line(viewer, "touch after-denied")
            await _wait_file(site.work / "after-denied")
        finally:
            await viewer.close()
        # With it: the same paste runs the command it holds.
        viewer = await _desktop(site, "clipper", "hmi-vnc")
        try:
            await viewer.send(rfb.client_cut_text("touch clip-granted"))
            await asyncio.sleep(0.5)  # the cut text is the target's selection before the paste
            await _type_line(viewer, "")
            await _paste(viewer)
            await _wait_file(site.work / "clip-granted")
        finally:
            await viewer.close()

    asyncio.run(run())
    assert not (site.work / "clip-denied").exists()
    _, recording_id = site.last_session("vendor", "hmi-vnc")
    session_id, _ = site.last_session("vendor", "hmi-vnc")
    site.ended(session_id)  # the recording is closed
    exported = site.data_dir.parent / f"{recording_id}.raw"
    site.cli("recordings", "export", recording_id, "--format", "raw", "--output", str(exported))
    assert b"clipboard to the desktop not granted" in exported.read_bytes()


def test_the_node_cap_refuses_one_desktop_more(site: Site, tmp_path: Path) -> None:
    data_dir = tmp_path / "capped"
    init_data_dir(data_dir)
    _vendors(data_dir, "vendor")
    add_asset(data_dir, "hmi-vnc", site.target.port, VNC_PASSWORD)
    add_grant(data_dir, "vendor", "hmi-vnc", "vnc")
    config = tmp_path / "conduit.toml"
    config.write_text("[desktop]\nmax_sessions = 1\n")

    async def run(base: str) -> int | None:
        first = await open_desktop(base, data_dir, "vendor", "hmi-vnc")
        try:
            await _first_update(first)
            second = await open_socket(base, data_dir, "vendor", "hmi-vnc")
            try:
                async with asyncio.timeout(30):
                    await second.recv()
            except ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd is not None else None
            finally:
                await second.close()
            assert not first.ended.is_set()
            return 0
        finally:
            await first.close()

    with serving(data_dir, env=clean_env(CONDUIT_CONFIG=str(config))) as (server, _):
        code = asyncio.run(run(server.base))
        # Read once, no waiting: the refusal is audited before the socket closes.
        exported = conduit("audit", "export", "--data-dir", str(data_dir))
    assert code == 1013
    events = [json.loads(line) for line in exported.stdout.splitlines()]
    actions = [e["action"] for e in events]
    assert "session.denied" in actions, actions
    denied = events[actions.index("session.denied")]
    assert re.search(r"limit of this node \(1\)", _detail(denied, "reason"))
    assert denied["actor"] == "vendor" and denied["target"] == "hmi-vnc"
    # The order in the chain, which no timing blurs: the denial comes before the socket's
    # ``portal.refused``, which is written just before the close.
    [refused] = [i for i, e in enumerate(events) if e["action"] == "portal.refused"
                 and _detail(e, "status") == "1013"]  # fmt: skip
    assert actions.index("session.denied") < refused, actions
