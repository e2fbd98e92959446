"""``conduit audit verify|export`` handlers, driven through the parser they ship with."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import socket
import threading
from pathlib import Path

import pytest

from gateway.audit import AuditLog
from gateway.cli.audit import ProgressLines, add_audit_commands
from gateway.cli.common import common_parser as _common
from gateway.config import Overrides, load_settings
from gateway.db.engine import make_sessionmaker
from gateway.keys import load_keyring
from tests.support import clean_env, conduit
from tests.test_audit import SteppingClock, drop_triggers, migrated_engine, sql
from tests.test_audit_syslog import parse_rfc5424


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="conduit")
    add_audit_commands(parser.add_subparsers(dest="command", required=True), _common())
    args = parser.parse_args(list(argv))
    code: int = args.handler(args)
    return code


@pytest.fixture
def site(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A data directory with keys from `conduit init` and three audit events."""
    data = tmp_path / "data"
    assert conduit("init", "--data-dir", str(data), env=clean_env()).returncode == 0
    for name in [k for k in os.environ if k.startswith("CONDUIT_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CONDUIT_DATABASE__URL", database_url)
    settings = load_settings(None, Overrides(data_dir=data))
    key = load_keyring(settings).signing_key

    async def fill() -> None:
        async with migrated_engine(database_url, tmp_path) as engine:
            log = AuditLog(make_sessionmaker(engine), key, SteppingClock())
            for i in range(3):
                await log.record(actor="alice", action="session.start", result="success",
                                 target=f"plc-{i}")  # fmt: skip
            await log.checkpoint()

    asyncio.run(fill())
    return data, database_url


def test_verify_ok_then_tampered(
    site: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, url = site
    assert run("audit", "verify", "--data-dir", str(data)) == 0
    assert "audit log intact: 3 events, 1 signed checkpoint(s) verified" in capsys.readouterr().out

    async def tamper() -> None:
        async with migrated_engine(url, tmp_path) as engine:
            await drop_triggers(engine)
            await sql(engine, "UPDATE audit_events SET target='plc-x' WHERE id=2")

    asyncio.run(tamper())
    assert run("audit", "verify", "--data-dir", str(data)) == 1
    out = capsys.readouterr().out
    assert "audit log TAMPERED: first bad event 2" in out
    assert "event 2: content does not match its hash (modified)" in out


def test_export_jsonl_and_syslog_file(
    site: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = site
    assert run("audit", "export", "--data-dir", str(data)) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["target"] for r in rows] == ["plc-0", "plc-1", "plc-2"]
    assert "exported 3 event(s) as jsonl" in captured.err
    out = tmp_path / "audit.log"
    assert run("audit", "export", "--data-dir", str(data), "--format", "syslog",
               "--output", str(out)) == 0  # fmt: skip
    messages = [parse_rfc5424(line.encode()) for line in out.read_text().splitlines()]
    assert [m.params["id"] for m in messages] == ["1", "2", "3"]


def test_export_to_tcp_syslog_target(site: tuple[Path, str]) -> None:
    data, _ = site
    with socket.create_server(("127.0.0.1", 0)) as server:
        received = bytearray()

        def accept() -> None:
            conn, _ = server.accept()
            with conn:
                while chunk := conn.recv(65536):
                    received.extend(chunk)

        thread = threading.Thread(target=accept)
        thread.start()
        port = server.getsockname()[1]
        code = run("audit", "export", "--data-dir", str(data),
                   "--syslog-target", f"tcp://127.0.0.1:{port}")  # fmt: skip
        thread.join(timeout=10)
    assert code == 0
    frames, rest = [], bytes(received)
    while rest:
        length, _, rest = rest.partition(b" ")
        frames.append(parse_rfc5424(rest[: int(length)]))
        rest = rest[int(length) :]
    assert [m.params["target"] for m in frames] == ["plc-0", "plc-1", "plc-2"]


def test_export_refuses_bad_target_and_unreachable_collector(site: tuple[Path, str]) -> None:
    from gateway.errors import ConduitError

    data, _ = site
    with pytest.raises(ConduitError, match="scheme must be udp, tcp or tls"):
        run("audit", "export", "--data-dir", str(data), "--syslog-target", "http://x:1")
    with pytest.raises(ConduitError, match="cannot send to syslog tcp://127.0.0.1:1"):
        run("audit", "export", "--data-dir", str(data), "--syslog-target", "tcp://127.0.0.1:1")


def test_progress_lines_only_for_long_chains(capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    short = ProgressLines(sys.stderr, min_events=100)
    for i in range(1, 51):
        short(i, 50)
    assert capsys.readouterr().err == ""
    long = ProgressLines(sys.stderr, min_events=100)
    for i in range(1, 1001):
        long(i, 1000)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "verified 1/1000 events" and lines[-1] == "verified 1000/1000 events"
    assert len(lines) == 11


@pytest.mark.parametrize(
    "value,message",
    [
        ("yesterday", "is not an ISO 8601 time"),
        ("0001-01-01T00:00:00+14:00", "must be from 2000-01-01"),
        ("9999-12-31T23:59:59+00:00", "must be from 2000-01-01"),
    ],
)
def test_export_time_filters_are_bounded(value: str, message: str) -> None:
    from gateway.cli.audit import _parse_time
    from gateway.errors import ConduitError

    with pytest.raises(ConduitError, match=message):
        _parse_time(value, "--since")
    assert _parse_time("2026-03-02T08:00:00+01:00", "--since") == dt.datetime(
        2026, 3, 2, 7, 0, tzinfo=dt.UTC
    )
