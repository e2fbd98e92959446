"""The authorization CLI as an operator scripts it: real `conduit` processes."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
from pathlib import Path

from gateway.config import Overrides, load_settings
from gateway.db.engine import make_engine, make_sessionmaker
from gateway.identity.accounts import create_user
from tests.support import CONDUIT, clean_env, conduit, init_data_dir


def add_user(data_dir: Path, name: str, role: str, org: str = "") -> None:
    async def run() -> None:
        engine = make_engine(load_settings(None, Overrides(data_dir=data_dir), environ={}))
        try:
            async with make_sessionmaker(engine)() as db, db.begin():
                await create_user(
                    db,
                    username=name,
                    roles=[role],
                    organisation=org,
                    now=dt.datetime.now(dt.UTC),
                    master_key=bytes(32),
                    status="active",
                )
        finally:
            await engine.dispose()

    asyncio.run(run())


def ok(*args: str) -> str:
    result = conduit(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_asset_zone_grant_check_revoke(data_dir: Path) -> None:
    init_data_dir(data_dir)
    add_user(data_dir, "alice", "vendor", "acme")
    d = ["--data-dir", str(data_dir)]
    ok("zone", "add", "plant-a", *d)
    ok("zone", "add", "line-1", "--parent", "plant-a", *d)
    ok(
        "asset",
        "add",
        "plc-1",
        "--host",
        "127.0.0.1",
        "--port",
        "22",
        "--protocol",
        "ssh",
        "--zone",
        "line-1",
        *d,
    )
    ok("asset", "add", "plc-10", "--host", "127.0.0.1", "--port", "22", "--protocol", "ssh", *d)
    assert "plc-1 " in ok("asset", "list", *d)
    grant_id = ok(
        "grant",
        "add",
        "--org",
        "acme",
        "--zone",
        "plant-a",
        "--action",
        "ssh",
        "--schedule",
        "Mon-Fri 07:00-17:00 Europe/Berlin",
        *d,
    ).strip()
    assert grant_id.startswith("g-")
    assert grant_id in ok("grant", "list", *d)

    inside = conduit("access", "check", "alice", "plc-1", "ssh", "--at", "2026-03-02T08:00:00Z", *d)
    assert inside.returncode == 0, inside.stderr
    assert f"allowed by grant {grant_id}" in inside.stdout
    assert "valid_until: 2026-03-02T16:00:00Z" in inside.stdout
    outside = conduit(
        "access", "check", "alice", "plc-1", "ssh", "--at", "2026-03-02T16:00:00Z", *d
    )
    assert outside.returncode == 1 and "denied" in outside.stdout
    assert "valid_until: 2026-03-03T06:00:00Z" in outside.stdout
    other = conduit("access", "check", "alice", "plc-10", "ssh", "--at", "2026-03-02T08:00:00Z", *d)
    assert other.returncode == 1

    ok("grant", "revoke", grant_id, *d)
    after = conduit("access", "check", "alice", "plc-1", "ssh", "--at", "2026-03-02T08:00:00Z", *d)
    assert after.returncode == 1
    assert "revoked" in ok("grant", "list", "--all", *d)
    # every change is in the verified audit log
    assert ok("audit", "verify", *d)
    exported = ok("audit", "export", *d)
    assert '"grant.revoked"' in exported and '"asset.added"' in exported


def test_bad_input_is_one_clear_line(data_dir: Path) -> None:
    init_data_dir(data_dir)
    d = ["--data-dir", str(data_dir)]
    ok("zone", "add", "z", *d)
    for args, expected in (
        (
            [
                "grant",
                "add",
                "--role",
                "vendor",
                "--zone",
                "z",
                "--action",
                "ssh",
                "--schedule",
                "Mon-Fri 25:00-17:00 Europe/Berlin",
            ],
            "25:00",
        ),
        (["grant", "add", "--role", "vendor", "--zone", "z", "--action", "telnet"], "telnet"),
        (["grant", "add", "--role", "vendor", "--zone", "nope", "--action", "ssh"], "nope"),
        (["asset", "add", "PLC 1", "--host", "h", "--port", "22", "--protocol", "ssh"], "PLC 1"),
        (
            [
                "grant",
                "add",
                "--role",
                "vendor",
                "--zone",
                "z",
                "--action",
                "ssh",
                "--from",
                "2026-03-02 08:00",
            ],
            "offset",
        ),
        (["grant", "revoke", "g-missing"], "g-missing"),
        # Instants and durations outside the documented range: one line, nothing stored.
        (
            [
                "grant",
                "add",
                "--role",
                "vendor",
                "--zone",
                "z",
                "--action",
                "ssh",
                "--until",
                "9999-12-31T23:59:59-14:00",
            ],
            "2200-01-01",
        ),
        (
            [
                "grant",
                "add",
                "--role",
                "vendor",
                "--zone",
                "z",
                "--action",
                "ssh",
                "--from",
                "0001-01-01T00:00:00+14:00",
            ],
            "2000-01-01",
        ),
        (["access", "check", "a", "b", "ssh", "--at", "0001-01-01T00:00:00+01:00"], "2000-01-01"),
        (["access", "check", "a", "b", "ssh", "--at", "9999-12-31T23:59:59Z"], "2200-01-01"),
        (
            [
                "asset",
                "add",
                "p",
                "--host",
                "h",
                "--port",
                "22",
                "--protocol",
                "ssh",
                "--max-request-hours",
                "1000000000000",
            ],
            "max request hours",
        ),
        (["zone", "add", "y", "--max-request-hours", "-1"], "max request hours"),
    ):
        result = conduit(*args, *d)
        assert result.returncode != 0, args
        assert "Traceback" not in result.stderr
        assert expected in result.stderr, (args, result.stderr)
    assert ok("grant", "list", *d).count("\n") == 1  # the heading only
    assert "p " not in ok("asset", "list", *d)


LISTINGS = [
    ["recordings", "list"],
    ["sessions", "list"],
    ["grant", "list"],
    ["asset", "list"],
    ["request", "list"],
    ["user", "list"],
]


def test_listings_into_a_closed_pipe_end_quietly(data_dir: Path) -> None:
    """`conduit recordings list | head`: the reader left; no error line, SIGPIPE's status."""
    init_data_dir(data_dir)
    for args in LISTINGS:
        read_end, write_end = os.pipe()
        os.close(read_end)  # nobody will ever read: the first write fails with EPIPE
        try:
            done = subprocess.run(
                [*CONDUIT, *args, "--data-dir", str(data_dir)],
                stdout=write_end,
                stderr=subprocess.PIPE,
                env=clean_env(),
                timeout=60,
                check=False,
            )
        finally:
            os.close(write_end)
        assert done.returncode == 128 + signal.SIGPIPE, (args, done.stderr)
        err = done.stderr.decode()
        assert "Broken pipe" not in err and "Traceback" not in err, (args, err)
        assert "cannot use the database" not in err, (args, err)
