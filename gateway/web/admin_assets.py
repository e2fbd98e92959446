"""Admin pages for assets (``/admin/assets``): list, add, edit and disable; host-key pinning
by scan; vaulted credentials, write-only.

Pinning is two steps. "Scan" connects to the asset's host and port without logging in,
reads every host key it offers and shows their SHA256 fingerprints; nothing is stored. The
admin ticks the ones they confirm (compared with the target's console, say) and posts them;
the gateway scans again and pins only keys that were both confirmed and offered again, so a
key swapped between the two looks is never stored. A credential form takes a password or a
private key and never shows one back: the page shows only "set on <date> by <who>".
Every change goes through the services ``conduit asset`` uses, needs a fresh second factor
and is audited with before and after (secrets never in either). Does not decide access.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import asyncssh
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gateway import vault
from gateway.authz import certificates, hostkeys
from gateway.authz.service import MAX_REQUEST_HOURS, PolicyError
from gateway.authz.tables import PROTOCOLS, Asset
from gateway.desktop import rdpcert, vnc
from gateway.errors import ConduitError, UpstreamError
from gateway.services import Services
from gateway.web.admin_common import (
    NAME_MAX,
    Checked,
    admin_page,
    admin_post,
    admin_view,
    audit_change,
    missing,
    refused_input,
    step_up,
)
from gateway.web.auth import PortalContext, services_of
from gateway.web.layout import sign_in_redirect
from gateway.web.portal_forms import audit_refusal, list_field, shown_instant
from gateway.web.stepup import StepUp
from rbac.errors import RbacError
from rbac.names import DESKTOP_ACTIONS, check_name

router = APIRouter(include_in_schema=False)

SCAN_SECONDS = 15
HOST_MAX = 255
PASSWORD_MAX = 4096
KEY_MAX = 16384
MAX_ZONES = 20
SECRET_FIELDS = ("password", "private_key")


def redacted(username: str, kind: str) -> dict[str, str]:
    """A credential as its audit event shows it: never the secret."""
    return {"username": username, "kind": kind, "value": "(redacted)"}


def _asset_fields(checked: Checked, zones_known: set[str]) -> dict[str, Any]:
    """The fields add and edit share, checked; problems land in ``checked.errors``."""
    host = checked.text("host", HOST_MAX)
    if host and any(c.isspace() for c in host):
        checked.fail("host", "The host is a name or an address, without spaces.")
    port = checked.number("port", 1, 65535)
    if port is None:
        checked.fail("port", "Give a port from 1 to 65535.")
    hours = checked.number("max_request_hours", 1, MAX_REQUEST_HOURS, what="longest request")
    if hours is None:
        checked.fail("max_request_hours", f"Give a number of hours from 1 to {MAX_REQUEST_HOURS}.")
    zones = list_field(checked.form, "zones", MAX_ZONES)
    checked.values["zones"] = zones
    if any(z not in zones_known for z in zones):
        checked.fail("zones", "Choose zones from the list.")
    return {
        "host": host,
        "port": port or 0,
        "max_request_hours": hours or 1,
        "record_input": checked.checked("record_input"),
        "zones": tuple(zones),
    }


async def _list_page(
    request: Request,
    context: PortalContext,
    checked: Checked | None = None,
    *,
    status_code: int = 200,
    step: StepUp | None = None,
) -> HTMLResponse:
    services = services_of(request)
    values = {
        "assets": await services.authz.list_assets(),
        "zone_names": [z.name for z in await services.authz.list_zones()],
        "protocols": PROTOCOLS,
        "draft": checked.values
        if checked
        else {"protocol": "ssh", "port": "22", "max_request_hours": "8", "record_input": True},
        "errors": checked.errors if checked else {},
        "max_hours": MAX_REQUEST_HOURS,
    }
    return await admin_view(
        request, context, "admin/assets.html", values, step=step, status_code=status_code
    )


@router.get("/admin/assets", response_class=HTMLResponse)
async def assets(request: Request) -> Response:
    context = await admin_page(request)
    if context is None:
        return sign_in_redirect(request)
    return await _list_page(request, context)


@router.post("/admin/assets", response_class=HTMLResponse)
async def add_asset(request: Request) -> Response:
    context, form = await admin_post(request)
    services = services_of(request)
    checked = Checked(form)
    name = checked.text("name", NAME_MAX)
    if name and "name" not in checked.errors:
        try:
            check_name(name, "asset")
        except RbacError as exc:
            checked.fail("name", exc.message)
    if name in {a.name for a, _ in await services.authz.list_assets()}:
        checked.fail("name", f"An asset named {name} already exists.")
    protocol = checked.text("protocol", 8)
    if protocol not in PROTOCOLS:
        checked.fail("protocol", f"Choose one of {', '.join(PROTOCOLS)}.")
    fields = _asset_fields(checked, {z.name for z in await services.authz.list_zones()})
    if checked.errors:
        await refused_input(request, context, checked, "asset add")
        return await _list_page(request, context, checked, status_code=422)
    step = await step_up(request, context, form)
    if not step.ok:
        return await _list_page(request, context, checked, step=step)
    try:
        await services.authz.add_asset(
            name, fields["host"], fields["port"], protocol, actor=context.session.username,
            zones=fields["zones"], max_request_hours=fields["max_request_hours"],
            record_input=fields["record_input"],
        )  # fmt: skip
    except (PolicyError, RbacError) as exc:
        checked.fail("name", exc.message)
        await refused_input(request, context, checked, "asset add")
        return await _list_page(request, context, checked, status_code=422)
    after = {**fields, "zones": list(fields["zones"]), "protocol": protocol, "disabled": False}
    await audit_change(request, context, "asset", name, None, after)
    return RedirectResponse(f"/admin/assets/{name}", status_code=303)


async def _asset(request: Request, context: PortalContext, name: str) -> tuple[Asset, list[str]]:
    for asset, zones in await services_of(request).authz.list_assets():
        if asset.name == name:
            return asset, zones
    raise await missing(request, context, f"no asset {name[:80]}")


async def _asset_page(
    request: Request,
    context: PortalContext,
    name: str,
    *,
    edit: Checked | None = None,
    credential: Checked | None = None,
    scanned: list[asyncssh.SSHKey] | None = None,
    scan_error: str = "",
    pin_error: str = "",
    cert_scanned: str = "",
    cert_error: str = "",
    status_code: int = 200,
    step: StepUp | None = None,
    step_for: str = "",
) -> HTMLResponse:
    """The asset's page: settings form, host keys (and a fresh scan), credentials. ``step``
    shows the code field in the form named by ``step_for`` (edit, pin or credential)."""
    services = services_of(request)
    asset, zones = await _asset(request, context, name)
    now = services.clock()
    async with services.sessions() as db:
        pins = await hostkeys.pins(db, name)
        cert_pins = await certificates.pin_rows(db, name)
        stored = await vault.stored(db, name)
    draft = edit.values if edit else {
        "host": asset.host, "port": str(asset.port), "zones": zones,
        "max_request_hours": str(asset.max_request_hours),
        "record_input": bool(asset.record_input), "disabled": bool(asset.disabled),
    }  # fmt: skip
    values: dict[str, Any] = {
        "asset": asset,
        "draft": draft,
        "errors": edit.errors if edit else {},
        "zone_names": [z.name for z in await services.authz.list_zones()],
        "max_hours": MAX_REQUEST_HOURS,
        "pins": [(p, shown_instant(p.created_at, now)) for p in pins],
        "scanned": [(k.get_algorithm(), k.get_fingerprint("sha256")) for k in scanned or []],
        "scan_error": scan_error,
        "pin_error": pin_error,
        "cert_pins": [(p, shown_instant(p.created_at, now)) for p in cert_pins],
        "cert_scanned": cert_scanned,
        "cert_error": cert_error,
        "credentials": [(c, shown_instant(c.updated_at, now)) for c in stored],
        # Never a secret: a re-shown credential form keeps the account, user and kind only.
        "cred": {k: v for k, v in (credential.values if credential else {}).items()
                 if k not in SECRET_FIELDS} or {"account": vault.DEFAULT_ACCOUNT,
                                                "kind": "password"},
        "cred_errors": credential.errors if credential else {},
        "step_for": step_for,
    }  # fmt: skip
    return await admin_view(
        request, context, "admin/asset.html", values, step=step, status_code=status_code
    )


@router.get("/admin/assets/{name}", response_class=HTMLResponse)
async def asset_form(request: Request, name: str) -> Response:
    context = await admin_page(request)
    if context is None:
        return sign_in_redirect(request)
    return await _asset_page(request, context, name)


@router.post("/admin/assets/{name}", response_class=HTMLResponse)
async def change_asset(request: Request, name: str) -> Response:
    context, form = await admin_post(request)
    services = services_of(request)
    await _asset(request, context, name)
    checked = Checked(form)
    fields = _asset_fields(checked, {z.name for z in await services.authz.list_zones()})
    disabled = checked.checked("disabled")
    if checked.errors:
        await refused_input(request, context, checked, f"asset {name} change")
        return await _asset_page(request, context, name, edit=checked, status_code=422)
    step = await step_up(request, context, form)
    if not step.ok:
        return await _asset_page(request, context, name, edit=checked, step=step, step_for="edit")
    before, after = await services.authz.update_asset(
        name, actor=context.session.username, disabled=disabled, **fields
    )
    await audit_change(request, context, "asset", name, before, after)
    return RedirectResponse(f"/admin/assets/{name}", status_code=303)


async def scan_keys(asset: Asset) -> list[asyncssh.SSHKey]:
    try:
        async with asyncio.timeout(SCAN_SECONDS):
            return await hostkeys.scan_all(asset.host, asset.port)
    except TimeoutError:
        raise hostkeys.HostKeyError(
            f"{asset.host}:{asset.port} did not answer within {SCAN_SECONDS} seconds"
        ) from None


@router.post("/admin/assets/{name}/scan", response_class=HTMLResponse)
async def scan(request: Request, name: str) -> Response:
    """Read the offered host keys and show them; nothing is stored."""
    context, _ = await admin_post(request)
    asset, _zones = await _asset(request, context, name)
    if asset.protocol != "ssh":
        return await _asset_page(
            request, context, name, scan_error="Only SSH assets have host keys to pin."
        )
    try:
        keys = await scan_keys(asset)
    except hostkeys.HostKeyError as exc:
        await audit_refusal(request, context.session.username, 502, exc.detail)
        return await _asset_page(
            request, context, name, status_code=502,
            scan_error=f"The scan failed: {exc.message}. Check the host and port, and that "
            "the asset is reachable from the gateway.",
        )  # fmt: skip
    return await _asset_page(request, context, name, scanned=keys)


async def store_pins(
    services: Services,
    name: str,
    offered: dict[str, asyncssh.SSHKey],
    confirmed: list[str],
    *,
    replace: bool,
    actor: str,
) -> tuple[list[str], list[str]]:
    """Pin the ``confirmed`` fingerprints (each in ``offered``, the fresh scan), replacing
    the old pins or adding to them; the fingerprints pinned (before, after)."""
    async with services.sessions() as db, db.begin():
        before = [p.fingerprint for p in await hostkeys.pins(db, name)]
        if replace:
            await hostkeys.unpin_all(db, name)
        for fingerprint in confirmed:
            await hostkeys.pin(db, name, offered[fingerprint], actor=actor, now=services.clock())
    return before, sorted(set(confirmed) | (set() if replace else set(before)))


@router.post("/admin/assets/{name}/hostkeys", response_class=HTMLResponse)
async def pin_keys(request: Request, name: str) -> Response:
    """Pin the confirmed fingerprints, checked against a second scan made now."""
    context, form = await admin_post(request)
    services = services_of(request)
    asset, _zones = await _asset(request, context, name)
    confirmed = list_field(form, "fingerprint", 10, item_limit=100)
    replace = form.get("replace") == "on"
    if not confirmed:
        await audit_refusal(request, context.session.username, 422, f"pin {name}: none chosen")
        return await _asset_page(
            request, context, name, pin_error="Tick the keys you confirm.", status_code=422
        )
    try:
        keys = {k.get_fingerprint("sha256"): k for k in await scan_keys(asset)}
    except hostkeys.HostKeyError as exc:
        await audit_refusal(request, context.session.username, 502, exc.detail)
        return await _asset_page(
            request, context, name, status_code=502, scan_error=f"The scan failed: {exc.message}."
        )
    changed = [f for f in confirmed if f not in keys]
    if changed:
        await audit_refusal(
            request, context.session.username, 409,
            f"pin {name}: confirmed keys no longer offered: {', '.join(changed)}",
        )  # fmt: skip
        return await _asset_page(
            request, context, name, scanned=list(keys.values()), status_code=409,
            pin_error="The asset now offers different keys than the ones you confirmed: "
            "nothing was pinned. Compare the fingerprints below again.",
        )  # fmt: skip
    step = await step_up(request, context, form)
    if not step.ok:
        return await _asset_page(
            request, context, name, scanned=list(keys.values()), step=step, step_for="pin"
        )
    before, after = await store_pins(
        services, name, keys, confirmed, replace=replace, actor=context.session.username
    )
    await audit_change(request, context, "hostkeys", name, {"pinned": before}, {"pinned": after})
    return RedirectResponse(f"/admin/assets/{name}#hostkeys", status_code=303)


async def scan_certificate(asset: Asset) -> str:
    """The certificate fingerprint a desktop asset presents now (64 hex digits)."""
    try:
        async with asyncio.timeout(SCAN_SECONDS):
            if asset.protocol == "rdp":
                found = await rdpcert.scan_certificate(asset.host, asset.port)
            else:
                found = await vnc.scan_certificate(
                    vnc.VncTarget(asset.host, asset.port, label=f"asset:{asset.name}")
                )
    except TimeoutError:
        raise UpstreamError(
            "the asset did not answer in time",
            f"{asset.host}:{asset.port} did not answer within {SCAN_SECONDS} seconds",
        ) from None
    except ConduitError as exc:
        raise UpstreamError(exc.message, exc.detail) from None
    return certificates.normalize(found)


@router.post("/admin/assets/{name}/certificate-scan", response_class=HTMLResponse)
async def scan_cert(request: Request, name: str) -> Response:
    """Read the TLS certificate a desktop asset presents and show its fingerprint."""
    context, _ = await admin_post(request)
    asset, _zones = await _asset(request, context, name)
    if asset.protocol not in DESKTOP_ACTIONS:
        return await _asset_page(
            request, context, name, cert_error="Only VNC and RDP assets have certificates."
        )
    try:
        found = await scan_certificate(asset)
    except UpstreamError as exc:
        await audit_refusal(request, context.session.username, 502, exc.detail)
        return await _asset_page(
            request, context, name, status_code=502,
            cert_error=f"The scan failed: {exc.message}. Check the host and port, and that "
            "the asset is reachable from the gateway (a VNC asset must offer VeNCrypt X.509).",
        )  # fmt: skip
    return await _asset_page(request, context, name, cert_scanned=found)


@router.post("/admin/assets/{name}/certificates", response_class=HTMLResponse)
async def pin_cert(request: Request, name: str) -> Response:
    """Pin the confirmed fingerprint, checked against a second scan made now."""
    context, form = await admin_post(request)
    services = services_of(request)
    asset, _zones = await _asset(request, context, name)
    confirmed = str(form.get("fingerprint", ""))[:100]
    replace = form.get("replace") == "on"
    if form.get("checked") != "on" or asset.protocol not in DESKTOP_ACTIONS:
        await audit_refusal(request, context.session.username, 422, f"pin {name}: not confirmed")
        return await _asset_page(
            request, context, name, cert_scanned=confirmed, status_code=422,
            cert_error="Tick the box once you have compared the fingerprint with the asset's.",
        )  # fmt: skip
    try:
        found = await scan_certificate(asset)
    except UpstreamError as exc:
        await audit_refusal(request, context.session.username, 502, exc.detail)
        return await _asset_page(
            request, context, name, status_code=502, cert_error=f"The scan failed: {exc.message}."
        )
    if not secrets.compare_digest(found, confirmed):
        await audit_refusal(
            request, context.session.username, 409,
            f"pin {name}: the asset now presents {found}, not the confirmed {confirmed[:64]}",
        )  # fmt: skip
        return await _asset_page(
            request, context, name, cert_scanned=found, status_code=409,
            cert_error="The asset now presents a different certificate than the one you "
            "confirmed: nothing was pinned. Compare the fingerprint below again.",
        )  # fmt: skip
    step = await step_up(request, context, form)
    if not step.ok:
        return await _asset_page(
            request, context, name, cert_scanned=found, step=step, step_for="cert"
        )
    async with services.sessions() as db, db.begin():
        before = list(await certificates.pinned(db, name))
        if replace:
            await certificates.unpin_all(db, name)
        await certificates.pin(
            db, name, found, actor=context.session.username, now=services.clock()
        )
        after = list(await certificates.pinned(db, name))
    await audit_change(
        request, context, "certificates", name, {"pinned": before}, {"pinned": after}
    )
    return RedirectResponse(f"/admin/assets/{name}#certificates", status_code=303)


@router.post("/admin/assets/{name}/credential", response_class=HTMLResponse)
async def set_credential(request: Request, name: str) -> Response:
    """Store or replace one account's secret; the page never shows it back."""
    context, form = await admin_post(request)
    services = services_of(request)
    await _asset(request, context, name)
    checked = Checked(form)
    account = checked.text("account", NAME_MAX)
    if account and "account" not in checked.errors:
        try:
            check_name(account, "account")
        except RbacError as exc:
            checked.fail("account", exc.message)
    username = checked.text("username", 128, what="user name on the asset")
    if username and any(c.isspace() or ord(c) < 32 for c in username):
        checked.fail("username", "The user name has no spaces or control characters.")
    kind = checked.text("kind", 16)
    password = private_key = None
    if kind == "password":
        password = checked.text("password", PASSWORD_MAX)
    elif kind == "private-key":
        private_key = checked.text("private_key", KEY_MAX, what="private key")
        if private_key and "private_key" not in checked.errors:
            try:
                asyncssh.import_private_key(private_key)
            except (asyncssh.KeyImportError, ValueError):
                checked.fail("private_key", "This is not an unencrypted OpenSSH private key.")
    else:
        checked.fail("kind", "Choose a password or a private key.")
    if checked.errors:
        await refused_input(request, context, checked, f"credential {name}")
        return await _asset_page(request, context, name, credential=checked, status_code=422)
    step = await step_up(request, context, form)
    if not step.ok:
        checked.fail("secret", "Enter the code, then type the secret again: it is not kept.")
        return await _asset_page(
            request, context, name, credential=checked, step=step, step_for="credential"
        )
    async with services.sessions() as db, db.begin():
        before = {c.account: c for c in await vault.stored(db, name)}.get(account)
        try:
            await vault.set_credential(
                db, services.keys.master_key, asset=name, account=account, username=username,
                now=services.clock(), password=password,
                private_key=private_key.encode() if private_key else None,
                actor=context.session.username,
            )  # fmt: skip
        except vault.VaultError as exc:
            checked.fail("secret", exc.message)
            await refused_input(request, context, checked, f"credential {name}")
            return await _asset_page(request, context, name, credential=checked, status_code=422)
    shown_before = redacted(before.username, before.kind) if before else None
    after = redacted(username, kind)
    await audit_change(request, context, "credential", f"{name}/{account}", shown_before, after)
    return RedirectResponse(f"/admin/assets/{name}#credentials", status_code=303)
