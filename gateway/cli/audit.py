"""``conduit audit verify|export``: the handlers, and the parser they expect.

``add_audit_commands`` builds the ``audit`` sub-commands so ``gateway.cli.main`` only has to
call it; the work is ``gateway.audit.AuditLog``'s. Handlers return an exit code: ``audit
verify`` exits 1 when the log was tampered with. Does not record or checkpoint events.
"""

from __future__ import annotations

import argparse
import datetime as dt
import socket
import ssl
import sys
from pathlib import Path
from typing import TextIO

from gateway.audit import (
    AuditLog,
    AuditVerifyResult,
    SyslogTarget,
    open_syslog_sender,
    parse_syslog_target,
)
from gateway.cli.common import run_db, settings_from
from gateway.db import migrate
from gateway.db.engine import make_engine, make_sessionmaker
from gateway.errors import ConduitError
from gateway.keys import load_keyring
from rbac.errors import WindowError
from rbac.windows import check_instant

EXIT_OK, EXIT_TAMPERED = 0, 1
# Below this many events verification takes well under a second: no progress lines.
PROGRESS_MIN_EVENTS = 1000


def add_audit_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add ``audit verify`` and ``audit export`` under ``sub`` (the top-level subparsers)."""
    audit = sub.add_parser("audit", help="audit log").add_subparsers(
        dest="audit_command", metavar="ACTION", required=True
    )
    p = audit.add_parser("verify", parents=[common], help="check the hash chain and checkpoints")
    p.set_defaults(handler=audit_verify)
    p = audit.add_parser("export", parents=[common], help="export as JSON lines or syslog")
    p.add_argument("--format", choices=("jsonl", "syslog"), default=None, help="default jsonl")
    p.add_argument("--output", default="-", metavar="FILE", help="file or - for stdout")
    p.add_argument(
        "--syslog-target", metavar="URL", help="send to udp://host:port, tcp://.. or tls://.."
    )
    p.add_argument("--syslog-ca", type=Path, metavar="F", help="CA file for a tls:// target")
    p.add_argument("--since", metavar="TIME", help="ISO 8601 (UTC if no offset), inclusive")
    p.add_argument("--until", metavar="TIME", help="ISO 8601 (UTC if no offset), exclusive")
    p.set_defaults(handler=audit_export)


class ProgressLines:
    """Prints ``verified N/M events`` at each tenth of a long chain."""

    def __init__(self, stream: TextIO, min_events: int = PROGRESS_MIN_EVENTS) -> None:
        self._stream = stream
        self._min = min_events
        self._shown = -1

    def __call__(self, checked: int, total: int) -> None:
        if total < self._min:
            return
        tenth = checked * 10 // total
        if tenth != self._shown:
            self._shown = tenth
            print(f"verified {checked}/{total} events", file=self._stream, flush=True)


def audit_verify(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    keys = load_keyring(settings)

    async def run() -> AuditVerifyResult:
        from gateway.services import utc_now

        engine = make_engine(settings)
        try:
            await migrate.require_current(engine)
            log = AuditLog(make_sessionmaker(engine), keys.signing_key, utc_now)
            return await log.verify(ProgressLines(sys.stderr))
        finally:
            await engine.dispose()

    result = run_db(run)
    if result.ok:
        print(
            f"audit log intact: {result.checked} events, "
            f"{result.checkpoints} signed checkpoint(s) verified"
        )
        return EXIT_OK
    print(f"audit log TAMPERED: first bad event {result.first_bad_id}")
    for problem in result.problems:
        print(f"  {problem}")
    return EXIT_TAMPERED


def _parse_time(value: str | None, flag: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ConduitError(f"{flag} {value!r} is not an ISO 8601 time") from None
    try:  # bounded like every instant from outside (rbac.windows), and in UTC
        return check_instant(when if when.tzinfo else when.replace(tzinfo=dt.UTC), flag)
    except WindowError as exc:
        raise ConduitError(str(exc)) from None


def _ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConduitError(f"cannot use --syslog-ca {ca_file}: {exc}") from None


class _LineSender:
    """Syslog messages into a file or stdout, one per line (fields hold no raw newlines)."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    async def send(self, message: bytes) -> None:
        self._out.write(message.decode() + "\n")

    async def aclose(self) -> None:
        self._out.flush()


async def _write(
    log: AuditLog,
    fmt: str,
    out: TextIO,
    hostname: str,
    since: dt.datetime | None,
    until: dt.datetime | None,
) -> int:
    if fmt == "jsonl":
        return await log.export_jsonl(out, since=since, until=until)
    sender = _LineSender(out)
    try:
        return await log.export_syslog(sender, hostname=hostname, since=since, until=until)
    finally:
        await sender.aclose()


async def _send(
    log: AuditLog,
    target: SyslogTarget,
    ca_file: Path | None,
    hostname: str,
    since: dt.datetime | None,
    until: dt.datetime | None,
) -> int:
    # Raised as ConduitError here: the caller's database-error wrapper would otherwise
    # report a refused syslog connection (an OSError) as a database problem.
    try:
        tls = _ssl_context(ca_file) if target.transport == "tls" else None
        sender = await open_syslog_sender(target, ssl_context=tls)
        try:
            return await log.export_syslog(sender, hostname=hostname, since=since, until=until)
        finally:
            await sender.aclose()
    except (OSError, TimeoutError) as exc:
        raise ConduitError(f"cannot send to syslog {target}: {exc}") from None


def audit_export(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    keys = load_keyring(settings)
    since = _parse_time(args.since, "--since")
    until = _parse_time(args.until, "--until")
    fmt = args.format or ("syslog" if args.syslog_target else "jsonl")
    if args.syslog_target and fmt != "syslog":
        raise ConduitError("--syslog-target sends syslog: drop --format jsonl")
    try:
        target = parse_syslog_target(args.syslog_target) if args.syslog_target else None
    except ValueError as exc:
        raise ConduitError(str(exc)) from None
    hostname = settings.server.node_name or socket.gethostname()

    async def run() -> int:
        from gateway.services import utc_now

        engine = make_engine(settings)
        try:
            await migrate.require_current(engine)
            log = AuditLog(make_sessionmaker(engine), keys.signing_key, utc_now)
            if target is not None:
                return await _send(log, target, args.syslog_ca, hostname, since, until)
            if args.output == "-":
                return await _write(log, fmt, sys.stdout, hostname, since, until)
            with Path(args.output).open("w", encoding="utf-8") as out:  # noqa: ASYNC230 - CLI
                return await _write(log, fmt, out, hostname, since, until)
        finally:
            await engine.dispose()

    count = run_db(run)
    where = str(target) if target is not None else args.output
    print(f"exported {count} event(s) as {fmt} to {where}", file=sys.stderr)
    return EXIT_OK
