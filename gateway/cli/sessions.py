"""``conduit sessions list|kill|write-window``: live sessions across every process and node.

A kill is a request stored in the shared table; the node that owns the session ends it within
half a second and audits it. ``write-window`` arms (or with ``--close`` ends) Modbus writes on
a live Modbus session for a few minutes, with a reason (``gateway.sessions.write_windows``);
the owning node applies it within half a second. Does not end sessions itself, except that
``kill --local`` asks this node's serving processes over their control sockets (no database
needed: ``gateway.sessions.local_control``).
"""

from __future__ import annotations

import argparse
import getpass

from gateway.cli.common import settings_from, with_services
from gateway.errors import ConduitError
from gateway.services import Services
from gateway.sessions import local_control, write_windows
from gateway.sessions import store as live_store

Sub = argparse._SubParsersAction  # argparse has no public name for it


def add_sessions_commands(
    sub: Sub[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    sessions = sub.add_parser("sessions", help="live sessions").add_subparsers(
        dest="sessions_command", metavar="ACTION", required=True
    )
    p = sessions.add_parser("list", parents=[common], help="list live sessions")
    p.set_defaults(handler=cmd_sessions_list)
    p = sessions.add_parser("kill", parents=[common], help="end a live session")
    p.add_argument("session_id")
    p.add_argument(
        "--reason",
        default="",
        metavar="TEXT",
        help="a note for the user and the audit log (the end reason is always 'killed')",
    )
    p.add_argument(
        "--local",
        action="store_true",
        help="ask this node's serving processes directly (no database needed; root or the "
        "service user)",
    )
    p.set_defaults(handler=cmd_sessions_kill)
    p = sessions.add_parser(
        "write-window", parents=[common], help="arm Modbus writes on a live Modbus session"
    )
    p.add_argument("session_id")
    p.add_argument("--minutes", type=int, metavar="N", help="how long writes stay armed")
    p.add_argument("--reason", default="", metavar="TEXT", help="why (audited, recorded)")
    p.add_argument("--close", action="store_true", help="end the open window now")
    p.set_defaults(handler=cmd_sessions_write_window)


def cmd_sessions_list(args: argparse.Namespace) -> int:
    async def work(services: Services) -> int:
        async with services.sessions() as db:
            rows = await live_store.listing(db)
        print(
            f"{'SESSION':18} {'USER':14} {'ASSET':20} {'PROTO':6} {'NODE':16} "
            f"{'BYTES UP':>10} {'BYTES DOWN':>10} STARTED (UTC)"
        )
        for r in rows:
            started = r.started_at.strftime("%Y-%m-%dT%H:%M:%SZ")
            state = "  kill requested" if r.kill_reason is not None else ""
            state += f": {r.kill_reason}" if r.kill_reason else ""
            print(
                f"{r.session_id:18} {r.username:14} {r.asset:20} {r.protocol:6} {r.node:16} "
                f"{r.bytes_up:>10} {r.bytes_down:>10} {started}{state}"
            )
        return 0

    return with_services(args, work)


def cmd_sessions_kill(args: argparse.Namespace) -> int:
    note = args.reason  # kept verbatim: the person's text, beside the end reason "killed"
    limit = live_store.KILL_NOTE_MAX
    if note and (not note.strip() or len(note) > limit or not note.isprintable()):
        raise ConduitError(f"--reason must be 1-{limit} printable characters")
    actor = _actor()
    if args.local:
        if not local_control.SESSION_ID.match(args.session_id):
            raise ConduitError(f"no live session {args.session_id} on this node")
        data_dir = settings_from(args).data_dir
        if not local_control.request_kill(data_dir, args.session_id, note):
            raise ConduitError(f"no live session {args.session_id} on this node")
        print(f"session {args.session_id}: ended" + (f": {note}" if note else ""))
        return 0

    async def work(services: Services) -> int:
        async with services.sessions() as db, db.begin():
            marked = await live_store.request_kill(db, args.session_id, note, actor)
        await services.audit.record(
            actor=actor,
            action="session.kill_requested",
            result="success" if marked else "failure",
            target=args.session_id,
            detail={"note": note},
        )
        if not marked:
            raise ConduitError(f"no live session {args.session_id}")
        print(f"session {args.session_id}: kill requested" + (f": {note}" if note else ""))
        return 0

    return with_services(args, work)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def cmd_sessions_write_window(args: argparse.Namespace) -> int:
    actor = _actor()
    if args.close:
        if args.minutes is not None:
            raise ConduitError("--close takes no --minutes")

        async def close(services: Services) -> int:
            closed = await write_windows.close_window(services, args.session_id, actor=actor)
            print(f"session {args.session_id}: {closed} write window(s) closed")
            return 0

        return with_services(args, close)
    try:
        minutes = write_windows.check_minutes(args.minutes if args.minutes is not None else 0)
        reason = write_windows.check_reason(args.reason)
    except ValueError as exc:
        raise ConduitError(f"{exc} (--minutes N --reason TEXT)") from None

    async def arm(services: Services) -> int:
        row = await write_windows.arm_window(
            services, args.session_id, minutes=minutes, reason=reason, actor=actor
        )
        ends = row.ends_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        print(f"session {args.session_id}: writes armed until {ends}")
        return 0

    return with_services(args, arm)
