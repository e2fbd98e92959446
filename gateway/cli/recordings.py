"""``conduit recordings list|verify|export|search|retention``: handlers and their parser.

``add_recordings_commands`` builds the sub-commands so ``gateway.cli.main`` only calls it. Each
handler takes the parsed arguments (with ``config`` and ``data_dir``) and returns an exit
code: ``verify`` exits 1 unless every recording is intact (or still open and sound so far):
tampered, truncated, missing and crash-recovered ("incomplete") ones all count. Exports and
searches are audited with the operating-system user as actor. The work is
``gateway.recorder``'s; this module parses, prints and builds the service.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Awaitable, Callable
from typing import IO, Any, BinaryIO, TypeVar

from gateway.audit import AuditLog
from gateway.cli.common import run_db, settings_from
from gateway.db import migrate
from gateway.db.engine import make_engine, make_sessionmaker
from gateway.errors import ConduitError
from gateway.keys import load_keyring
from gateway.ot.export import jsonl_lines
from gateway.recorder import (
    RecordingMissing,
    RecordingService,
    apply_retention,
    judged_closed,
    quota_status,
)
from recordings import Header, Integrity, RecordingReader, VerifyResult
from recordings.terminal import TerminalEvent, asciicast_lines

EXIT_OK, EXIT_BAD = 0, 1
T = TypeVar("T")


def add_recordings_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the ``recordings`` sub-commands under ``sub`` (the top-level subparsers)."""
    rec = sub.add_parser("recordings", help="session recordings").add_subparsers(
        dest="recordings_command", metavar="ACTION", required=True
    )
    p = rec.add_parser("list", parents=[common], help="list recordings, newest first")
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    p.set_defaults(handler=recordings_list)
    p = rec.add_parser("verify", parents=[common], help="check encryption, chain and signature")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("recording_id", nargs="?", metavar="ID", help="one recording")
    which.add_argument("--all", action="store_true", help="every recording in the catalog")
    p.set_defaults(handler=recordings_verify)
    p = rec.add_parser("export", parents=[common], help="export one recording (audited)")
    p.add_argument("recording_id", metavar="ID")
    p.add_argument(
        "--format",
        choices=("asciicast", "raw", "jsonl"),
        default="asciicast",
        help="asciicast v2 .cast (terminal), the raw recorded output bytes, or JSON lines "
        "(a tunnel: the decoded Modbus request/response stream and the gateway's decisions)",
    )
    p.add_argument("--output", default="-", metavar="FILE", help="file or - for stdout")
    p.set_defaults(handler=recordings_export)
    p = rec.add_parser("search", parents=[common], help="find words in terminal output")
    p.add_argument("query", nargs="+", metavar="WORD")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(handler=recordings_search)
    p = rec.add_parser("retention", parents=[common], help="delete expired recordings now")
    p.set_defaults(handler=recordings_retention)


def _with_service(args: argparse.Namespace, work: Callable[[RecordingService], Awaitable[T]]) -> T:
    from gateway.services import utc_now

    settings = settings_from(args)
    keys = load_keyring(settings)

    async def run() -> T:
        engine = make_engine(settings)
        try:
            await migrate.require_current(engine)
            sessions = make_sessionmaker(engine)
            audit = AuditLog(sessions, keys.signing_key, utc_now)
            return await work(
                RecordingService.from_settings(settings, keys, sessions, utc_now, audit)
            )
        finally:
            await engine.dispose()

    try:
        return run_db(run)
    except RecordingMissing as exc:
        raise ConduitError(f"no recording {exc}") from None
    except ValueError as exc:  # an id that is not 32 hex digits
        raise ConduitError(str(exc)) from None


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


def describe(result: VerifyResult) -> str:
    """``intact (format 2, BLAKE3; ...)`` / ``tampered (chunk 3: ...; format 2, BLAKE3)`` /
    ``truncated (...)`` / ``incomplete (...)``: the verdict, then the container format and
    the hash of its chain (when the header could be read)."""
    fmt = (
        f"format {result.format_version}, {result.chain_hash_name}"
        if result.format_version is not None
        else "format unknown"
    )
    if result.status is Integrity.TAMPERED:
        where = (
            f"chunk {result.tampered_chunk}"
            if result.tampered_chunk is not None
            else result.location or "unknown"
        )
        return f"tampered ({where}: {result.detail}; {fmt})"
    if result.status is Integrity.INTACT:
        return f"intact ({fmt}; {result.intact_chunks} chunks, end reason {result.end_reason})"
    return f"{result.status} ({result.detail}; {fmt})"


# Summary order; only "intact" and "open" (still being written) are not problems.
VERDICTS = ("intact", "open", "tampered", "truncated", "incomplete", "missing")


