"""``conduit serve``: one asyncio process running the portal and the SSH listener.

Start-up fails closed: keys, schema and listeners must all come up or the process exits
non-zero with one clear line. SIGTERM/SIGINT: stop accepting, end live sessions with
reason ``shutdown``, close the database, exit 0, all within the grace period (< 10 s).
Does not create keys or migrate the schema (``init`` and ``db upgrade`` do). With
``worker`` (one of the processes of ``conduit serve --workers N``, see ``supervisor``) it
binds with SO_REUSEPORT beside its siblings and registers as (node, worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Generator
from typing import TextIO

import asyncssh
import uvicorn

from gateway.config import ListenAddress, Settings
from gateway.db.migrate import require_current
from gateway.desktop import upstream as desktop_upstream
from gateway.errors import ConduitError
from gateway.identity.enrollment import active_admin_exists, issue_admin_bootstrap
from gateway.keys import load_keyring
from gateway.recorder.retention import apply_retention
from gateway.services import Services
from gateway.sessions import cluster, notify, watch_grants
from gateway.sessions import store as live_store
from gateway.sessions.broker import Broker
from gateway.sessions.local_control import LocalControl
from gateway.ssh import upstream
from gateway.ssh.server import RefusalAudit, start_ssh_server
from gateway.web.app import create_app

log = logging.getLogger(__name__)
AUDIT_CHECKPOINT_SECONDS = 300
REQUEST_EXPIRY_SECONDS = 60
RETENTION_SECONDS = 3600


class _PortalServer(uvicorn.Server):
    """uvicorn without its own signal handling: this process owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _portal_config(services: Services, broker: Broker) -> uvicorn.Config:
    settings = services.settings
    listen = settings.portal_listen
    tls: dict[str, object] = {}
    if settings.portal.tls:
        tls = {
            "ssl_certfile": str(services.keys.tls_cert_file),
            "ssl_keyfile": str(services.keys.tls_key_file),
        }
    return uvicorn.Config(
        create_app(services, broker),
        host=listen.host,
        port=listen.port,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        lifespan="off",
        timeout_graceful_shutdown=max(1, settings.server.shutdown_grace_seconds - 1),
        **tls,  # type: ignore[arg-type]
    )


def _own_contact(services: Services) -> watch_grants.Contact:
    """Where the other nodes reach this portal to relay a watch, and its leaf certificate
    (``ConfigError`` before anything starts if the certificate file holds a private key)."""
    cert = services.keys.tls_cert_file
    pem = cert.read_text() if services.settings.portal.tls and cert is not None else ""
    return watch_grants.own_contact(services.settings, pem)


async def _publish_contact(services: Services, contact: watch_grants.Contact) -> None:
    """Publish this member's contact in its ``nodes`` row (``watch_grants``)."""
    async with services.sessions() as db, db.begin():
        await watch_grants.publish_contact(db, services.node, services.worker, contact)


async def announce_admin_enrollment(services: Services, out: TextIO) -> None:
    """With no active admin, print a fresh one-time enrolment link (never to the log)."""
    async with services.sessions() as db, db.begin():
        if await active_admin_exists(db):
            return
        link = await issue_admin_bootstrap(db, services.clock())
    url = link.url(services.settings.portal_url)
    expires = link.expires_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    print(
        f"No administrator yet. Enrol the first one within 30 minutes (until {expires}):", file=out
    )
    print(f"  {url}", file=out, flush=True)
    log.info("admin enrolment link issued", extra={"expires_at": expires})


async def checkpoint_periodically(services: Services) -> None:
    """Sign the audit chain head regularly, so a rewritten tail cannot pass verification."""
    while True:
        await asyncio.sleep(AUDIT_CHECKPOINT_SECONDS)
        try:
            await services.audit.checkpoint()
        except Exception:  # a failed checkpoint must not stop the gateway; it is retried
            log.exception("audit checkpoint failed")


