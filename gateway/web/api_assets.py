"""JSON API for assets (``/api/v1/assets``): list, add, edit, disable; host keys; credentials.

The same services as ``conduit asset`` and the admin page ``/admin/assets``. Host-key
pinning is two steps, as on the page: ``POST .../hostkeys/scan`` reads the keys the asset
offers and answers their SHA256 fingerprints (nothing stored); ``POST .../hostkeys`` takes
the fingerprints the admin confirmed, scans again and pins only keys both confirmed and
offered again (``admin_assets.store_pins``), so a key swapped between the two looks is never
stored. Credentials are write-only: ``PUT .../credentials/{account}`` stores or replaces a
password or private key, and every answer shows only account, user name, kind, ``set_at``
and ``set_by``. Reads need the admin role (an ``admin`` token or a portal session); every
change also needs a recent second factor (portal sessions only) and is audited
``admin.changed`` with before and after, secrets redacted. Does not decide access.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import asyncssh
from fastapi import APIRouter, Path, Request
from pydantic import Field, SecretStr

from gateway import vault
from gateway.authz import hostkeys
from gateway.authz.service import MAX_REQUEST_HOURS, PolicyError
from gateway.authz.tables import Asset, modbus_port_of
from gateway.web.admin_assets import KEY_MAX, PASSWORD_MAX, redacted, scan_keys, store_pins
from gateway.web.api_access import NOT_FOUND, Admin, AuditedRoute, Name, Out, Refused, Strict
from gateway.web.api_admin import admin_change, audit_admin_change, require_site_admin
from gateway.web.auth import services_of
from rbac.errors import RbacError

router = APIRouter(prefix="/api/v1", tags=["assets"], route_class=AuditedRoute)

AssetName = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
AccountName = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
Fingerprint = Annotated[
    str, Field(min_length=1, max_length=100, pattern=r"^SHA256:[A-Za-z0-9+/=]+$")
]
Protocol = Literal["ssh", "vnc", "rdp", "tunnel", "modbus"]


class HostKeyOut(Out):
    algorithm: str
    fingerprint: str


class CredentialOut(Out):
    """What anyone may see of a vaulted credential: never the secret."""

    account: str
    username: str
    kind: str
    set_at: dt.datetime
    set_by: str

    @classmethod
    def of(cls, c: vault.StoredCredential) -> CredentialOut:
        return cls(
            account=c.account, username=c.username, kind=c.kind, set_at=c.updated_at,
            set_by=c.set_by,
        )  # fmt: skip


class AssetOut(Out):
    name: str
    host: str
    port: int
    protocol: str
    zones: list[str]
    max_request_hours: int
    record_input: bool
    disabled: bool
    modbus_port: int | None
    # Passive inventory: what the device answered a vendor's own 43/14 read, and when.
    ot_vendor: str | None
    ot_product: str | None
    ot_revision: str | None
    ot_seen_at: dt.datetime | None

    @classmethod
    def of(cls, asset: Asset, zones: list[str]) -> AssetOut:
        return cls(
            name=asset.name, host=asset.host, port=asset.port, protocol=asset.protocol,
            zones=zones, max_request_hours=asset.max_request_hours,
            record_input=bool(asset.record_input), disabled=bool(asset.disabled),
            modbus_port=modbus_port_of(asset), ot_vendor=asset.ot_vendor,
            ot_product=asset.ot_product, ot_revision=asset.ot_revision,
            ot_seen_at=asset.ot_seen_at,
        )  # fmt: skip


class AssetDetailOut(AssetOut):
    host_keys: list[HostKeyOut]
    credentials: list[CredentialOut]


class AssetSettingsIn(Strict):
    """The settings add and edit share; the protocol is fixed at creation."""

    host: str = Field(min_length=1, max_length=255, pattern=r"^\S+$")
    port: int = Field(ge=1, le=65535)
    zones: list[Name] = Field(default_factory=list, max_length=20)
    max_request_hours: int = Field(default=8, ge=1, le=MAX_REQUEST_HOURS)
    record_input: bool = True


class AssetIn(AssetSettingsIn):
    name: Name
    protocol: Protocol
    # A Modbus/TCP port of an asset of another protocol (protocol "modbus": its ``port``).
    modbus_port: int | None = Field(default=None, ge=1, le=65535)


class AssetChangeIn(AssetSettingsIn):
    disabled: bool = False


class PinIn(Strict):
    fingerprints: list[Fingerprint] = Field(min_length=1, max_length=10)
    replace: bool = False


class CredentialIn(Strict):
    """Exactly one of ``password`` and ``private_key`` (an unencrypted OpenSSH key)."""

    username: str = Field(min_length=1, max_length=128, pattern=r"^[^\s\x00-\x1f]+$")
    password: SecretStr | None = Field(default=None, min_length=1, max_length=PASSWORD_MAX)
    private_key: SecretStr | None = Field(default=None, min_length=1, max_length=KEY_MAX)


async def _asset(request: Request, name: str) -> tuple[Asset, list[str]]:
    for asset, zones in await services_of(request).authz.list_assets():
        if asset.name == name:
            return asset, zones
    raise Refused(404, NOT_FOUND, f"no asset {name}")


async def _detail(request: Request, name: str) -> AssetDetailOut:
    asset, zones = await _asset(request, name)
    async with services_of(request).sessions() as db:
        pins = await hostkeys.pins(db, name)
        stored = await vault.stored(db, name)
    return AssetDetailOut(
        **AssetOut.of(asset, zones).model_dump(),
        host_keys=[HostKeyOut(algorithm=p.key.split()[0], fingerprint=p.fingerprint) for p in pins],
        credentials=[CredentialOut.of(c) for c in stored],
    )


async def _known_zones(request: Request, wanted: list[str]) -> None:
    known = {z.name for z in await services_of(request).authz.list_zones()}
    if unknown := sorted(set(wanted) - known):
        raise Refused(422, f"zones: no zone {', '.join(unknown)}", "unknown zones")


@router.get("/assets", response_model=list[AssetOut])
async def assets(request: Request, caller: Admin) -> list[AssetOut]:
    """Every asset with its zones and settings."""
    require_site_admin(caller)
    return [AssetOut.of(a, z) for a, z in await services_of(request).authz.list_assets()]


@router.get("/assets/{name}", response_model=AssetDetailOut)
async def asset(request: Request, name: AssetName, caller: Admin) -> AssetDetailOut:
    """One asset, its pinned host keys and its credentials (never a secret)."""
    require_site_admin(caller)
    return await _detail(request, name)


@router.post("/assets", status_code=201, response_model=AssetDetailOut)
async def add_asset(request: Request, body: AssetIn, caller: Admin) -> AssetDetailOut:
    """Add an asset in its zones (admin, recent second factor)."""
    admin_change(request, caller)
    await _known_zones(request, body.zones)
    try:
        await services_of(request).authz.add_asset(
            body.name, body.host, body.port, body.protocol, actor=caller.username,
            zones=tuple(body.zones), max_request_hours=body.max_request_hours,
            modbus_port=body.modbus_port,
            record_input=body.record_input,
        )  # fmt: skip
    except (PolicyError, RbacError) as exc:
        raise Refused(422, exc.message, exc.detail) from None
    after = body.model_dump(exclude={"name"}) | {"disabled": False}
    await audit_admin_change(request, caller, "asset", body.name, None, after)
    return await _detail(request, body.name)


@router.put("/assets/{name}", response_model=AssetDetailOut)
async def change_asset(
    request: Request, name: AssetName, body: AssetChangeIn, caller: Admin
) -> AssetDetailOut:
    """Change address, zones, limits, input recording; ``disabled: true`` disables it."""
    admin_change(request, caller)
    await _asset(request, name)
    await _known_zones(request, body.zones)
    try:
        before, after = await services_of(request).authz.update_asset(
            name, actor=caller.username, host=body.host, port=body.port, zones=tuple(body.zones),
            max_request_hours=body.max_request_hours, record_input=body.record_input,
            disabled=body.disabled,
        )  # fmt: skip
    except PolicyError as exc:
        raise Refused(422, exc.message, exc.detail) from None
    await audit_admin_change(request, caller, "asset", name, before, after)
    return await _detail(request, name)


async def _scan(asset_row: Asset) -> list[asyncssh.SSHKey]:
    if asset_row.protocol != "ssh":
        raise Refused(409, "only SSH assets have host keys to pin", "scan of a non-SSH asset")
    try:
        return await scan_keys(asset_row)
    except hostkeys.HostKeyError as exc:
        raise Refused(502, f"the scan failed: {exc.message}", exc.detail) from None


@router.post("/assets/{name}/hostkeys/scan", response_model=list[HostKeyOut])
async def scan(request: Request, name: AssetName, caller: Admin) -> list[HostKeyOut]:
    """The host keys the asset offers now, for confirmation; nothing is stored."""
    require_site_admin(caller)
    asset_row, _ = await _asset(request, name)
    keys = await _scan(asset_row)
    return [HostKeyOut(algorithm=k.get_algorithm(), fingerprint=k.get_fingerprint("sha256"))
            for k in keys]  # fmt: skip


@router.post("/assets/{name}/hostkeys", response_model=AssetDetailOut)
async def pin(request: Request, name: AssetName, body: PinIn, caller: Admin) -> AssetDetailOut:
    """Pin the confirmed fingerprints, checked against a second scan made now."""
    admin_change(request, caller)
    asset_row, _ = await _asset(request, name)
    offered = {k.get_fingerprint("sha256"): k for k in await _scan(asset_row)}
    if changed := [f for f in body.fingerprints if f not in offered]:
        raise Refused(
            409, "the asset does not offer the confirmed keys now: nothing was pinned",
            f"pin {name}: confirmed keys no longer offered: {', '.join(changed)}",
        )  # fmt: skip
    before, after = await store_pins(
        services_of(request), name, offered, list(body.fingerprints), replace=body.replace,
        actor=caller.username,
    )  # fmt: skip
    await audit_admin_change(request, caller, "hostkeys", name, {"pinned": before},
                             {"pinned": after})  # fmt: skip
    return await _detail(request, name)


@router.put("/assets/{name}/credentials/{account}", response_model=CredentialOut)
async def set_credential(
    request: Request, name: AssetName, account: AccountName, body: CredentialIn, caller: Admin
) -> CredentialOut:
    """Store or replace one account's secret (write-only: never answered back)."""
    admin_change(request, caller)
    await _asset(request, name)
    if (body.password is None) == (body.private_key is None):
        raise Refused(422, "give exactly one of password and private_key", "credential shape")
    services = services_of(request)
    password = body.password.get_secret_value() if body.password else None
    key = body.private_key.get_secret_value().encode() if body.private_key else None
    kind = "password" if password is not None else "private-key"
    async with services.sessions() as db, db.begin():
        old = {c.account: c for c in await vault.stored(db, name)}.get(account)
        try:
            await vault.set_credential(
                db, services.keys.master_key, asset=name, account=account,
                username=body.username, now=services.clock(), password=password,
                private_key=key, actor=caller.username,
            )  # fmt: skip
        except (vault.VaultError, RbacError) as exc:
            raise Refused(422, exc.message, exc.detail) from None
    before = redacted(old.username, old.kind) if old else None
    target = f"{name}/{account}"
    await audit_admin_change(request, caller, "credential", target, before,
                             redacted(body.username, kind))  # fmt: skip
    async with services.sessions() as db:
        stored = {c.account: c for c in await vault.stored(db, name)}
    return CredentialOut.of(stored[account])
