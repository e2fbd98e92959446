"""The connect page: per asset the user may reach now, a one-time connect code and the exact
OpenSSH command lines (``ssh``, ``scp``, ``sftp``, ``ssh -L``) for this gateway.

Which assets and which commands come from the authorizer's answer (``reachable_now``): an
asset the user cannot reach now gets no entry, so no code and no command. A code is made by
``make_connect_code`` (also behind ``/account/connect-codes``): only for an asset reachable
over SSH now, audited when refused, shown once in the response and never stored in clear,
logged or shown again. The commands carry ``-o PreferredAuthentications=keyboard-interactive``
so the gateway's first prompt (which takes a code) is the first thing OpenSSH asks; see
``docs/decisions/0015-connect-page.md``. Does not decide access and does not log anyone in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import HTMLResponse, Response

from gateway.authz.tables import modbus_port_of
from gateway.errors import ConduitError
from gateway.identity import ssh_access
from gateway.web.auth import PortalContext, services_of, source_of
from gateway.web.layout import page, sign_in_redirect
from gateway.web.portal_forms import signed_in, signed_in_post
from rbac.modbus import is_modbus_action
from rbac.names import ACCOUNT_RE, DEFAULT_ACCOUNT, DESKTOP_ACTIONS, TUNNEL_RE, account_of
from rbac.roles import SiteAction

router = APIRouter(include_in_schema=False)
Session = Annotated[PortalContext, Depends(signed_in_post)]
AssetName = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")]

# keyboard-interactive is the method whose first prompt takes a connect code; naming it alone
# skips the keys, Kerberos and a ~/.ssh/config that would otherwise come first.
AUTH_OPTION = "-o PreferredAuthentications=keyboard-interactive"
LOW_PORT_SHIFT = 15000  # a tunnel to port 502 listens locally on 15502 (no root needed)


@dataclass
class AssetCommands:
    """What the page shows for one asset: its grants now and the command lines they allow."""

    asset: str
    until: str
    logs_in: bool = False
    files: bool = False
    tunnels: list[int] = field(default_factory=list)
    desktop: str = ""  # "vnc" or "rdp": the desktop opens in the browser only
    modbus_port: int = 0  # a Modbus/TCP port reachable with the user's Modbus grants
    accounts: list[str] = field(default_factory=list)
    commands: list[tuple[str, str]] = field(default_factory=list)  # (label, command line)


def _shown(instant: dt.datetime | None) -> str:
    return instant.strftime("%Y-%m-%d %H:%M UTC") if instant is not None else "no end"


def _gather(
    found: Iterable[tuple[str, str, object]], modbus_ports: dict[str, int] | None = None
) -> dict[str, AssetCommands]:
    """Group the authorizer's (asset, action, decision) answers per asset; a Modbus action
    makes a tunnel to the asset's Modbus port (``modbus_ports``)."""
    out: dict[str, AssetCommands] = {}
    for asset, action, decision in found:
        until = _shown(getattr(decision, "valid_until", None))
        entry = out.setdefault(asset, AssetCommands(asset, until))
        base = ACCOUNT_RE.fullmatch(action)
        kind = base.group(1) if base else action
        tunnel = TUNNEL_RE.fullmatch(action)
        if kind == "ssh":
            entry.logs_in = True
            account = account_of(action)
            if account != DEFAULT_ACCOUNT and account not in entry.accounts:
                entry.accounts.append(account)
        elif kind in ("sftp-read", "sftp-write"):
            entry.files = True
        elif tunnel is not None and int(tunnel.group(1)) != (modbus_ports or {}).get(asset):
            entry.tunnels.append(int(tunnel.group(1)))  # a Modbus port needs a Modbus grant
        elif is_modbus_action(action) and (modbus_ports or {}).get(asset):
            entry.modbus_port = (modbus_ports or {})[asset]
        elif kind in DESKTOP_ACTIONS:
            entry.desktop = kind
    return {
        a: e for a, e in out.items()
        if e.logs_in or e.files or e.tunnels or e.modbus_port or e.desktop
    }  # fmt: skip


