"""Audit log on SQLite and PostgreSQL: chaining, append-only triggers, tamper detection,
signed checkpoints, concurrent appends and JSON-lines export."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit import GENESIS_HASH, AuditError, AuditLog, canonical_bytes
from gateway.config import Overrides, load_settings
from gateway.db import migrate
from gateway.db.engine import make_engine, make_sessionmaker

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


class SteppingClock:
    """Each call is one millisecond after the previous one: ordered, reproducible times."""

    def __init__(self, start: dt.datetime = NOW) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        self.now += dt.timedelta(milliseconds=1)
        return self.now


def make_test_engine(url: str, tmp_path: Path) -> AsyncEngine:
    (tmp_path / "data").mkdir(parents=True, exist_ok=True)
    settings = load_settings(
        None, Overrides(data_dir=tmp_path / "data"), environ={"CONDUIT_DATABASE__URL": url}
    )
    return make_engine(settings)


@contextlib.asynccontextmanager
async def migrated_engine(url: str, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A migrated database for one test; other audit test modules build fixtures on it."""
    engine = make_test_engine(url, tmp_path)
    await migrate.upgrade(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def engine(database_url: str, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with migrated_engine(database_url, tmp_path) as engine:
        yield engine


@pytest.fixture
def audit(engine: AsyncEngine) -> AuditLog:
    return AuditLog(make_sessionmaker(engine), KEY, SteppingClock())


async def fill(audit: AuditLog, n: int) -> list[int]:
    return [
        await audit.record(
            actor=f"user{i}",
            action="session.start",
            result="success",
            target=f"plc-{i}",
            source="10.0.0.7",
            detail={"asset_id": i, "protocol": "ssh"},
        )
        for i in range(n)
    ]


async def sql(engine: AsyncEngine, *statements: str, **params: Any) -> None:
    async with engine.begin() as conn:
        for statement in statements:
            await conn.execute(text(statement), params)


async def drop_triggers(engine: AsyncEngine, table: str = "audit_events") -> None:
    """What an attacker with DDL rights does first."""
    if engine.dialect.name == "postgresql":
        await sql(engine, f"DROP TRIGGER {table}_append_only ON {table}")
    else:
        await sql(engine, f"DROP TRIGGER {table}_no_update", f"DROP TRIGGER {table}_no_delete")


async def test_record_then_verify_round_trip(audit: AuditLog) -> None:
    ids = await fill(audit, 5)
    assert ids == [1, 2, 3, 4, 5]
    events = [e async for e in audit.events()]
    assert events[0].prev_hash == GENESIS_HASH
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
    assert events[2].time == NOW + dt.timedelta(milliseconds=3)
    assert events[2].detail_object() == {"asset_id": 2, "protocol": "ssh"}
    assert events[2].source == "10.0.0.7" and events[2].target == "plc-2"
    seen: list[tuple[int, int]] = []
    result = await audit.verify(progress=lambda done, total: seen.append((done, total)))
    assert result.ok and result.checked == 5 and result.problems == []
    assert result.first_bad_id is None
    assert seen[-1] == (5, 5)


async def test_update_and_delete_are_refused_by_triggers(
    audit: AuditLog, engine: AsyncEngine
) -> None:
    await fill(audit, 2)
    await audit.checkpoint()
    for table in ("audit_events", "audit_checkpoints"):
        with pytest.raises((DBAPIError, IntegrityError), match="append-only"):
            await sql(engine, f"UPDATE {table} SET id = id + 10 WHERE id = 1")  # noqa: S608
        with pytest.raises((DBAPIError, IntegrityError), match="append-only"):
            await sql(engine, f"DELETE FROM {table} WHERE id = 1")  # noqa: S608
    if engine.dialect.name == "postgresql":
        with pytest.raises(DBAPIError, match="append-only"):
            await sql(engine, "TRUNCATE audit_events")
    assert (await audit.verify()).ok
    assert [e.id async for e in audit.events()] == [1, 2]


async def test_modified_row_is_named(audit: AuditLog, engine: AsyncEngine) -> None:
    await fill(audit, 6)
    await drop_triggers(engine)
    await sql(engine, "UPDATE audit_events SET target = 'plc-evil' WHERE id = 4")
    result = await audit.verify()
    assert not result.ok
    assert result.first_bad_id == 4
    assert result.problems == ["event 4: content does not match its hash (modified)"]


async def test_deleted_row_is_named_as_a_gap(audit: AuditLog, engine: AsyncEngine) -> None:
    await fill(audit, 6)
    await drop_triggers(engine)
    await sql(engine, "DELETE FROM audit_events WHERE id IN (3, 4)")
    result = await audit.verify()
    assert not result.ok and result.first_bad_id == 3
    assert result.problems == ["events 3-4 missing: gap after event 2 (deleted)"]
    assert result.checked == 4


async def test_rehashed_row_breaks_the_next_link(audit: AuditLog, engine: AsyncEngine) -> None:
    await fill(audit, 4)
    await drop_triggers(engine)
    [event] = [e async for e in audit.events() if e.id == 2]
    forged = _rehash(event.id, event.time, "mallory", event.prev_hash, event.detail)
    await sql(engine, "UPDATE audit_events SET actor='mallory', hash=:h WHERE id=2", h=forged)
    result = await audit.verify()
    assert not result.ok and result.first_bad_id == 3
    assert "event 3: prev_hash does not match the hash of event 2" in result.problems[0]


def _rehash(event_id: int, time: dt.datetime, actor: str, prev: str, detail: str) -> str:
    import hashlib

    return hashlib.sha256(
        canonical_bytes(
            id=event_id,
            time=time,
            actor=actor,
            source="10.0.0.7",
            action="session.start",
            target=f"plc-{event_id - 1}",
            result="success",
            detail=detail,
            prev_hash=prev,
        )
    ).hexdigest()


async def test_consistently_rewritten_chain_is_caught_by_checkpoint(
    audit: AuditLog, engine: AsyncEngine
) -> None:
    await fill(audit, 5)
    checkpoint = await audit.checkpoint()
    assert checkpoint.event_id == 5 and checkpoint.id == 1
    assert await audit.checkpoint() == checkpoint  # nothing new: the same checkpoint
    await drop_triggers(engine)
    # Rewrite event 2 and re-hash it and every later event: every link is consistent again.
    prev = ""
    async for event in audit.events():
        if event.id == 1:
            prev = event.hash
            continue
        actor = "mallory" if event.id == 2 else event.actor
        new_hash = _rehash(event.id, event.time, actor, prev, event.detail)
        await sql(
            engine,
            "UPDATE audit_events SET actor=:a, prev_hash=:p, hash=:h WHERE id=:i",
            a=actor,
            p=prev,
            h=new_hash,
            i=event.id,
        )
        prev = new_hash
    result = await audit.verify()
    assert not result.ok and result.first_bad_id == 5
    assert result.problems == [
        "checkpoint 1: event 5 hash differs from the signed checkpoint (chain rewritten)"
    ]
    # Moving the checkpoint to the forged hash needs the signing key.
    await drop_triggers(engine, "audit_checkpoints")
    await sql(engine, "UPDATE audit_checkpoints SET event_hash=:h WHERE id=1", h=prev)
    result = await audit.verify()
    assert not result.ok
    assert result.problems == [
        "checkpoint 1: signature invalid for event 5 (checkpoint forged or edited)"
    ]


async def test_truncated_tail_is_caught_by_checkpoint(audit: AuditLog, engine: AsyncEngine) -> None:
    await fill(audit, 4)
    await audit.checkpoint()
    await drop_triggers(engine)
    await sql(engine, "DELETE FROM audit_events WHERE id >= 3")
    result = await audit.verify()
    assert not result.ok and result.first_bad_id == 4
    assert "checkpoint 1: its event 4 is missing" in result.problems[0]


async def test_checkpoint_from_another_key_is_refused(audit: AuditLog, engine: AsyncEngine) -> None:
    with pytest.raises(AuditError):
        await audit.checkpoint()
    await fill(audit, 2)
    await audit.checkpoint()
    other = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    result = await audit.verify(public_key=other.public_key())
    assert not result.ok and "signed by unknown key" in result.problems[0]


@pytest.mark.parametrize("engines,logs_per_engine", [(1, 1), (1, 5), (2, 5)])
async def test_concurrent_appends_form_one_chain(
    database_url: str, tmp_path: Path, engine: AsyncEngine, engines: int, logs_per_engine: int
) -> None:
    # One AuditLog queues its own tasks in-process; several AuditLogs on one engine, or on
    # a second engine (a second gateway process: its own pool), meet only in the database.
    pools = [engine] + [make_test_engine(database_url, tmp_path) for _ in range(engines - 1)]
    try:
        clock = SteppingClock()
        logs = [
            AuditLog(make_sessionmaker(e), KEY, clock)
            for e in pools
            for _ in range(logs_per_engine)
        ]
        ids = await asyncio.gather(
            *(
                logs[i % len(logs)].record(
                    actor=f"task{i}", action="login.success", result="success"
                )
                for i in range(50)
            )
        )
        assert sorted(ids) == list(range(1, 51))
        events = [e async for e in logs[0].events()]
        assert [e.id for e in events] == list(range(1, 51))
        assert len({e.prev_hash for e in events}) == 50  # no two events share a parent
        assert sorted(e.actor for e in events) == sorted(f"task{i}" for i in range(50))
        # Times were read under the lock, so they follow the ids.
        assert [e.time for e in events] == sorted(e.time for e in events)
        result = await logs[-1].verify()
        assert result.ok and result.checked == 50, result.problems
    finally:
        for extra in pools[1:]:
            await extra.dispose()


@pytest.mark.parametrize(
    "key",
    ["password", "new_password", "secret", "clientSecret", "token", "api_token", "code",
     "totp_code", "key", "privateKey", "recovery-code", "otp"],
)  # fmt: skip
async def test_secret_like_detail_keys_are_refused(audit: AuditLog, key: str) -> None:
    with pytest.raises(ValueError, match="looks like a secret"):
        await audit.record(actor="alice", action="login.failure", result="failure",
                           detail={key: "x"})  # fmt: skip
    with pytest.raises(ValueError, match="looks like a secret"):
        await audit.record(actor="alice", action="login.failure", result="failure",
                           detail={"nested": [{key: "x"}]})  # fmt: skip
    assert [e async for e in audit.events()] == []


async def test_identifier_keys_and_hostile_fields(audit: AuditLog, engine: AsyncEngine) -> None:
    detail = {"token_id": 7, "host_key_fingerprint": "SHA256:abc", "keyboard_layout": "de"}
    await audit.record(
        actor="bob\r\nFAKE 1 login.success", action="login.failure", result="failure",
        target="x" * 600, detail=detail,
    )  # fmt: skip
    [event] = [e async for e in audit.events()]
    assert event.actor == "bob\\x0d\\x0aFAKE 1 login.success"
    assert len(event.target) == 500 and event.target.endswith("\u2026")
    assert event.detail_object() == detail
    for bad in ({"action": "Login Failure"}, {"result": "ok"}, {"actor": ""}):
        fields: dict[str, Any] = {"actor": "a", "action": "login.failure", "result": "failure"}
        fields.update(bad)
        with pytest.raises(ValueError):
            await audit.record(**fields)
    with pytest.raises(ValueError, match="plain JSON"):
        await audit.record(actor="a", action="x.y", result="error", detail={"when": NOW})
    naive = AuditLog(make_sessionmaker(engine), KEY, lambda: NOW.replace(tzinfo=None))
    with pytest.raises(ValueError, match="naive"):
        await naive.record(actor="a", action="x.y", result="error")
    assert (await audit.verify()).ok


async def test_jsonl_export_parses_and_filters(audit: AuditLog, tmp_path: Path) -> None:
    await fill(audit, 4)
    buffer = io.StringIO()
    assert await audit.export_jsonl(buffer) == 4
    rows = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert [r["id"] for r in rows] == [1, 2, 3, 4]
    assert rows[0] == {
        "id": 1,
        "time": "2026-11-27T12:00:00.001000Z",
        "actor": "user0",
        "source": "10.0.0.7",
        "action": "session.start",
        "target": "plc-0",
        "result": "success",
        "detail": {"asset_id": 0, "protocol": "ssh"},
        "prev_hash": GENESIS_HASH,
        "hash": rows[1]["prev_hash"],
    }
    path = tmp_path / "audit.jsonl"
    since, until = NOW + dt.timedelta(milliseconds=2), NOW + dt.timedelta(milliseconds=4)
    assert await audit.export_jsonl(path, since=since, until=until) == 2
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [2, 3]
