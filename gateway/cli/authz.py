"""``conduit asset|zone|grant|request|access ...``: authorization from the command line.

Parsers and handlers only; the work is ``gateway.authz``'s. Admin commands run as the
operator (recorded as actor ``cli:<login>`` in the audit log); ``request approve|deny`` act
for the approver named with ``--as``, whose ``approve`` permission is checked like in the
portal. Times print in UTC ISO 8601.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import json
import sys
from pathlib import Path

from gateway import vault
from gateway.authz import certificates, hostkeys
from gateway.authz.tables import Asset, modbus_port_of
from gateway.cli.common import with_services
from gateway.desktop import rdpcert, vnc
from gateway.errors import ConduitError
from gateway.services import Services
from rbac.errors import RbacError
from rbac.names import ACCOUNT_ACTIONS, with_account
from rbac.windows import parse_instant

Sub = argparse._SubParsersAction  # argparse has no public name for it


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def _iso(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if value else "-"


def _time(text: str | None) -> dt.datetime | None:
    if text is None:
        return None
    try:
        return parse_instant(text)
    except RbacError as exc:
        raise ConduitError(exc.message) from None


def _run(args: argparse.Namespace, work: object) -> int:
    try:
        return with_services(args, work)  # type: ignore[arg-type]
    except RbacError as exc:
        print(f"conduit: {exc.message}", file=sys.stderr)
        return 1


def add_authz_commands(sub: Sub[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    asset = sub.add_parser("asset", help="assets").add_subparsers(
        dest="asset_command", metavar="ACTION", required=True
    )
    p = asset.add_parser("add", parents=[common], help="add an asset")
    p.add_argument("name")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--protocol", choices=("ssh", "vnc", "rdp", "modbus"), required=True)
    p.add_argument(
        "--modbus-port",
        type=int,
        metavar="PORT",
        help="a Modbus/TCP port of an asset of another protocol (its tunnels are Modbus-aware)",
    )
    p.add_argument("--zone", action="append", default=[], help="zone (repeatable)")
    p.add_argument("--max-request-hours", type=int, default=8)
    p.add_argument(
        "--no-input-recording",
        action="store_true",
        help="record output only (keystrokes are not recorded)",
    )
    p.set_defaults(handler=cmd_asset_add)
    p = asset.add_parser("list", parents=[common], help="list assets")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(handler=cmd_asset_list)
    p = asset.add_parser("credential", parents=[common], help="vault the target credential")
    p.add_argument("name")
    p.add_argument("--username", required=True, help="account name on the target")
    p.add_argument("--account", default="default", help="routing name (user+asset+account)")
    secret = p.add_mutually_exclusive_group(required=True)
    secret.add_argument("--password-stdin", action="store_true", help="read the password")
    secret.add_argument("--key-file", type=Path, help="unencrypted private key file")
    p.set_defaults(handler=cmd_asset_credential)
    p = asset.add_parser("pin-hostkey", parents=[common], help="pin the target's SSH host key")
    p.add_argument("name")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--scan", action="store_true", help="read the key from the target now")
    how.add_argument("--key", metavar="LINE", help="a public key or known_hosts line")
    p.add_argument("--replace", action="store_true", help="drop the keys pinned before")
    p.set_defaults(handler=cmd_asset_pin_hostkey)
    p = asset.add_parser(
        "pin-cert", parents=[common], help="pin an RDP or VNC target's TLS certificate"
    )
    p.add_argument("name")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--scan", action="store_true", help="read the certificate from the target now")
    how.add_argument(
        "--fingerprint", metavar="HEX", help="its SHA-256 fingerprint (hex, colons ok)"
    )
    p.add_argument("--replace", action="store_true", help="drop the certificates pinned before")
    p.set_defaults(handler=cmd_asset_pin_cert)

    zone = sub.add_parser("zone", help="zones").add_subparsers(
        dest="zone_command", metavar="ACTION", required=True
    )
    p = zone.add_parser("add", parents=[common], help="add a zone")
    p.add_argument("name")
    p.add_argument("--parent")
    p.add_argument("--approvals", type=int, default=1, help="approvals a request needs (N of M)")
    p.add_argument("--max-request-hours", type=int)
    p.set_defaults(handler=cmd_zone_add)

    grant = sub.add_parser("grant", help="standing grants and denies").add_subparsers(
        dest="grant_command", metavar="ACTION", required=True
    )
    p = grant.add_parser("add", parents=[common], help="grant (or deny) access")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user")
    who.add_argument("--org")
    who.add_argument("--role")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--asset")
    what.add_argument("--zone")
    p.add_argument("--action", required=True, help="ssh, sftp-read, tunnel:502, approve, ...")
    p.add_argument(
        "--account",
        metavar="NAME",
        help="for ssh/sftp-read/sftp-write: the vaulted account it covers (default: the asset's "
        "default account only)",
    )
    p.add_argument("--schedule", help='e.g. "Mon-Fri 07:00-17:00 Europe/Berlin"')
    p.add_argument("--from", dest="valid_from", metavar="T", help="ISO 8601 with offset")
    p.add_argument("--until", dest="valid_until", metavar="T", help="ISO 8601 with offset")
    p.add_argument("--deny", action="store_true", help="an explicit deny (overrides allows)")
    p.set_defaults(handler=cmd_grant_add)
    p = grant.add_parser("list", parents=[common], help="list grants")
    p.add_argument("--all", action="store_true", help="include revoked grants")
    p.set_defaults(handler=cmd_grant_list)
    p = grant.add_parser("revoke", parents=[common], help="revoke a grant")
    p.add_argument("grant_id")
    p.set_defaults(handler=cmd_grant_revoke)

    request = sub.add_parser("request", help="access requests").add_subparsers(
        dest="request_command", metavar="ACTION", required=True
    )
    p = request.add_parser("list", parents=[common], help="list requests")
    p.add_argument(
        "--state", choices=("pending", "approved", "denied", "cancelled", "expired", "revoked")
    )
    p.set_defaults(handler=cmd_request_list)
    for name in ("approve", "deny"):
        p = request.add_parser(name, parents=[common], help=f"{name} a request")
        p.add_argument("request_id")
        p.add_argument("--as", dest="approver", required=True, help="the approver's username")
        p.add_argument("--comment", default="")
        p.set_defaults(handler=cmd_request_answer, answer=name)

    access = sub.add_parser("access", help="explain decisions").add_subparsers(
        dest="access_command", metavar="ACTION", required=True
    )
    p = access.add_parser("check", parents=[common], help="may USER do ACTION on ASSET?")
    p.add_argument("user")
    p.add_argument("asset")
    p.add_argument("action")
    p.add_argument("--at", metavar="T", help="ISO 8601 instant (default: now)")
    p.set_defaults(handler=cmd_access_check)


def cmd_asset_add(args: argparse.Namespace) -> int:
    async def work(services: Services) -> int:
        await services.authz.add_asset(
            args.name,
            args.host,
            args.port,
            args.protocol,
            actor=_actor(),
            zones=tuple(args.zone),
            max_request_hours=args.max_request_hours,
            record_input=not args.no_input_recording,
            modbus_port=args.modbus_port,
        )
        print(f"asset {args.name} added")
        return 0

    return _run(args, work)


def asset_record(asset: Asset, zones: list[str]) -> dict[str, object]:
    """An asset as ``asset list --json`` prints it, passive inventory included."""
    seen = asset.ot_seen_at
    return {
        "name": asset.name, "host": asset.host, "port": asset.port,
        "protocol": asset.protocol, "zones": zones, "disabled": bool(asset.disabled),
        "modbus_port": modbus_port_of(asset), "ot_vendor": asset.ot_vendor,
        "ot_product": asset.ot_product, "ot_revision": asset.ot_revision,
        "ot_seen_at": seen.isoformat() if seen else None,
    }  # fmt: skip


def cmd_asset_list(args: argparse.Namespace) -> int:
    async def work(services: Services) -> int:
        listed = await services.authz.list_assets()
        if args.json:
            for asset, zones in listed:
                print(json.dumps(asset_record(asset, zones), sort_keys=True))
            return 0
        print(f"{'NAME':24} {'PROTOCOL':8} {'ADDRESS':28} {'ZONES':20} DEVICE")
        for asset, zones in listed:
            address = f"{asset.host}:{asset.port}"
            device = " ".join(
                v for v in (asset.ot_vendor, asset.ot_product, asset.ot_revision) if v
            )
            print(f"{asset.name:24} {asset.protocol:8} {address:28} {','.join(zones):20} {device}")
        return 0

    return _run(args, work)


def cmd_asset_credential(args: argparse.Namespace) -> int:
    if args.password_stdin:
        password: str | None = sys.stdin.readline().rstrip("\r\n")
        key: bytes | None = None
    else:
        password, key = None, args.key_file.read_bytes()

    async def work(services: Services) -> int:
        async with services.sessions() as db, db.begin():
            if (await services.authz.asset(db, args.name)) is None:
                raise ConduitError(f"asset {args.name} does not exist")
            await vault.set_credential(
                db,
                services.keys.master_key,
                asset=args.name,
                account=args.account,
                username=args.username,
                password=password,
                private_key=key,
                now=services.clock(),
                actor=_actor(),
            )
        await services.audit.record(
            actor=_actor(),
            action="credential.set",
            result="success",
            target=args.name,
            detail={"account": args.account, "target_user": args.username},
        )
        print(f"credential for {args.name} ({args.account}) stored")
        return 0

    return _run(args, work)


def cmd_asset_pin_hostkey(args: argparse.Namespace) -> int:
    async def work(services: Services) -> int:
        async with services.sessions() as db:
            row = await services.authz.asset(db, args.name)
        if row is None:
            raise ConduitError(f"asset {args.name} does not exist")
        if args.scan:
            async with asyncio.timeout(15):
                key = await hostkeys.scan(row.host, row.port)
        else:
            key = hostkeys.parse_key_line(args.key)
        async with services.sessions() as db, db.begin():
            if args.replace:
                await hostkeys.unpin_all(db, args.name)
            fingerprint = await hostkeys.pin(
                db, args.name, key, actor=_actor(), now=services.clock()
            )
        await services.audit.record(
            actor=_actor(),
            action="hostkey.pinned",
            result="success",
            target=args.name,
            detail={"fingerprint": fingerprint, "replace": args.replace},
        )
        print(f"pinned {fingerprint} for {args.name}")
        return 0

    return _run(args, work)


def cmd_asset_pin_cert(args: argparse.Namespace) -> int:
    """Pin a desktop target's certificate: read once from the target (``--scan``, trust on
    first use by the person running it) or as given from the target's own console."""
    if args.fingerprint is not None:
        certificates.normalize(args.fingerprint)  # refused before anything is opened

    async def work(services: Services) -> int:
        async with services.sessions() as db:
            row = await services.authz.asset(db, args.name)
        if row is None:
            raise ConduitError(f"asset {args.name} does not exist")
        if row.protocol not in ("rdp", "vnc"):
            raise ConduitError(
                f"asset {args.name} is {row.protocol}: certificates are pinned for rdp and vnc "
                "assets (ssh assets pin host keys: conduit asset pin-hostkey)"
            )
        if args.scan:
            if row.protocol == "rdp":
                found = await rdpcert.scan_certificate(row.host, row.port)
            else:
                target = vnc.VncTarget(host=row.host, port=row.port, label=f"asset:{args.name}")
                found = await vnc.scan_certificate(target)
        else:
            found = args.fingerprint
        async with services.sessions() as db, db.begin():
            if args.replace:
                await certificates.unpin_all(db, args.name)
            fingerprint = await certificates.pin(
                db, args.name, found, actor=_actor(), now=services.clock()
            )
        await services.audit.record(
            actor=_actor(),
            action="certificate.pinned",
            result="success",
            target=args.name,
            detail={
                "sha256": fingerprint,
                "replace": args.replace,
                "how": "scan" if args.scan else "given",
            },
        )
        print(f"pinned certificate sha256 {fingerprint} for {args.name}")
        return 0

    return _run(args, work)


