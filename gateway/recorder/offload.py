"""Reading a large recording's text in a child process, for search indexing.

Interpreting a terminal recording (decrypt, verify, run the screen emulator) is pure Python
and takes seconds per tens of MiB of output; in a thread it holds the interpreter lock and
every live session on the gateway waits (bench/ssh_relay.py measured keystrokes going from
~0.5 ms to 20-30 ms while a 64 MiB session was indexed). Large recordings are therefore read
in one child process owned by the recordings service. The child gets the master keys over
its pipe (never argv or the environment) and returns the verdict and the screen lines; it
writes nothing. Does not touch the catalog: the service stores what comes back.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from recordings import (
    DataKeyRing,
    LocalDataKeyStore,
    LocalRecordingStore,
    MasterKey,
    RecordingReader,
    VerifyResult,
)
from recordings.screen import TextLine, screen_lines

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def read_text(
    store_root: Path,
    keys_root: Path,
    masters: dict[str, bytes],
    current: str,
    verify_keys: dict[str, bytes],
    recording_id: str,
    size: tuple[int, int],
    max_output_bytes: int,
) -> tuple[VerifyResult, list[TextLine]]:
    """Runs in the child: verify ``recording_id`` and return its screen text."""
    ring = DataKeyRing(
        LocalDataKeyStore(keys_root),
        MasterKey(current, masters[current]),
        {kid: MasterKey(kid, key) for kid, key in masters.items() if kid != current},
    )
    public = {kid: Ed25519PublicKey.from_public_bytes(raw) for kid, raw in verify_keys.items()}
    with LocalRecordingStore(store_root).open_read(recording_id) as stream:
        reader = RecordingReader(stream, ring.resolve, public)
        lines = list(screen_lines(reader.events(), *size, max_output_bytes=max_output_bytes))
    assert reader.result is not None  # noqa: S101 - events() exhausted sets it
    return reader.result, lines


INDEX_NICENESS = 10  # added to the gateway's own niceness


def _detach() -> None:
    """In the child, first: end with the gateway, and let go of its output pipes.

    A gateway killed with SIGKILL cannot stop its worker; PR_SET_PDEATHSIG makes the kernel
    do it (Linux). The worker writes nothing, so its standard streams go to /dev/null rather
    than holding the gateway's log pipes open after the gateway is gone. It runs at a lower
    priority (``INDEX_NICENESS``): indexing a finished session can wait, relaying live ones
    cannot (profiled here: with 20 bulk streams on 2 cores the indexer took 10-23 % of the
    CPU from the relays; it still progresses under full load, unlike SCHED_IDLE).
    """
    with contextlib.suppress(OSError):
        os.nice(INDEX_NICENESS)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the worker ends at its next task instead
        pass
    if os.getppid() == 1:  # the gateway died before prctl took effect
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def new_pool() -> ProcessPoolExecutor:
    """One worker, started fresh (spawn): it inherits no sockets, tasks or locks."""
    return ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_detach
    )