def _round_failed(services: Services, what: str) -> None:
    """Log a failed round of a loop (called in its ``except``; the next round retries). While
    the database is known to be away the health watch has said so once: no traceback a round."""
    if services.db_health.up:
        log.exception("%s failed", what)


async def _woken_or_polled(wake: asyncio.Event, seconds: float) -> str:
    """Wait for ``wake`` (a notification) or ``seconds`` (the poll); says which came first."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await wake.wait()
    woken = wake.is_set()
    wake.clear()
    return "notify" if woken else "poll"


async def watch_policy(services: Services, wake: asyncio.Event) -> None:
    """Notice policy changes made by other processes (CLI, other nodes): at once when
    notified (PostgreSQL), else within ``cluster.poll_seconds``.

    A reload publishes a change event, which makes every live session re-check at once.
    """
    while True:
        await _woken_or_polled(wake, services.settings.cluster.poll_seconds)
        try:
            await services.authz.refresh()
        except Exception:  # the database may be briefly away; sessions keep their deadlines
            _round_failed(services, "policy refresh")


async def watch_kill_requests(broker: Broker, services: Services, wake: asyncio.Event) -> None:
    """Kills asked for by other processes (``conduit sessions kill``, another node's API):
    at once when notified (PostgreSQL), else within ``cluster.poll_seconds``; Modbus write
    windows armed or closed anywhere land in the same round.

    Each round also publishes this process's byte counts that changed since the last one,
    so ``sessions list`` anywhere shows them at most one round old.
    """
    published: dict[str, tuple[int, int]] = {}
    while True:
        via = await _woken_or_polled(wake, services.settings.cluster.poll_seconds)
        try:
            served = await broker.serve_kill_requests()
            if served:
                services.metrics.kill_requests_served.labels(via).inc(served)
        except Exception:  # retried next round
            _round_failed(services, "serving kill requests")
        try:
            await broker.serve_write_windows()
        except Exception:  # retried next round; a window not yet seen keeps writes refused
            _round_failed(services, "serving write windows")
        try:
            published = await publish_byte_counts(services, published)
        except Exception:  # retried next round: ``published`` is unchanged
            _round_failed(services, "publishing byte counts")


def start_control(services: Services, broker: Broker) -> None:
    """Kill requests, policy changes and membership: the loops, and on PostgreSQL the
    LISTEN connection that wakes them (docs/decisions/0017)."""
    kill_wake, policy_wake = asyncio.Event(), asyncio.Event()

    def kill_for(node: str) -> None:
        if node == services.node:
            kill_wake.set()

    def caught_up() -> None:  # anything missed while not listening: look now
        kill_wake.set()
        policy_wake.set()

    if notify.is_postgresql(services.engine):
        listener = notify.Listener(
            services.engine,
            {notify.KILL_CHANNEL: kill_for, notify.POLICY_CHANNEL: lambda _: policy_wake.set()},
            connect_timeout=services.settings.database.connect_timeout_seconds,
            on_connect=caught_up,
            name=f"conduit-listen {services.node}",
        )
        services.tasks.start("notifications", listener.run())
    services.tasks.start("policy-watch", watch_policy(services, policy_wake))
    services.tasks.start("kill-requests", watch_kill_requests(broker, services, kill_wake))
    services.tasks.start("membership", cluster.keep_membership(services, broker.end_all))
    services.tasks.start("local-control", LocalControl(services, broker).serve())
    if notify.is_postgresql(services.engine):  # docs/decisions/0023: database outage
        services.tasks.start(
            "database-health", services.db_health.watch(catch_up(services), broker.end_all)
        )


def catch_up(services: Services) -> Callable[[], Awaitable[object]]:
    """What to do when the database answers (again): spooled audit events into the chain,
    then the catalog updates the outage held back. Cheap when there is nothing to do."""

    async def run() -> None:
        await services.audit.drain_spool()
        await services.recordings.finish_deferred()

    return run


async def publish_byte_counts(
    services: Services, published: dict[str, tuple[int, int]]
) -> dict[str, tuple[int, int]]:
    """Write the counts that changed since ``published``; returns what is now published."""
    current = {s.session_id: (s.bytes_up, s.bytes_down) for s in services.live.list()}
    changed = {sid: counts for sid, counts in current.items() if published.get(sid) != counts}
    if changed:
        async with services.sessions() as db, db.begin():
            await live_store.publish_bytes(db, changed)
    return current


async def expire_requests_periodically(services: Services) -> None:
    """Expire unanswered and finished access requests; their grants end with them."""
    while True:
        try:
            expired = await services.requests.expire_due()
            if expired:
                log.info("access requests expired", extra={"count": len(expired)})
        except Exception:  # retried next round; a failure must not stop the gateway
            log.exception("request expiry failed")
        await asyncio.sleep(REQUEST_EXPIRY_SECONDS)


async def apply_retention_periodically(services: Services) -> None:
    """Delete recordings older than the retention period (each deletion is audited)."""
    days = services.settings.recordings.retention_days
    while True:
        try:
            report = await apply_retention(services.recordings, days, actor="system")
            if report.deleted or report.failed:
                log.info(
                    "retention applied",
                    extra={"deleted": len(report.deleted), "failed": len(report.failed)},
                )
        except Exception:  # retried next round
            log.exception("retention failed")
        await asyncio.sleep(RETENTION_SECONDS)


def bind_listener(listen: ListenAddress, what: str, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket for ``listen``; ``ConduitError`` names the address on failure.

    With ``reuse_port``, sibling worker processes bind the same address and the kernel
    spreads connections over them (SO_REUSEPORT)."""
    try:
        infos = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConduitError(f"cannot listen on {listen} for the {what}: {exc.strerror}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConduitError(f"cannot listen on {listen} for the {what}: {exc.strerror}") from None
    return sock


async def serve(
    settings: Settings,
    *,
    out: TextIO = sys.stdout,
    on_ready: Callable[[Services], None] | None = None,
    stop: asyncio.Event | None = None,
    worker: int | None = None,
    workers: int = 1,
) -> int:
    """Run until SIGTERM/SIGINT (or ``stop`` is set); returns the process exit code.

    ``worker``: this is worker process ``worker`` of ``workers`` sharing the ports."""
    keys = load_keyring(settings)
    services = Services.build(settings, keys, worker=worker or 0, serving=True)
    try:
        await require_current(services.engine)
        # Audit events a database outage left on local disk go into the chain first.
        await services.audit.drain_spool()
        await services.authz.refresh(force=True)
        # Recordings left open by a crash of this node are closed as incomplete and signed.
        await services.recordings.recover_open()
        # ... and those whose verification and indexing the last stop cut short.
        await services.recordings.resume_indexing()
        if services.worker == 0:  # one link per node, not one per worker
            await announce_admin_enrollment(services, out)
        return await _run(services, on_ready, stop or asyncio.Event(), worker, workers)
    finally:
        await services.close()


async def _run(
    services: Services,
    on_ready: Callable[[Services], None] | None,
    stop: asyncio.Event,
    worker: int | None,
    workers: int,
) -> int:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        return await _serve_until(services, on_ready, stop, worker is not None, workers)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def _serve_until(
    services: Services,
    on_ready: Callable[[Services], None] | None,
    stop: asyncio.Event,
    reuse_port: bool,
    workers: int,
) -> int:
    settings = services.settings

    broker = Broker(
        services, ssh_connector=upstream.connect, desktop_connector=desktop_upstream.connect
    )
    contact = _own_contact(services)
    await cluster.join(services)
    await _publish_contact(services, contact)
    # Sessions a previous run of this node left in the shared table ended with it (with
    # workers: this worker's, and worker 0 also those of indexes the node no longer runs).
    await cluster.reap_own_leftovers(services, workers)
    # Bind both listeners before serving anything, so a busy or forbidden address is one
    # clear error and nothing half-started is left behind.
    portal_socket = bind_listener(settings.portal_listen, "portal", reuse_port=reuse_port)
    ssh_acceptor: asyncssh.SSHAcceptor | None = None
    refusals = RefusalAudit(services)
    if settings.ssh.enabled:
        try:
            ssh_acceptor = await start_ssh_server(
                services, broker, services.authenticator, refusals, reuse_port=reuse_port
            )
        except OSError as exc:
            portal_socket.close()
            raise ConduitError(
                f"cannot listen on {settings.ssh.listen} for SSH: {exc.strerror}"
            ) from None
    portal = _PortalServer(_portal_config(services, broker))
    portal_task = services.tasks.start("portal", portal.serve(sockets=[portal_socket]))
    while not portal.started and not portal_task.done():  # noqa: ASYNC110 - uvicorn has only a flag
        await asyncio.sleep(0.02)
    if portal_task.done():
        log.error("portal failed to start on %s", settings.portal.listen)
        if ssh_acceptor is not None:
            ssh_acceptor.close()
        return 1
    log.info(
        "conduit serving",
        extra={
            "portal": settings.portal_url,
            "ssh": settings.ssh.listen if ssh_acceptor else "off",
        },
    )
    print(f"Conduit portal on {settings.portal_url}", flush=True)
    if ssh_acceptor is not None:
        print(f"Conduit SSH on {settings.ssh.listen}", flush=True)
    await services.audit.record(
        actor="system",
        action="gateway.start",
        result="success",
        target=services.node,
        detail={
            "portal": settings.portal.listen,
            "ssh": settings.ssh.listen if ssh_acceptor else "off",
        },
    )
    start_control(services, broker)
    if services.worker == 0:  # the node's housekeeping: once per node, not once per worker
        services.tasks.start("audit-checkpoints", checkpoint_periodically(services))
        services.tasks.start("request-expiry", expire_requests_periodically(services))
        if settings.recordings.retention_days:
            services.tasks.start("recording-retention", apply_retention_periodically(services))
    # Everything built at start-up lives as long as the process: keep it out of the cyclic
    # collector's full scans (decision 0010: perf saw gc_collect_main at 31% of the
    # gateway's CPU over 8 s of typing through the relay, and none with the heap frozen).
    gc.collect()
    gc.freeze()
    if on_ready is not None:
        on_ready(services)

    stopped_by = asyncio.create_task(stop.wait())
    await asyncio.wait({stopped_by, portal_task}, return_when=asyncio.FIRST_COMPLETED)
    stopped_by.cancel()
    crashed = portal_task.done() and not stop.is_set()
    await _shutdown(services, portal, portal_task, ssh_acceptor, refusals)
    return 1 if crashed else 0


async def _shutdown(
    services: Services,
    portal: uvicorn.Server,
    portal_task: asyncio.Task[None],
    ssh_acceptor: asyncssh.SSHAcceptor | None,
    refusals: RefusalAudit,
) -> None:
    grace = services.settings.server.shutdown_grace_seconds
    log.info("shutting down: no new connections, ending live sessions")
    if ssh_acceptor is not None:
        ssh_acceptor.close()
    portal.should_exit = True
    ended = 0
    try:
        async with asyncio.timeout(grace):
            ended = await services.live.end_all("shutdown")
    except TimeoutError:
        log.error("live sessions did not end within %s s", grace)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(portal_task), timeout=grace)
    if not portal_task.done():
        portal.force_exit = True
    if ssh_acceptor is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ssh_acceptor.wait_closed(), timeout=1)
    try:  # refusals not yet summarised (one summary a minute) reach the audit trail now
        async with asyncio.timeout(grace):
            await refusals.close()
    except TimeoutError:
        log.error("refused SSH connections of the last minute not audited")
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1):
            await services.tasks.cancel_all()
    try:
        await cluster.leave(services)
        await services.audit.record(
            actor="system",
            action="gateway.stop",
            result="success",
            target=services.node,
            detail={"sessions_ended": ended},
        )
        await services.audit.checkpoint()
    except Exception:  # the process is exiting anyway; the chain itself stays verifiable
        log.exception("could not write the final audit checkpoint")
    log.info("stopped", extra={"sessions_ended": ended})