def cmd_zone_add(args: argparse.Namespace) -> int:
    async def work(services: Services) -> int:
        await services.authz.add_zone(
            args.name,
            actor=_actor(),
            parent=args.parent,
            required_approvals=args.approvals,
            max_request_hours=args.max_request_hours,
        )
        print(f"zone {args.name} added")
        return 0

    return _run(args, work)


def cmd_grant_add(args: argparse.Namespace) -> int:
    subject_kind = "user" if args.user else "org" if args.org else "role"
    object_kind = "asset" if args.asset else "zone"
    valid_from, valid_until = _time(args.valid_from), _time(args.valid_until)
    action = args.action
    if args.account is not None:
        if action not in ACCOUNT_ACTIONS:
            raise ConduitError(f"--account applies to {', '.join(sorted(ACCOUNT_ACTIONS))} only")
        try:
            action = with_account(action, args.account)
        except RbacError as exc:
            raise ConduitError(str(exc)) from None

    async def work(services: Services) -> int:
        grant = await services.authz.add_grant(
            subject_kind=subject_kind,
            subject=args.user or args.org or args.role,
            object_kind=object_kind,
            obj=args.asset or args.zone,
            action=action,
            actor=_actor(),
            schedule=args.schedule,
            valid_from=valid_from,
            valid_until=valid_until,
            effect="deny" if args.deny else "allow",
        )
        print(grant.id)
        return 0

    return _run(args, work)


