"""``conduit serve --workers N``: the supervisor of a node's N worker processes.

The supervisor serves nothing itself. It checks once that the portal and SSH addresses are
free (so a busy port is one clear error, and a second node cannot silently join this one's
SO_REUSEPORT group), then starts N workers, each ``python -m gateway serve --worker-index K``
with the same configuration: each binds the ports with SO_REUSEPORT, so the kernel spreads
new connections over them, and registers as (node, K) in ``nodes``
(docs/decisions/0022-worker-processes.md).

A worker that exits while the node is not stopping is started again under the same index
after a backoff (``RESTART_BACKOFF_SECONDS``, doubling with each recent restart), logged as
``worker.restart``; its replacement ends the dead worker's leftover live-session rows
(``node_lost``, audited) and closes its open recordings as incomplete before it serves. More
than ``MAX_RESTARTS_PER_MINUTE`` restarts of one worker stop the node (exit 1): a worker
that cannot stay up is a fault for the operator, not something to hide. SIGTERM/SIGINT: send
SIGTERM to every worker, wait for them (each ends its sessions within its shutdown grace),
exit 0; a worker still running after ``stop_seconds`` is killed and the exit code is 1.

Does not touch the database, keys or sessions (the workers do); runs no event loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType

from gateway.config import ListenAddress
from gateway.errors import ConduitError

log = logging.getLogger(__name__)

MAX_WORKERS = 64
MAX_RESTARTS_PER_MINUTE = 5
RESTART_BACKOFF_SECONDS = 0.25  # the first restart; doubled for each restart in the last minute
MAX_BACKOFF_SECONDS = 8.0
TICK_SECONDS = 0.1
PR_SET_PDEATHSIG = 1


def reuse_port_available() -> bool:
    """Whether this platform lets several processes bind one port (Linux, BSD: yes)."""
    return hasattr(socket, "SO_REUSEPORT")


def die_with_parent() -> None:
    """In a worker, first: end (cleanly, SIGTERM) when the supervisor dies, even by SIGKILL.

    PR_SET_PDEATHSIG is Linux's; elsewhere an orphaned worker keeps serving until stopped.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        raise ConduitError("the supervisor of this worker is gone")


def check_free(listen: ListenAddress, what: str) -> None:
    """Fail with one clear line if ``listen`` is taken (bound without SO_REUSEPORT, so a
    running group of workers, ours or another node's, counts as taken)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            listen.host, listen.port, type=socket.SOCK_STREAM
        )[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as exc:
        raise ConduitError(f"cannot listen on {listen} for the {what}: {exc.strerror}") from None


@dataclass
class Worker:
    """One slot of the node: its index, its current process, and its recent restarts."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    restarts: deque[float] = field(default_factory=deque)  # monotonic instants
    start_at: float = 0.0  # when to start it again (monotonic), if it is not running


class Supervisor:
    """Starts, watches, restarts and stops the workers; ``run`` returns the exit code."""

    def __init__(self, command: Sequence[str], count: int, stop_seconds: float) -> None:
        self._command = list(command)  # the worker's command line, without --worker-index
        self._workers = [Worker(index) for index in range(count)]
        self._stop_seconds = stop_seconds
        self._stopping = False

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _start(self, worker: Worker) -> None:
        argv = [*self._command, "--worker-index", str(worker.index)]
        worker.proc = subprocess.Popen(argv)  # noqa: S603 - our own interpreter and arguments
        log.info("worker started", extra={"worker": worker.index, "pid": worker.proc.pid})

    def _reaped(self, worker: Worker, now: float) -> bool:
        """If ``worker`` exited: schedule its restart; False when it restarts too often."""
        assert worker.proc is not None  # noqa: S101 - only running workers are watched
        code = worker.proc.poll()
        if code is None:
            return True
        pid, worker.proc = worker.proc.pid, None
        while worker.restarts and worker.restarts[0] < now - 60:
            worker.restarts.popleft()
        if len(worker.restarts) >= MAX_RESTARTS_PER_MINUTE:
            log.error(
                "worker %d exited (status %s) after %d restarts in a minute; stopping the node",
                worker.index, code, len(worker.restarts),
            )  # fmt: skip
            return False
        delay = min(MAX_BACKOFF_SECONDS, RESTART_BACKOFF_SECONDS * 2 ** len(worker.restarts))
        worker.restarts.append(now)
        worker.start_at = now + delay
        log.error(
            "worker.restart: worker %d (pid %d) exited with status %s; restarting in %.2f s",
            worker.index, pid, code, delay,
            extra={"event": "worker.restart", "worker": worker.index, "pid": pid, "status": code},
        )  # fmt: skip
        return True

    def run(self) -> int:
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for worker in self._workers:
                self._start(worker)
            healthy = self._watch()
            return 0 if self._stop_all() and healthy else 1
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _watch(self) -> bool:
        """Until asked to stop; False when a worker could not be kept up."""
        while not self._stopping:
            now = time.monotonic()
            for worker in self._workers:
                if worker.proc is not None and not self._reaped(worker, now):
                    return False
                if worker.proc is None and now >= worker.start_at and not self._stopping:
                    self._start(worker)
            time.sleep(TICK_SECONDS)
        return True

    def _stop_all(self) -> bool:
        """SIGTERM to every worker, then wait; True when all ended within the bound."""
        running = [w.proc for w in self._workers if w.proc is not None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._stop_seconds
        clean = True
        for proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.wait()
                clean = False
        return clean


def worker_command(args: Sequence[str]) -> list[str]:
    """The command line of a worker: this interpreter running ``gateway serve`` with ``args``
    (configuration flags; the environment is inherited)."""
    return [sys.executable, "-m", "gateway", "serve", *args]


def workers_for(
    database_url: str, configured: int, requested: int | None, cpus: int | None
) -> tuple[int, str]:
    """How many workers to run, and a line to say at start when it is not what was asked.

    ``requested`` (``--workers``) wins over ``configured`` (``server.workers``; 0: one per
    CPU on PostgreSQL). SQLite is one process (one writer; the live-session table, kill
    requests and tickets of several processes need PostgreSQL). Without SO_REUSEPORT the
    node runs one process (the fallback is described in decision 0022)."""
    wanted = requested if requested is not None else configured
    if database_url.startswith("sqlite"):
        if wanted > 1:
            return 1, f"SQLite runs one process: {wanted} workers asked for, 1 started"
        return 1, ""
    count = wanted or max(1, cpus or 1)
    if count > 1 and not reuse_port_available():
        return 1, f"no SO_REUSEPORT on this platform: {count} workers asked for, 1 started"
    return min(count, MAX_WORKERS), ""


def supervise(
    portal: ListenAddress, ssh: ListenAddress | None, args: Sequence[str], count: int, grace: int
) -> int:
    """Run ``count`` workers of ``serve`` with ``args`` until SIGTERM/SIGINT."""
    check_free(portal, "portal")
    if ssh is not None:
        check_free(ssh, "SSH")
    print(f"Conduit node supervisor (pid {os.getpid()}): {count} worker processes", flush=True)
    # A worker stops within its grace (serve._shutdown: < 10 s); the margin is for a loaded
    # machine, and stays inside systemd's TimeoutStopSec (deploy/systemd, 15 s) by default.
    return Supervisor(worker_command(args), count, stop_seconds=grace + 5).run()
