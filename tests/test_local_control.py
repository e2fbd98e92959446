"""``conduit sessions kill --local``'s socket (gateway.sessions.local_control): what it accepts,
and that it answers with no database behind it."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import pytest

from gateway.config import Overrides, load_settings
from gateway.errors import ConduitError
from gateway.keys import load_keyring
from gateway.services import Services
from gateway.sessions.broker import Broker
from gateway.sessions.local_control import LocalControl, parse_request, request_kill, socket_path
from tests.support import init_data_dir

SID = "0123456789abcdef01234567"


@pytest.mark.parametrize(
    "body,ok",
    [
        ({"kill": SID, "note": ""}, True),
        ({"kill": SID, "note": "wrong asset, call me"}, True),
        ({"kill": SID.upper(), "note": ""}, False),
        ({"kill": "-" + SID[1:], "note": ""}, False),
        ({"kill": SID, "note": "x" * 10_000}, False),
        ({"kill": SID, "note": "line\nbreak"}, False),
        ({"kill": SID, "note": "", "actor": "root"}, False),  # the actor is the peer's uid
        ({"kill": SID}, False),
        ([SID], False),
    ],
)
def test_requests_are_bounded(body: object, ok: bool) -> None:
    raw = json.dumps(body).encode()
    if ok:
        assert parse_request(raw) == (body["kill"], body["note"])  # type: ignore[index]
    else:
        with pytest.raises(ValueError):
            parse_request(raw)


def test_with_no_serving_process_the_cli_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConduitError, match="no serving process"):
        request_kill(tmp_path, SID, "")


def test_the_socket_is_private_and_answers_for_unknown_sessions(tmp_path: Path) -> None:
    data = tmp_path / "data"
    init_data_dir(data)
    settings = load_settings(None, Overrides(data_dir=data), environ={})

    async def run() -> None:
        services = Services.build(settings, load_keyring(settings))
        control = LocalControl(services, Broker(services))
        task = asyncio.create_task(control.serve())
        path = socket_path(data, services.node, 0)
        try:
            while not path.exists():  # noqa: ASYNC110 - the server has no ready signal
                await asyncio.sleep(0.02)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert await asyncio.to_thread(request_kill, data, SID, "") is False
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await services.close()
        assert not path.exists()

    asyncio.run(run())


def test_a_refused_request_is_audited(tmp_path: Path) -> None:
    data = tmp_path / "data"
    init_data_dir(data)
    settings = load_settings(None, Overrides(data_dir=data), environ={})

    async def run() -> list[object]:
        services = Services.build(settings, load_keyring(settings))
        control = LocalControl(services, Broker(services))
        task = asyncio.create_task(control.serve())
        path = socket_path(data, services.node, 0)
        try:
            while not path.exists():  # noqa: ASYNC110 - the server has no ready signal
                await asyncio.sleep(0.02)
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(json.dumps({"kill": "not-a-session", "note": ""}).encode() + b"\n")
            await writer.drain()
            answer = json.loads(await reader.readline())
            writer.close()
            assert "error" in answer
            for _ in range(200):  # the audit is a task of the process; bounded wait for it
                found = [e async for e in services.audit.events() if e.action == "local.refused"]
                if found:
                    return [json.loads(e.detail) for e in found]
                await asyncio.sleep(0.05)
            return []
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await services.close()

    details = asyncio.run(run())
    assert len(details) == 1
    assert details[0]["why"] == "kill: not a session id"  # type: ignore[index]
