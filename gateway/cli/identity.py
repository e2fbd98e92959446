"""``conduit user ...`` and ``conduit token create``: the handlers, and the parsers they expect.

``add_user_commands`` adds add/invite/disable/enable/unlock/reset-mfa under the existing
``user`` group; ``add_token_commands`` adds the ``token`` group. Secrets made here (TOTP
secret, links, tokens, recovery codes) go to stdout or the named 0600 file, never to logs.
Every change is audited with actor ``cli``. The work is ``gateway.identity``'s.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit import AuditLog
from gateway.cli.common import run_db, settings_from
from gateway.config import Settings
from gateway.db import migrate
from gateway.db.engine import make_engine, make_sessionmaker
from gateway.errors import ConduitError
from gateway.identity import onboarding, tokens
from gateway.identity.accounts import create_user
from gateway.identity.codes import replace_recovery_codes
from gateway.identity.passwords import PasswordPolicy
from gateway.identity.totp import new_totp_secret
from gateway.keys import KeyRing, load_keyring, write_private_file
from gateway.services import utc_now

T = TypeVar("T")
ACTOR = "cli"
Work = Callable[[AsyncSession, KeyRing], Awaitable[T]]


class CommittedUnaudited(ConduitError):
    """The database change committed, then the audit event failed: the operator must know."""


def add_user_commands(
    user: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the account commands under the ``user`` sub-parsers (``list`` stays in cli)."""
    p = user.add_parser("add", parents=[common], help="create an account (scripted)")
    p.add_argument("name")
    p.add_argument("--role", action="append", required=True, help="repeat for several")
    p.add_argument("--org", default="", help="vendor organisation")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("--totp-secret-file", type=Path, metavar="FILE", help="write TOTP secret (0600)")
    p.set_defaults(handler=cmd_user_add)
    p = user.add_parser("invite", parents=[common], help="create an account, print its link")
    p.add_argument("name")
    p.add_argument("--role", action="append", required=True, help="repeat for several")
    p.add_argument("--org", default="", help="vendor organisation")
    p.set_defaults(handler=cmd_user_invite)
    for name, handler, text in (
        ("disable", cmd_user_disable, "disable an account and end its sessions"),
        ("enable", cmd_user_enable, "enable a disabled account"),
        ("unlock", cmd_user_unlock, "clear a lockout"),
        ("reset-mfa", cmd_user_reset_mfa, "drop TOTP and recovery codes, print a new link"),
    ):
        p = user.add_parser(name, parents=[common], help=text)
        p.add_argument("name")
        p.set_defaults(handler=handler)


def add_token_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    token = sub.add_parser("token", help="API tokens").add_subparsers(
        dest="token_command", metavar="ACTION", required=True
    )
    p = token.add_parser("create", parents=[common], help="create an API token (shown once)")
    p.add_argument("--user", required=True)
    p.add_argument("--scope", action="append", required=True, help="repeat for several")
    p.add_argument("--days", type=int, default=30)
    p.set_defaults(handler=cmd_token_create)


def _run(settings: Settings, work: Work[T], audit: Callable[[T], dict[str, Any]] | None) -> T:
    """Run ``work`` in one transaction, then write its audit event (after the commit)."""
    keys = load_keyring(settings)

    async def run() -> T:
        engine = make_engine(settings)
        try:
            await migrate.require_current(engine)
            sessions = make_sessionmaker(engine)
            async with sessions() as db, db.begin():
                result = await work(db, keys)
            if audit is not None:
                log = AuditLog(sessions, keys.signing_key, utc_now)
                try:
                    await log.record(actor=ACTOR, result="success", source="cli", **audit(result))
                except Exception as exc:
                    raise CommittedUnaudited(
                        "the change was made but its audit event could not be written",
                        f"{type(exc).__name__}: {exc}",
                    ) from exc
            return result
        finally:
            await engine.dispose()

    return run_db(run)


