"""``conduit ssh-cert``: an SSH user certificate for a registered key, after password + code.

``conduit ssh-cert --user alice --key ~/.ssh/id_ed25519.pub`` prompts for the password and
the verification code; ``--password-stdin`` reads the password from stdin's first line and
``--code-stdin`` the code from the next one, for scripts. Neither is ever taken from argv,
where any local user could read it (``ps``), so ``--code CODE`` is refused. It checks them with
the shared ``Authenticator`` (a failure counts toward the lockout, as in the portal and over
SSH), and writes the certificate beside the key as ``id_ed25519-cert.pub`` (0644), where
OpenSSH finds it by itself. ``--list`` shows the register of issued certificates. The work
is ``gateway.identity.ssh_certs``'s; this module parses, prompts and prints.
"""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import sys
from pathlib import Path

from gateway.cli.common import with_services
from gateway.errors import ConduitError
from gateway.identity.ssh_access import MAX_KEY_LINE, parse_public_key
from gateway.identity.ssh_certs import IssuedCertificate, issue_audited, list_certificates
from gateway.services import Services

SOURCE = "cli"


def add_ssh_cert_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "ssh-cert", parents=[common], help="SSH user certificate for a registered key (MFA)"
    )
    p.add_argument("--user", help="the account (required to issue)")
    p.add_argument("--key", type=Path, metavar="PATH.pub", help="a public key registered to it")
    p.add_argument("--out", type=Path, metavar="FILE", help="default: PATH-cert.pub")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument(
        "--code-stdin",
        action="store_true",
        help="read the verification code from stdin (after the password with --password-stdin)",
    )
    # Refused with a clear message rather than unknown: a code in argv is visible to every
    # local user for as long as the command runs.
    p.add_argument("--code", help=argparse.SUPPRESS)
    p.add_argument("--list", action="store_true", help="list issued certificates (of --user)")
    p.set_defaults(handler=cmd_ssh_cert)


def default_cert_path(key: Path) -> Path:
    """OpenSSH's name for the certificate of ``id_ed25519.pub``: ``id_ed25519-cert.pub``."""
    stem = key.name.removesuffix(".pub")
    return key.with_name(f"{stem}-cert.pub")


def _read_key(path: Path) -> str:
    try:
        with path.open("r", encoding="ascii", errors="replace") as fh:
            text = fh.read(MAX_KEY_LINE + 1)
    except OSError as exc:
        raise ConduitError(f"cannot read {path}: {exc.strerror}") from None
    parse_public_key(text)  # a clear message before asking for a password
    return text


def _read_secret(from_stdin: bool, prompt: str) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    return getpass.getpass(prompt)


def write_certificate(path: Path, text: str) -> None:
    """Write ``text`` as ``path`` (0644, public) atomically, replacing an older certificate."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        os.fchmod(fd, 0o644)  # the umask is 077 for everything else conduit writes
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def cmd_ssh_cert(args: argparse.Namespace) -> int:
    if args.list:
        return _list(args)
    if args.user is None or args.key is None:
        raise ConduitError("ssh-cert needs --user and --key (or --list)")
    if args.code is not None:
        raise ConduitError(
            "--code would show the code to every local user (ps): use the prompt or --code-stdin"
        )
    line = _read_key(args.key)
    out: Path = args.out or default_cert_path(args.key)
    password = _read_secret(args.password_stdin, "Password: ")
    code = _read_secret(args.code_stdin, "Verification code: ")

    async def work(services: Services) -> IssuedCertificate:
        now = services.clock()
        identity = await services.authenticator.verify_password_and_code(
            args.user, password, code, SOURCE, SOURCE, now
        )
        return await issue_audited(
            services.sessions,
            services.audit,
            services.keys.ssh_user_ca,
            identity.user_id,
            identity.username,
            public_key=line,
            now=now,
            hours=services.settings.ssh.certificate_hours,
            via=SOURCE,
            source=SOURCE,
        )

    issued = with_services(args, work)
    try:
        write_certificate(out, issued.text)
    except OSError as exc:
        raise ConduitError(
            f"certificate {issued.key_id} issued but not written to {out}: {exc.strerror}"
        ) from None
    print(f"certificate {issued.key_id} written to {out}")
    print(f"valid until {issued.valid_before:%Y-%m-%d %H:%M UTC} for key {issued.fingerprint}")
    return 0


def _list(args: argparse.Namespace) -> int:
    async def work(services: Services) -> list[tuple[str, ...]]:
        async with services.sessions() as db:
            rows = await list_certificates(db, args.user)
        return [
            (str(r.serial), r.username, f"{r.issued_at:%Y-%m-%d %H:%M}",
             f"{r.valid_before:%Y-%m-%d %H:%M}", r.issued_via, r.key_fingerprint)
            for r in rows
        ]  # fmt: skip

    rows = with_services(args, work)
    print(f"{'SERIAL':20} {'USER':16} {'ISSUED (UTC)':17} {'VALID UNTIL':17} {'VIA':6} KEY")
    for serial, user, issued, until, via, fingerprint in rows:
        print(f"{serial:20} {user:16} {issued:17} {until:17} {via:6} {fingerprint}")
    return 0
