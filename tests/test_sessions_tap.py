"""The output tap: the ring keeps the recent output, a slow watcher is dropped, not waited for."""

from __future__ import annotations

from gateway.sessions.tap import FELL_BEHIND, OutputTap


def test_the_ring_keeps_the_latest_output_and_starts_a_trimmed_snapshot_at_a_line() -> None:
    tap = OutputTap(ring_bytes=1000)
    for n in range(100):
        tap.feed(f"line {n:03d} ".encode() + b"x" * 40 + b"\r\n")
    snap = tap.snapshot()
    assert len(snap) >= 1000 - 60  # at least the ring, less the partial first line
    assert snap.endswith(b"line 099 " + b"x" * 40 + b"\r\n")
    assert snap.startswith(b"line ")  # cut at a line end, never inside one
    assert b"line 000" not in snap


def test_a_short_history_is_kept_whole() -> None:
    tap = OutputTap(ring_bytes=1000)
    tap.feed(b"\x1b[31mred")
    tap.feed(b"\x1b[0m\r\n")
    assert tap.snapshot() == b"\x1b[31mred\x1b[0m\r\n"


def test_a_watcher_gets_the_snapshot_then_what_follows_then_the_end() -> None:
    tap = OutputTap(100, 30)
    tap.feed(b"before")
    watcher, snap = tap.subscribe()
    assert (snap, tap.cols, tap.rows) == (b"before", 100, 30)
    tap.feed(b"after")
    tap.resize(120, 40)
    assert watcher.wake.is_set()
    assert watcher.take() == [b"after", (120, 40)]
    assert not watcher.wake.is_set()
    tap.end("killed: wrong asset, call me")
    assert watcher.ended == "killed: wrong asset, call me" and tap.watchers == 0
    late, _ = tap.subscribe()  # a watch opened after the end sees the end at once
    assert late.ended == "killed: wrong asset, call me" and late.wake.is_set()


def test_a_watcher_that_falls_behind_is_dropped_and_the_others_keep_going() -> None:
    tap = OutputTap(watcher_queue_bytes=10_000)
    slow, _ = tap.subscribe()
    fast, _ = tap.subscribe()
    for _ in range(9):
        tap.feed(b"y" * 1000)
        fast.take()
    assert not slow.dropped
    tap.feed(b"z" * 1001)  # the slow one never read: 10,001 bytes would be queued
    assert slow.dropped == FELL_BEHIND and slow.wake.is_set()
    assert not fast.dropped and fast.take() == [b"z" * 1001]
    assert tap.watchers == 1
    tap.feed(b"more")  # nothing more reaches the dropped watcher
    assert slow.pending_bytes == 9000
    fast.close()
    assert tap.watchers == 0