def command_lines(entry: AssetCommands, user: str, host: str, port: int) -> list[tuple[str, str]]:
    """The exact commands for ``entry`` as typed in a shell (names are policy names, so no
    quoting is needed: ``rbac.names`` allows only ``a-z 0-9 . _ -``)."""
    target = f"{user}+{entry.asset}@{host}"
    lines: list[tuple[str, str]] = []
    if entry.logs_in:
        lines.append(("Shell", f"ssh -p {port} {AUTH_OPTION} {target}"))
        for account in entry.accounts:
            lines.append(
                (
                    f"Shell as {account}",
                    f"ssh -p {port} {AUTH_OPTION} {user}+{entry.asset}+{account}@{host}",
                )
            )
    if entry.files:
        lines.append(("Upload a file", f"scp -P {port} {AUTH_OPTION} ./file.txt {target}:/tmp/"))
        lines.append(("Download a file", f"scp -P {port} {AUTH_OPTION} {target}:/tmp/file.txt ."))
        lines.append(("Files, interactive", f"sftp -P {port} {AUTH_OPTION} {target}"))
    if entry.modbus_port:
        remote = entry.modbus_port
        local = remote + LOW_PORT_SHIFT if remote < 1024 else remote
        lines.append(
            (
                f"Modbus/TCP to port {remote}, checked by the gateway (then use 127.0.0.1:{local})",
                f"ssh -p {port} {AUTH_OPTION} -N -L 127.0.0.1:{local}:localhost:{remote} {target}",
            )
        )
    for remote in sorted(set(entry.tunnels) - {entry.modbus_port}):
        local = remote + LOW_PORT_SHIFT if remote < 1024 else remote
        lines.append(
            (
                f"Tunnel to port {remote} (then use 127.0.0.1:{local})",
                f"ssh -p {port} {AUTH_OPTION} -N -L 127.0.0.1:{local}:localhost:{remote} {target}",
            )
        )
    return lines


async def make_connect_code(request: Request, context: PortalContext, asset: str) -> str | None:
    """A fresh one-time code for ``asset``, or None (refusal audited as
    ``connect_code.refused``; missing and forbidden assets alike)."""
    services = services_of(request)
    username = context.session.username
    refusal = "malformed asset name"
    if ssh_access.ASSET_RE.fullmatch(asset) is not None:
        decision = await services.authz.reachable_over_ssh(username, asset)
        refusal = "" if decision.allowed else decision.reason
    if not refusal:
        try:
            async with services.sessions() as db, db.begin():
                code, _expires = await ssh_access.issue_connect_code(
                    db, context.session.user_id, asset, services.clock()
                )
            return code
        except ConduitError as exc:
            refusal = exc.detail
    await services.audit.record(
        actor=username,
        action="connect_code.refused",
        result="denied",
        target=asset,
        source=source_of(request),
        detail={"reason": refusal},
    )
    return None


async def _connect_page(
    request: Request,
    context: PortalContext,
    extra: dict[str, object] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    services = services_of(request)
    user = context.session.username
    host = request.url.hostname or "gateway"
    port = services.settings.ssh_listen.port
    modbus_ports = {
        asset.name: found
        for asset, _ in await services.authz.list_assets()
        if (found := modbus_port_of(asset)) is not None
    }
    entries = list(_gather(await services.authz.reachable_now(user), modbus_ports).values())
    for entry in entries:
        entry.commands = command_lines(entry, user, host, port)
    values: dict[str, object] = {
        "entries": entries,
        "host_fingerprints": services.keys.ssh_host_fingerprints(),
        "auth_option": AUTH_OPTION,
        "code_asset": "",
        "code": "",
        "error": "",
    }
    values.update(extra or {})
    return await page(request, context, "connect.html", values, current="connect",
                      status_code=status_code)  # fmt: skip


@router.get("/connect", response_class=HTMLResponse)
async def connect(request: Request) -> Response:
    context = await signed_in(request, SiteAction.USE_ASSETS)
    if context is None:
        return sign_in_redirect(request)
    return await _connect_page(request, context)


@router.post("/connect/{asset}/code", response_class=HTMLResponse)
async def connect_code(request: Request, asset: AssetName, context: Session) -> Response:
    """The page again with the code beside its asset (once: the response is ``no-store``)."""
    await signed_in(request, SiteAction.USE_ASSETS)
    code = await make_connect_code(request, context, asset)
    if code is None:
        error = "not found or not permitted"
        return await _connect_page(request, context, {"error": error}, status_code=404)
    return await _connect_page(request, context, {"code_asset": asset, "code": code})
