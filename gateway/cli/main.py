"""``conduit ...``: the command tree. Every admin action is a command, so installs script.

Each command accepts ``--config F`` and ``--data-dir D`` after its name. Errors are one line
on stderr (``conduit: ...``) and a non-zero exit; no tracebacks for operator mistakes. A
reader that leaves (``| head``) ends any command quietly with status 141 (128 + SIGPIPE).
The commands' work lives in the modules they call; this file only parses and prints.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway import __version__
from gateway.cli.common import common_parser
from gateway.errors import ConduitError, ConfigError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
EXIT_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a tool its reader left

Handler = Callable[[argparse.Namespace], int]


def _listen_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--portal-listen", metavar="HOST:PORT", help="portal address")
    parser.add_argument("--ssh-listen", metavar="HOST:PORT", help="SSH listener address")


def _worker_count(text: str) -> int:
    from gateway.cli.supervisor import MAX_WORKERS

    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to {MAX_WORKERS}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    # Imported here so `conduit --help` stays fast and import errors name the command.
    from gateway.cli import node as commands
    from gateway.cli.audit import add_audit_commands
    from gateway.cli.authz import add_authz_commands
    from gateway.cli.identity import add_token_commands, add_user_commands
    from gateway.cli.nodes import add_nodes_commands
    from gateway.cli.recordings import add_recordings_commands
    from gateway.cli.sessions import add_sessions_commands
    from gateway.cli.ssh_cert import add_ssh_cert_commands

    common = common_parser()
    parser = argparse.ArgumentParser(prog="conduit", description="Conduit OT access gateway")
    parser.add_argument("--version", action="version", version=f"conduit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("init", parents=[common], help="create data directory and keys")
    p.add_argument("--force", action="store_true", help="replace existing keys (dangerous)")
    p.set_defaults(handler=commands.cmd_init)

    p = sub.add_parser("serve", parents=[common], help="run the gateway")
    _listen_flags(p)
    p.add_argument(
        "--workers",
        type=_worker_count,
        metavar="N",
        help="worker processes sharing the ports (default: server.workers; 0: one per CPU on "
        "PostgreSQL; SQLite runs one)",
    )
    # Internal: how the supervisor starts worker K (gateway/cli/supervisor.py).
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    p.set_defaults(handler=commands.cmd_serve)

    p = sub.add_parser("demo", parents=[common], help="run a demo site on embedded defaults")
    _listen_flags(p)
    p.add_argument(
        "--target-listen", metavar="HOST:PORT", help="the simulated demo device (loopback)"
    )
    p.set_defaults(handler=commands.cmd_demo, data_dir_default=Path("conduit-demo"))

    db = sub.add_parser("db", help="database schema").add_subparsers(
        dest="db_command", metavar="ACTION", required=True
    )
    p = db.add_parser("upgrade", parents=[common], help="apply pending migrations")
    p.set_defaults(handler=commands.cmd_db_upgrade)
    p = db.add_parser("current", parents=[common], help="show the schema revision")
    p.set_defaults(handler=commands.cmd_db_current)

    cfg = sub.add_parser("config", help="configuration").add_subparsers(
        dest="config_command", metavar="ACTION", required=True
    )
    p = cfg.add_parser("check", parents=[common], help="validate and print effective settings")
    p.set_defaults(handler=commands.cmd_config_check)

    user = sub.add_parser("user", help="accounts").add_subparsers(
        dest="user_command", metavar="ACTION", required=True
    )
    p = user.add_parser("list", parents=[common], help="list accounts")
    p.set_defaults(handler=commands.cmd_user_list)
    add_user_commands(user, common)
    add_token_commands(sub, common)
    p = user.add_parser("enroll-admin", parents=[common], help="print a fresh admin enrolment link")
    p.set_defaults(handler=commands.cmd_user_enroll_admin)

    add_audit_commands(sub, common)
    add_authz_commands(sub, common)
    add_nodes_commands(sub, common)
    add_recordings_commands(sub, common)
    add_sessions_commands(sub, common)
    add_ssh_cert_commands(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Everything Conduit writes (database, recordings, keys, logs) is private to its user.
    os.umask(0o077)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "data_dir", None) is None and getattr(args, "data_dir_default", None):
        args.data_dir = args.data_dir_default
    handler: Handler = args.handler
    try:
        code = handler(args)
        sys.stdout.flush()  # a reader that left shows here at the latest, not at exit
        return code
    except BrokenPipeError:
        _drop_stdout()
        return EXIT_PIPE
    except ConfigError as exc:
        print(exc.message, file=sys.stderr)
        return EXIT_USAGE
    except ConduitError as exc:
        print(f"conduit: {exc.message}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return EXIT_FAIL


def _drop_stdout() -> None:
    """Our reader left (``conduit ... | head``): end quietly, as a Unix tool does.

    Output still buffered would fail again when Python flushes at exit and print
    "Exception ignored"; pointing stdout at /dev/null lets that flush succeed silently.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