def _read_password() -> str:
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def cmd_user_add(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    password: str | None = None
    secret_file: Path | None = args.totp_secret_file
    if args.password_stdin:
        if args.totp_secret_file is None:
            raise ConduitError("--password-stdin needs --totp-secret-file (the second factor)")
        password = _read_password()
        PasswordPolicy.from_settings(settings.passwords).check(password, args.name)
    elif args.totp_secret_file is not None:
        raise ConduitError("--totp-secret-file needs --password-stdin (or use user invite)")
    secret = new_totp_secret() if password is not None else None
    if secret is not None and secret_file is not None:
        # Written first (O_EXCL, 0600): if the database step then fails, an orphan secret
        # file is harmless and removed; the reverse order could leave an account whose
        # second factor nobody holds.
        if secret_file.exists():
            raise ConduitError(f"{secret_file} exists: choose a new file")
        write_private_file(secret_file, (secret + "\n").encode(), force=False)

    async def work(db: AsyncSession, keys: KeyRing) -> tuple[str, list[str]]:
        now = utc_now()
        if password is None:
            user, link = await onboarding.invite_user(
                db, args.name, args.role, now, keys.master_key, args.org
            )
            return link.url(settings.portal_url), []
        user = await create_user(
            db, username=args.name, roles=args.role, now=now, master_key=keys.master_key,
            password=password, totp_secret=secret, status="active", organisation=args.org,
        )  # fmt: skip
        return "", await replace_recovery_codes(db, user.id, now)

    try:
        link, codes = _run(
            settings,
            work,
            lambda _r: {
                "action": "user.create",
                "target": args.name,
                "detail": {"roles": args.role},
            },
        )
    except CommittedUnaudited:
        raise  # the account exists: keep its secret file
    except BaseException:
        if secret_file is not None and secret is not None:
            secret_file.unlink(missing_ok=True)
        raise
    if secret is not None and secret_file is not None:
        print(f"user {args.name} active; TOTP secret written to {secret_file}")
        print("recovery codes (shown once):")
        for code in codes:
            print(f"  {code}")
    else:
        print(f"user {args.name} invited; enrolment link (valid 3 days):")
        print(f"  {link}")
    return 0


def cmd_user_invite(args: argparse.Namespace) -> int:
    settings = settings_from(args)

    async def work(db: AsyncSession, keys: KeyRing) -> str:
        _user, link = await onboarding.invite_user(
            db, args.name, args.role, utc_now(), keys.master_key, args.org
        )
        return link.url(settings.portal_url)

    link = _run(
        settings,
        work,
        lambda _r: {"action": "user.invite", "target": args.name, "detail": {"roles": args.role}},
    )
    print(f"enrolment link for {args.name} (valid 3 days):")
    print(f"  {link}")
    return 0


def _status_change(args: argparse.Namespace, status: str) -> int:
    async def work(db: AsyncSession, _keys: KeyRing) -> None:
        await onboarding.set_status(db, args.name, status, utc_now())

    action = "user.disable" if status == "disabled" else "user.enable"
    _run(settings_from(args), work, lambda _r: {"action": action, "target": args.name})
    print(f"user {args.name} {status}")
    return 0


def cmd_user_disable(args: argparse.Namespace) -> int:
    return _status_change(args, "disabled")


def cmd_user_enable(args: argparse.Namespace) -> int:
    return _status_change(args, "active")


def cmd_user_unlock(args: argparse.Namespace) -> int:
    async def work(db: AsyncSession, _keys: KeyRing) -> None:
        await onboarding.unlock_user(db, args.name)

    _run(settings_from(args), work, lambda _r: {"action": "account.unlock", "target": args.name})
    print(f"user {args.name} unlocked")
    return 0


def cmd_user_reset_mfa(args: argparse.Namespace) -> int:
    settings = settings_from(args)

    async def work(db: AsyncSession, _keys: KeyRing) -> str:
        _user, link = await onboarding.reset_mfa(db, args.name, utc_now())
        return link.url(settings.portal_url)

    link = _run(settings, work, lambda _r: {"action": "mfa.reset", "target": args.name})
    print(f"MFA of {args.name} reset; the user enrols again through (valid 3 days):")
    print(f"  {link}")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    async def work(db: AsyncSession, _keys: KeyRing) -> tokens.NewToken:
        user = await onboarding.find_user(db, args.user)
        return await tokens.create_token(db, user.id, args.scope, args.days, utc_now())

    new = _run(
        settings_from(args),
        work,
        lambda t: {
            "action": "token.create",
            "target": f"token:{t.token_id}",
            "detail": {"user": args.user, "scopes": sorted(set(args.scope)), "days": args.days},
        },
    )
    print(f"token {new.token_id} for {args.user}, expires {new.expires_at:%Y-%m-%d %H:%M UTC}:")
    print(new.token)
    return 0
