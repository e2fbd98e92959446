"""What each ``conduit`` command does, in terms of the modules that own the work.

Handlers return an exit code and print results for people; they raise ``ConduitError``
for anything an operator must fix.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Coroutine
from typing import Any

from gateway.cli.common import run_db, settings_from
from gateway.config import Settings, parse_listen
from gateway.db import migrate
from gateway.db.engine import make_engine, make_sessionmaker
from gateway.errors import ConfigError
from gateway.identity.accounts import list_users
from gateway.identity.enrollment import issue_admin_bootstrap
from gateway.keys import init_key_material, load_keyring
from gateway.logs import setup_logging

log = logging.getLogger(__name__)


def cmd_init(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    report = init_key_material(settings, force=args.force)
    for action, path in report.actions:
        print(f"{action:8} {path}")
    print(f"data directory ready: {settings.data_dir}")
    print("next: conduit db upgrade, then conduit serve")
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    settings = settings_from(args)

    async def run() -> list[str]:
        engine = make_engine(settings)
        try:
            return await migrate.upgrade(engine, progress=lambda line: print(line, flush=True))
        finally:
            await engine.dispose()

    run_db(run)
    print(f"schema at {migrate.head_revision()}")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    settings = settings_from(args)

    async def run() -> str | None:
        engine = make_engine(settings)
        try:
            return await migrate.current_revision(engine)
        finally:
            await engine.dispose()

    current = run_db(run)
    head = migrate.head_revision()
    state = "current" if current == head else f"behind (needs {head})"
    print(f"{current or 'empty'} {state}")
    return 0 if current == head else 1


def cmd_config_check(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    dump = settings.model_dump(mode="json")
    if settings.database.url:
        dump["database"]["url"] = _redact_url(settings.database.url)
    for section, values in dump.items():
        print(f"[{section}]")
        for key, value in values.items():
            print(f"{key} = {value!r}")
    print("configuration is valid", file=sys.stderr)
    return 0


def _redact_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"


def cmd_user_list(args: argparse.Namespace) -> int:
    settings = settings_from(args)

    async def run() -> list[tuple[str, str, str, str]]:
        engine = make_engine(settings)
        try:
            await migrate.require_current(engine)
            async with make_sessionmaker(engine)() as db:
                return [
                    (u.username, u.status, ",".join(u.role_names), u.organisation)
                    for u in await list_users(db)
                ]
        finally:
            await engine.dispose()

    rows = run_db(run)
    print(f"{'USERNAME':24} {'STATUS':9} {'ROLES':28} ORGANISATION")
    for name, status, roles, org in rows:
        print(f"{name:24} {status:9} {roles:28} {org}")
    return 0


def cmd_user_enroll_admin(args: argparse.Namespace) -> int:
    from gateway.services import utc_now

    settings = settings_from(args)

    async def run() -> str:
        engine = make_engine(settings)
        try:
            await migrate.require_current(engine)
            async with make_sessionmaker(engine)() as db, db.begin():
                link = await issue_admin_bootstrap(db, utc_now())
            return f"{link.url(settings.portal_url)} (valid for 30 minutes)"
        finally:
            await engine.dispose()

    print(run_db(run))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.cli import supervisor
    from gateway.cli.serve import serve

    settings = settings_from(args)
    setup_logging(settings.logging.level, settings.logging.format)
    index = getattr(args, "worker_index", None)
    if index is not None:  # started by a supervisor (below)
        if not 0 <= index < supervisor.MAX_WORKERS:
            raise ConfigError("config error: --worker-index: out of range")
        supervisor.die_with_parent()
        return _run_serve(settings, serve(settings, worker=index, workers=args.workers or 1))
    count, note = supervisor.workers_for(
        settings.database_url, settings.server.workers, args.workers, os.cpu_count()
    )
    if note:
        print(note, flush=True)
        log.warning(note)
    if count == 1:
        return _run_serve(settings, serve(settings))
    forwarded = [
        f"{flag}={value}"
        for flag, value in (
            ("--config", args.config),
            ("--data-dir", args.data_dir),
            ("--portal-listen", args.portal_listen),
            ("--ssh-listen", args.ssh_listen),
        )
        if value is not None
    ]
    ssh = settings.ssh_listen if settings.ssh.enabled else None
    grace = settings.server.shutdown_grace_seconds
    forwarded.append(f"--workers={count}")
    return supervisor.supervise(settings.portal_listen, ssh, forwarded, count, grace)


def _run_serve(settings: Settings, main: Coroutine[Any, Any, int]) -> int:
    if settings.server.event_loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.cli.serve import serve
    from gateway.demo import site

    args.portal_listen = args.portal_listen or site.DEMO_PORTAL
    args.ssh_listen = args.ssh_listen or site.DEMO_SSH
    settings = settings_from(args, portal_tls=False)
    if not settings.ssh_listen.is_loopback:
        raise ConfigError("config error: ssh.listen: the demo serves SSH on loopback only")
    wanted = None
    if getattr(args, "target_listen", None):
        try:
            wanted = parse_listen(args.target_listen)
        except ValueError as exc:
            raise ConfigError(f"config error: --target-listen: {exc}") from None
        if wanted.host != "127.0.0.1":
            raise ConfigError("config error: --target-listen: the demo device is on 127.0.0.1")
    setup_logging(settings.logging.level, settings.logging.format)
    # With the portal certificate too, although the demo serves plain HTTP: then the other
    # commands (`conduit audit export --data-dir conduit-demo`, ...) work on this directory.
    init_key_material(settings_from(args, portal_tls=True))
    keys = load_keyring(settings)
    return asyncio.run(site.run(settings, keys, wanted, serve))
