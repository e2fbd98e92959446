"""The one object holding what a running gateway shares: passed explicitly, no globals.

Built once by ``serve`` (or a CLI command), closed once. Does not start listeners.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from gateway.audit import AuditLog
from gateway.audit.spool import AuditSpool
from gateway.authz.access_requests import RequestService
from gateway.authz.service import AuthzService
from gateway.config import Settings
from gateway.db.engine import make_engine, make_sessionmaker
from gateway.db.health import DatabaseHealth
from gateway.identity.login import Authenticator
from gateway.keys import KeyRing
from gateway.recorder import RecordingService
from gateway.sessions.events import ChangeBus
from gateway.sessions.live import LiveRegistry
from gateway.tasks import TaskSet

Clock = Callable[[], dt.datetime]
log = logging.getLogger("gateway.alerts")


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Metrics:
    """Prometheus metrics of one gateway process, on its own registry."""

    def __init__(self, live: LiveRegistry) -> None:
        self.registry = CollectorRegistry()
        self.live_sessions = Gauge(
            "conduit_live_sessions", "Sessions open on this process", registry=self.registry
        )
        self.live_sessions.set_function(lambda: len(live))
        self.ssh_connections = Counter(
            "conduit_ssh_connections", "SSH connections accepted", registry=self.registry
        )
        self.ssh_refused = Counter(
            "conduit_ssh_connections_refused",
            "SSH connections refused before authentication",
            ["reason"],
            registry=self.registry,
        )
        self.http_requests = Counter(
            "conduit_http_requests", "Portal HTTP requests", ["status"], registry=self.registry
        )
        self.ready = Gauge(
            "conduit_ready_check",
            "Readiness check result (1 ok)",
            ["check"],
            registry=self.registry,
        )
        self.kill_requests_served = Counter(
            "conduit_kill_requests_served",
            "Kill requests this process carried out, by how it learnt of them",
            ["via"],  # notify (LISTEN/NOTIFY) or poll (the fallback)
            registry=self.registry,
        )
        self.portal_refusals_unaudited = Counter(
            "conduit_portal_refusals_unaudited",
            "Refusals beyond an endpoint's audit budget: summarised, not audited one by one",
            ["endpoint"],  # gateway.web.refusal_budget
            registry=self.registry,
        )
        self.security_alerts = Counter(
            "conduit_security_alerts",
            "Events that need a person now, by kind (alert on any increase)",
            ["kind"],
            registry=self.registry,
        )

    def alert(self, kind: str, detail: str) -> None:
        """Raise a security alert: an ``ALERT`` error log line and
        ``conduit_security_alerts_total{kind=...}``, which monitoring turns into a page.
        Callers audit the event itself; ``detail`` must hold no secret."""
        self.security_alerts.labels(kind).inc()
        log.error("ALERT %s: %s", kind, detail)


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[Any]
    keys: KeyRing
    live: LiveRegistry
    tasks: TaskSet
    metrics: Metrics
    audit: AuditLog
    bus: ChangeBus
    authz: AuthzService
    requests: RequestService
    recordings: RecordingService
    authenticator: Authenticator
    clock: Clock = utc_now
    node: str = field(default="")
    worker: int = 0  # which process of the node (``conduit serve --workers N``: 0..N-1)
    # Whether the database answers (PostgreSQL; on SQLite always up): gateway.db.health.
    db_health: DatabaseHealth = field(
        default_factory=lambda: DatabaseHealth(None, grace_seconds=60)
    )

    @classmethod
    def build(
        cls,
        settings: Settings,
        keys: KeyRing,
        clock: Clock = utc_now,
        *,
        worker: int = 0,
        serving: bool = False,
    ) -> Services:
        """``serving``: for ``conduit serve`` on PostgreSQL, watch the database's health and
        spool audit events it cannot take (docs/decisions/0023); a CLI command fails instead."""
        node = settings.server.node_name or socket.gethostname()
        engine = make_engine(settings)
        live = LiveRegistry(node)
        sessions = make_sessionmaker(engine)
        watched = serving and engine.dialect.name == "postgresql"
        health = DatabaseHealth(
            engine if watched else None, grace_seconds=settings.database.outage_grace_seconds
        )
        spool = (
            AuditSpool(settings.data_dir, settings.database.audit_spool_max_bytes)
            if watched
            else None
        )
        audit = AuditLog(
            sessions, keys.signing_key, clock, spool=spool, health=health,
            append_timeout_seconds=2 * settings.database.connect_timeout_seconds,
        )  # fmt: skip
        bus = ChangeBus()
        authz = AuthzService(sessions, clock, bus, audit)
        recordings = RecordingService.from_settings(settings, keys, sessions, clock, audit)
        recordings.worker = worker
        return cls(
            settings=settings,
            engine=engine,
            sessions=sessions,
            keys=keys,
            live=live,
            tasks=TaskSet(),
            metrics=Metrics(live),
            audit=audit,
            bus=bus,
            authz=authz,
            requests=RequestService(authz, sessions, clock, bus, audit),
            recordings=recordings,
            # One for portal, API and SSH: its argon2 concurrency limit covers them all.
            authenticator=Authenticator(sessions, keys.master_key, settings.lockout, audit),
            clock=clock,
            node=node,
            worker=worker,
            db_health=health,
        )

    async def close(self) -> None:
        await self.recordings.aclose()
        await self.engine.dispose()
