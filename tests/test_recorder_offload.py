"""The recording indexer's worker process (gateway.recorder.offload): it runs below the
gateway's priority, so indexing finished sessions does not take CPU from live relays."""

from __future__ import annotations

import os

from gateway.recorder.offload import INDEX_NICENESS, new_pool


def _niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)


def test_the_indexer_runs_below_the_gateways_priority() -> None:
    pool = new_pool()
    try:
        child = pool.submit(_niceness).result(timeout=60)
    finally:
        pool.shutdown()
    assert child == min(19, _niceness() + INDEX_NICENESS)
