"""Shutdown ends every live session with reason ``shutdown`` before the process exits."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import re
import socket
from pathlib import Path

from gateway.cli.serve import serve
from gateway.config import Overrides, load_settings
from gateway.services import Services
from gateway.sessions.live import LiveRegistry, LiveSession
from tests.support import init_data_dir


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _session(registry: LiveRegistry, reasons: list[str], *, hang: bool = False) -> LiveSession:
    async def kill(reason: str) -> None:
        reasons.append(reason)
        if hang:
            await asyncio.sleep(3600)

    return LiveSession(
        session_id=registry.new_id(),
        node=registry.node,
        username="vendor",
        asset="plc-eng-01",
        protocol="ssh",
        started_at=dt.datetime.now(dt.UTC),
        valid_until=None,
        kill=kill,
    )


async def test_stop_ends_live_sessions_with_reason_shutdown(data_dir: Path) -> None:
    init_data_dir(data_dir)
    settings = load_settings(
        None,
        Overrides(
            data_dir=data_dir,
            portal_listen=f"127.0.0.1:{_port()}",
            ssh_listen=f"127.0.0.1:{_port()}",
        ),
        environ={},
    )
    reasons: list[str] = []
    stop = asyncio.Event()
    registered: list[Services] = []

    def on_ready(services: Services) -> None:
        for _ in range(3):
            services.live.register(_session(services.live, reasons))
        registered.append(services)
        stop.set()

    code = await serve(settings, out=io.StringIO(), on_ready=on_ready, stop=stop)
    assert code == 0
    assert reasons == ["shutdown"] * 3
    assert len(registered[0].live) == 0


async def test_a_session_that_will_not_die_does_not_hold_shutdown(data_dir: Path) -> None:
    init_data_dir(data_dir)
    settings = load_settings(
        None,
        Overrides(
            data_dir=data_dir,
            portal_listen=f"127.0.0.1:{_port()}",
            ssh_listen=f"127.0.0.1:{_port()}",
        ),
        environ={"CONDUIT_SERVER__SHUTDOWN_GRACE_SECONDS": "1"},
    )
    reasons: list[str] = []
    stop = asyncio.Event()

    def on_ready(services: Services) -> None:
        services.live.register(_session(services.live, reasons, hang=True))
        services.live.register(_session(services.live, reasons))
        stop.set()

    # The grace period bounds the wait; without it this would hang for an hour.
    code = await asyncio.wait_for(
        serve(settings, out=io.StringIO(), on_ready=on_ready, stop=stop), 30
    )
    assert code == 0
    assert reasons == ["shutdown", "shutdown"]


def test_session_ids_are_never_taken_for_options() -> None:
    """`conduit sessions kill ID` must accept every id: none may start with "-" (urlsafe
    base64 ids did, 1 in 64), and each keeps 96 random bits."""
    registry = LiveRegistry("node-a")
    ids = {registry.new_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(re.fullmatch(r"[0-9a-f]{24}", i) for i in ids)