def cmd_grant_list(args: argparse.Namespace) -> int:
    async def work(services: Services) -> int:
        print(f"{'ID':20} {'EFFECT':6} {'SUBJECT':22} {'OBJECT':22} {'ACTION':12} WHEN")
        for g in await services.authz.list_grants(include_revoked=args.all):
            when = g.schedule or ""
            if g.valid_from or g.valid_until:
                when += f" [{_iso(g.valid_from)}, {_iso(g.valid_until)})"
            if g.revoked_at:
                when += f" revoked {_iso(g.revoked_at)}"
            print(
                f"{g.id:20} {g.effect:6} {g.subject:22} {g.object:22} {g.action:12} "
                f"{when.strip() or 'always'}"
            )
        return 0

    return _run(args, work)


def cmd_grant_revoke(args: argparse.Namespace) -> int:
    async def work(services: Services) -> int:
        await services.authz.revoke_grant(args.grant_id, actor=_actor())
        print(f"grant {args.grant_id} revoked")
        return 0

    return _run(args, work)


def cmd_request_list(args: argparse.Namespace) -> int:
    async def work(services: Services) -> int:
        print(f"{'ID':20} {'STATE':9} {'REQUESTER':14} {'START':21} {'HOURS':5} ASSETS / ACTIONS")
        for r in await services.requests.list_requests(state=args.state):
            hours = r.duration.total_seconds() / 3600
            print(
                f"{r.request_id:20} {r.state.value:9} {r.requester:14} {_iso(r.start):21} "
                f"{hours:5.1f} {','.join(r.assets)} / {','.join(r.actions)}"
            )
        return 0

    return _run(args, work)


def cmd_request_answer(args: argparse.Namespace) -> int:
    async def work(services: Services) -> int:
        answer = services.requests.approve if args.answer == "approve" else services.requests.deny
        result = await answer(args.request_id, args.approver, args.comment)
        print(f"request {result.request_id} is {result.state.value}")
        return 0

    return _run(args, work)


def cmd_access_check(args: argparse.Namespace) -> int:
    at = _time(args.at)

    async def work(services: Services) -> int:
        decision = await services.authz.authorize(args.user, args.asset, args.action, at)
        print(f"{'allowed' if decision.allowed else 'denied'}: {decision.reason}")
        print(f"grant: {decision.grant_id or '-'}")
        until = _iso(decision.valid_until) if decision.valid_until else "never changes"
        print(f"valid_until: {until}")
        return 0 if decision.allowed else 1

    return _run(args, work)