def recordings_verify(args: argparse.Namespace) -> int:
    async def work(service: RecordingService) -> int:
        entries = (
            list(reversed(await service.entries()))
            if args.all
            else [await service.entry(args.recording_id)]
        )
        bad: list[str] = []
        counts = dict.fromkeys(VERDICTS, 0)
        for index, entry in enumerate(entries, 1):
            try:
                result = await service.verify(entry.id)
            except RecordingMissing:
                verdict, line = "missing", "missing (file not found)"
            else:
                verdict, line = _verdict(entry.state, result)
            counts[verdict] += 1
            if verdict not in ("intact", "open"):
                bad.append(entry.id)
            prefix = f"[{index}/{len(entries)}] " if args.all else ""
            print(f"{prefix}{entry.id} {line}", flush=True)
        await service.audit.record(
            actor=_actor(),
            action="recording.verify",
            result="success" if not bad else "failure",
            detail={"checked": len(entries), "bad": bad[:50]},
        )
        if args.all:
            tally = ", ".join(f"{n} {verdict}" for verdict, n in counts.items() if n)
            print(
                f"verified {len(entries)} recording(s), {len(bad)} with problems"
                + (f": {tally}" if tally else "")
            )
        return EXIT_BAD if bad else EXIT_OK

    return _with_service(args, work)


def _verdict(state: str, result: VerifyResult) -> tuple[str, str]:
    """The word counted in the summary and the line printed for one recording."""
    if state == "open" and result.status is Integrity.INCOMPLETE and result.end_reason is None:
        return "open", f"open (still recording; {result.intact_chunks} chunk(s) authenticate)"
    return str(result.status), describe(result)


def recordings_list(args: argparse.Namespace) -> int:
    async def work(service: RecordingService) -> int:
        entries = await service.entries(limit=args.limit)
        # OUTPUT: the session's recorded bytes; STORED: the file (format 2 compresses, so
        # STORED is usually far smaller for terminal text). "-": not known (crash recovery,
        # or recorded by an older release).
        print(
            f"{'ID':32} {'STARTED (UTC)':19} {'USER':16} {'ASSET':20} {'OUTPUT':>12} "
            f"{'STORED':>12} STATE/INTEGRITY"
        )
        for e in entries:
            started = e.started_at.strftime("%Y-%m-%d %H:%M:%S")
            state = e.state if e.state == "open" else f"{e.end_reason}/{e.integrity}"
            output = "-" if e.output_bytes is None else str(e.output_bytes)
            print(
                f"{e.id:32} {started:19} {e.username[:16]:16} {e.asset[:20]:20} "
                f"{output:>12} {e.size_bytes:>12} {state}"
            )
        status = await quota_status(service.sessions, service.quota_bytes)
        print(f"storage: {status.describe()}", file=sys.stderr)
        return EXIT_OK

    return _with_service(args, work)


def _open_output(path: str, binary: bool) -> IO[Any]:
    if path == "-":
        return sys.stdout.buffer if binary else sys.stdout
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    return os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8")


def _export(service: RecordingService, stream: BinaryIO, fmt: str, out: IO[Any]) -> VerifyResult:
    """Two passes: verify (for the header and verdict), then write what authenticated."""
    first = RecordingReader(stream, service.data_keys.resolve, service.verify_keys)
    for _ in first.chunks():
        pass
    result = first.result
    if result is None or result.header is None:
        raise ConduitError("recording has no readable header: nothing to export")
    stream.seek(0)
    reader = RecordingReader(stream, service.data_keys.resolve, service.verify_keys)
    header: Header = result.header
    if fmt == "asciicast":
        if header.kind != "terminal":
            raise ConduitError(f"a {header.kind} recording cannot be exported as asciicast")
        out.writelines(asciicast_lines(header, reader.events()))
    elif fmt == "jsonl":
        if header.kind != "tunnel":
            raise ConduitError(f"a {header.kind} recording cannot be exported as jsonl")
        out.writelines(jsonl_lines(header.metadata.get("protocol", ""), reader.events()))
    else:
        terminal = header.kind == "terminal"
        for event in reader.events():
            if not terminal or event.type == TerminalEvent.OUTPUT:
                out.write(event.payload)
    out.flush()
    return result


def recordings_export(args: argparse.Namespace) -> int:
    async def work(service: RecordingService) -> VerifyResult:
        async with service.open_for_reading(
            args.recording_id, actor=_actor(), purpose="download"
        ) as (entry, stream):
            out = _open_output(args.output, binary=args.format == "raw")
            try:
                result = await asyncio.to_thread(_export, service, stream, args.format, out)
            finally:
                if args.output != "-":
                    out.close()
        return judged_closed(result, entry.end_reason) if entry.state == "closed" else result

    result = _with_service(args, work)
    print(f"exported {args.recording_id} as {args.format}: {describe(result)}", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_BAD


def recordings_search(args: argparse.Namespace) -> int:
    async def work(service: RecordingService) -> int:
        hits = await service.search(" ".join(args.query), actor=_actor(), limit=args.limit)
        for hit in hits:
            print(f"{hit.recording_id} {hit.offset_seconds:10.3f}s {hit.snippet}")
        print(f"{len(hits)} hit(s)", file=sys.stderr)
        return EXIT_OK

    return _with_service(args, work)


def recordings_retention(args: argparse.Namespace) -> int:
    async def work(service: RecordingService) -> int:
        days = settings_from(args).recordings.retention_days
        report = await apply_retention(service, days, actor=_actor())
        for recording_id in report.deleted:
            print(f"deleted {recording_id}")
        for recording_id, error in report.failed:
            print(f"FAILED {recording_id}: {error}")
        status = await quota_status(service.sessions, service.quota_bytes)
        print(f"storage: {status.describe()}", file=sys.stderr)
        return EXIT_BAD if report.failed else EXIT_OK

    return _with_service(args, work)
