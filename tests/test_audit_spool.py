"""The audit spool (gateway.audit.spool): events kept on local disk while the database is
unreachable, then drained into the chain in order, once, with their own times.

On SQLite the outage is declared (``DatabaseHealth.failed``) since a local file cannot be cut
off; on PostgreSQL the connection path is really cut (tests/db_path.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import stat
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit import AuditLog
from gateway.audit.spool import AuditSpool, SpooledEvent, SpoolFull
from gateway.db.engine import make_sessionmaker
from gateway.db.health import DatabaseHealth
from tests.db_path import DatabasePath
from tests.test_audit import KEY, SteppingClock, migrated_engine


class Site:
    def __init__(self, engine: AsyncEngine, directory: Path, max_bytes: int = 1 << 20) -> None:
        self.health = DatabaseHealth(engine, grace_seconds=60)
        self.spool = AuditSpool(directory, max_bytes)
        self.clock = SteppingClock()
        self.audit = AuditLog(
            make_sessionmaker(engine), KEY, self.clock, spool=self.spool, health=self.health
        )

    def outage(self) -> None:
        assert self.health.failed(OSError("connection refused"))

    async def back(self) -> None:
        assert await self.health.probe()

    async def actions(self) -> list[str]:
        return [e.action async for e in self.audit.events()]

    async def record(self, action: str) -> int:
        return await self.audit.record(actor="alice", action=action, result="success")


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'conduit.db'}"
    async with migrated_engine(url, tmp_path) as engine:
        yield Site(engine, tmp_path / "data")


async def test_events_of_an_outage_are_spooled_then_drained_in_order(site: Site) -> None:
    assert await site.record("a.first") == 1
    site.outage()
    assert await site.record("b.spooled") == 0
    assert await site.record("c.spooled") == 0
    # Each is on disk, private, when record() returns (it was fsync'd before).
    assert stat.S_IMODE(site.spool.path.stat().st_mode) == 0o600
    lines = site.spool.path.read_text().splitlines()
    assert [json.loads(line)["action"] for line in lines] == ["b.spooled", "c.spooled"]
    await site.back()
    # Back, but the spool is not drained yet: later events queue behind it, keeping order.
    assert await site.record("d.after") == 0
    assert await site.audit.drain_spool() == 3
    assert not site.spool.path.exists()
    assert await site.record("e.direct") == 5
    assert await site.actions() == ["a.first", "b.spooled", "c.spooled", "d.after", "e.direct"]
    events = [e async for e in site.audit.events()]
    assert [e.time for e in events] == sorted(e.time for e in events)  # their own times
    assert all("spool_id" in e.detail_object() for e in events[1:4])
    assert (await site.audit.verify()).ok


async def test_a_drain_cut_short_by_a_crash_neither_doubles_nor_loses(site: Site) -> None:
    site.outage()
    for action in ("a.one", "b.two", "c.three"):
        await site.record(action)
    copy = site.spool.path.read_bytes()
    await site.back()
    assert await site.audit.drain_spool() == 3
    # As if the process died after inserting but before removing the spool, then spooled one
    # more event in the next outage: the next drain adds only that one.
    site.spool.path.write_bytes(copy)
    site.outage()
    await site.record("d.four")
    await site.back()
    assert await site.audit.drain_spool() == 1
    assert await site.actions() == ["a.one", "b.two", "c.three", "d.four"]
    assert (await site.audit.verify()).ok


async def test_a_torn_last_line_does_not_block_the_drain(site: Site) -> None:
    site.outage()
    await site.record("a.whole")
    with site.spool.path.open("ab") as spool:
        spool.write(b'{"v": 1, "spool_id": "ab')  # a crash in the middle of a write
    await site.back()
    assert await site.audit.drain_spool() == 1
    assert await site.actions() == ["a.whole", "audit.spool.damaged"]
    damaged = [e async for e in site.audit.events()][-1]
    assert damaged.detail_object() == {"count": 1, "lines": [2]}
    assert (await site.audit.verify()).ok


async def test_an_append_after_a_torn_line_cuts_it_first(site: Site) -> None:
    site.outage()
    await site.record("a.whole")
    with site.spool.path.open("ab") as spool:
        spool.write(b'{"v": 1, "act')
    await site.record("b.next")  # must not be glued onto the torn piece
    contents = site.spool.read()
    assert [e.action for e in contents.events] == ["a.whole", "b.next"]
    assert contents.damaged == []


async def test_a_corrupt_line_inside_is_reported_and_the_rest_drained(site: Site) -> None:
    site.outage()
    await site.record("a.one")
    with site.spool.path.open("ab") as spool:
        spool.write(b"not json\n")
    await site.record("c.three")
    await site.back()
    assert await site.audit.drain_spool() == 2
    assert await site.actions() == ["a.one", "c.three", "audit.spool.damaged"]


async def test_a_full_spool_refuses_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'conduit.db'}"
    async with migrated_engine(url, tmp_path) as engine:
        site = Site(engine, tmp_path / "data", max_bytes=600)
        site.outage()
        await site.record("a.fits")
        with caplog.at_level(logging.ERROR), pytest.raises(SpoolFull):
            for _ in range(10):
                await site.record("b.overflow")
        assert "audit spool" in caplog.text and "full" in caplog.text
        assert all(e.action in ("a.fits", "b.overflow") for e in site.spool.read().events)


async def test_a_real_cut_of_the_postgresql_path_spools_and_the_return_drains(
    tmp_path: Path, pg_database: str
) -> None:
    path = DatabasePath()
    try:
        async with migrated_engine(path.url(pg_database), tmp_path) as engine:
            site = Site(engine, tmp_path / "data")
            assert await site.record("a.before") == 1
            path.cut()
            # The pooled connection is reset under the INSERT: the driver's own error, seen
            # as an outage, and the event goes to the spool instead of being lost.
            assert await site.record("b.during") == 0
            assert not site.health.up
            assert not await site.health.probe()
            path.restore()
            await site.back()
            copy = site.spool.path.read_bytes()
            assert await site.audit.drain_spool() == 1
            site.spool.path.write_bytes(copy)  # as if a crash came before the spool's removal
            assert await site.audit.drain_spool() == 0
            assert await site.record("c.after") == 3
            assert await site.actions() == ["a.before", "b.during", "c.after"]
            assert (await site.audit.verify()).ok
    finally:
        path.close()


async def test_the_spool_lock_serialises_appends_from_threads(site: Site) -> None:
    site.outage()
    await asyncio.gather(*(site.record(f"x.n{i}") for i in range(20)))
    assert len(site.spool.read().events) == 20


async def test_a_long_spool_drains_in_batches_and_a_crash_between_them_is_safe(
    site: Site,
) -> None:
    site.outage()
    for i in range(1100):  # three batches of DRAIN_BATCH (500)
        await site.record(f"x.n{i}")
    copy = site.spool.path.read_bytes()
    await site.back()
    assert await site.audit.drain_spool() == 1100
    site.spool.path.write_bytes(copy)
    site.outage()
    await site.record("y.last")
    await site.back()
    assert await site.audit.drain_spool() == 1
    assert await site.actions() == [*(f"x.n{i}" for i in range(1100)), "y.last"]
    assert (await site.audit.verify()).ok


async def test_a_silent_postgresql_path_spools_within_the_deadline_and_lands_once(
    tmp_path: Path, pg_database: str
) -> None:
    # A black hole (packets dropped, nothing reset): the driver gets neither an answer nor an
    # error. The append gives up at its deadline, the event is spooled, and the next one
    # (a local kill's, say) is not queued behind a wait of minutes.
    path = DatabasePath()
    try:
        async with migrated_engine(path.url(pg_database), tmp_path) as engine:
            site = Site(engine, tmp_path / "data")
            site.audit = AuditLog(
                make_sessionmaker(engine), KEY, site.clock, spool=site.spool,
                health=site.health, append_timeout_seconds=1.0,
            )  # fmt: skip
            assert await site.record("a.before") == 1
            path.freeze()
            async with asyncio.timeout(60):  # a hang guard, not a measurement
                assert await site.record("b.frozen") == 0
                assert await site.record("c.next") == 0
            assert not site.health.up
            path.thaw()
            path.cut()  # what the frozen connections held is dropped with them
            path.restore()
            await site.back()
            assert await site.audit.drain_spool() == 2
            assert await site.actions() == ["a.before", "b.frozen", "c.next"]
            assert (await site.audit.verify()).ok
    finally:
        path.close()


async def test_an_event_committed_whose_reply_was_lost_is_not_drained_twice(site: Site) -> None:
    # The database committed, but its answer never came: record() spooled the same event
    # (same spool_id), marked as tried at the attempt's start. The drain finds it in the chain.
    tried = site.clock()
    assert await site.record("a.committed") == 1  # the attempt, as the database saw it
    [committed] = [e async for e in site.audit.events()]
    spool_id = str(committed.detail_object()["spool_id"])
    site.outage()
    site.spool.append(SpooledEvent(
        spool_id=spool_id, time=site.clock(), actor="alice", source="", action="a.committed",
        target="", result="success", detail=committed.detail, tried=tried,
    ))  # fmt: skip
    await site.record("b.spooled")
    await site.back()
    assert await site.audit.drain_spool() == 1
    assert await site.actions() == ["a.committed", "b.spooled"]
    assert (await site.audit.verify()).ok


async def test_spool_id_is_counted_in_the_size_limit_on_both_paths(site: Site) -> None:
    # A detail just under the limit without the spool id is refused up front, database up
    # or down: never accepted by the database and refused only while spooling.
    big = {"blob": "x" * (16 * 1024 - 20)}
    with pytest.raises(ValueError, match="larger than"):
        await site.audit.record(actor="alice", action="a.big", result="success", detail=big)
    site.outage()
    with pytest.raises(ValueError, match="larger than"):
        await site.audit.record(actor="alice", action="a.big", result="success", detail=big)


async def test_a_drain_cancelled_while_waiting_for_the_spool_lock_does_not_keep_it(
    site: Site,
) -> None:
    site.outage()
    await site.record("a.spooled")
    await site.back()
    taken = threading.Event()
    release = threading.Event()

    def other_worker() -> None:  # another process of the node, draining or appending
        with site.spool.locked():
            taken.set()
            release.wait()

    holder = threading.Thread(target=other_worker)
    holder.start()
    await asyncio.to_thread(taken.wait)
    drain = asyncio.create_task(site.audit.drain_spool())
    await asyncio.sleep(0.2)  # the drain's thread is now waiting in flock
    drain.cancel()
    with pytest.raises(asyncio.CancelledError):
        await drain
    release.set()
    await asyncio.to_thread(holder.join)
    # The cancelled drain's thread took the lock after all: it must have let go of it.
    async with asyncio.timeout(30):  # a hang guard, not a measurement
        assert await site.audit.drain_spool() == 1
    assert await site.actions() == ["a.spooled"]


async def test_the_drain_reads_the_spool_in_batches(site: Site) -> None:
    site.outage()
    for i in range(3):
        await site.record(f"x.n{i}")
    with site.spool.path.open("ab") as spool:
        spool.write(b"y" * (200 * 1024) + b"\n")  # longer than any line the spool writes
    await site.record("z.last")
    batches = list(site.spool.batches(2))
    assert [len(b.events) for b in batches] == [2, 2]
    assert [b.damaged for b in batches] == [[], [4]]
    await site.back()
    assert await site.audit.drain_spool() == 4
    assert await site.actions() == ["x.n0", "x.n1", "x.n2", "z.last", "audit.spool.damaged"]
