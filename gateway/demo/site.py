"""``conduit demo``: a demo site on embedded defaults, needing nothing but Python.

Initialises a demo data directory, applies migrations, seeds the demo users (admin,
approver, vendor, auditor) with generated passwords and TOTP secrets, starts the demo's
SSH asset ``demo-plc`` (a simulated PLC, ``gateway.demo.target``, on loopback) with its host
key pinned, its key vaulted and standing grants for the vendor (``ssh``, ``sftp-read``,
``sftp-write``, and ``request`` for the portal's request form) and the approver
(``approve``, ``watch``, ``kill``), the Modbus/TCP asset ``demo-modbus-plc`` (a pymodbus
PLC, ``gateway.demo.plc``, on loopback) the vendor may read through a protocol-aware tunnel
(``modbus-read``; writes need a ``modbus-write`` grant and an armed write window), and the
desktop assets this machine can run (``gateway.demo.desktops``: VNC, and RDP as root; a note
for each that it cannot), prints
how to log in and connect, and serves on
http://127.0.0.1:8080 and SSH on 127.0.0.1:2222 (loopback only). Running it again on the
same directory reuses everything. Never use a demo directory in production: its credentials
file holds passwords and TOTP secrets in clear (mode 0600).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import asyncssh
from pymodbus.server import ModbusTcpServer

from gateway.authz import hostkeys
from gateway.config import ListenAddress, Settings
from gateway.db import migrate
from gateway.db.engine import make_engine, make_sessionmaker
from gateway.demo import desktops as demo_desktops
from gateway.demo import plc as demo_plc
from gateway.demo import target as demo_target
from gateway.errors import ConduitError
from gateway.identity.accounts import create_user
from gateway.identity.totp import new_totp_secret, provisioning_uri
from gateway.keys import KeyRing, write_private_file
from gateway.services import Services, utc_now
from gateway.vault import accounts, set_credential

DEMO_PORTAL = "127.0.0.1:8080"
DEMO_SSH = "127.0.0.1:2222"
DEMO_USERS = (
    ("admin", ("admin",), "Demo Administrator", ""),
    ("approver", ("approver",), "Demo Approver", ""),
    ("vendor", ("vendor",), "Demo Vendor Technician", "acme-automation"),
    ("auditor", ("auditor",), "Demo Auditor", ""),
)
CREDENTIALS_FILE = "demo-credentials.json"
DEMO_ASSET = demo_target.DEVICE_NAME
DEVICE_DIR = "demo-target"
# The same simulated device as a second asset in its own zone, which the vendor may only ask
# for: the portal's request -> approve -> "available now until HH:MM" flow, end to end.
DEMO_REQUEST_ASSET = f"{DEMO_ASSET}-maint"
DEMO_ZONE = "demo-line"
DEMO_MODBUS_ASSET = demo_plc.PLC_NAME
DEMO_MODBUS_GRANTS = (
    ("vendor", "modbus-read"),
    ("approver", "approve"),
    ("approver", "watch"),
    ("approver", "kill"),
)
DEMO_GRANTS = {
    DEMO_ASSET: (
        ("vendor", "ssh"),
        ("vendor", "sftp-read"),
        ("vendor", "sftp-write"),
        ("approver", "approve"),
        ("approver", "watch"),
        ("approver", "kill"),
    ),
    DEMO_REQUEST_ASSET: (
        ("vendor", "request"),
        ("approver", "approve"),
        ("approver", "watch"),
        ("approver", "kill"),
    ),
}


async def seed(settings: Settings, master_key: bytes) -> list[dict[str, str]]:
    """Create the demo users once; later runs read the stored credentials again."""
    path = settings.data_dir / CREDENTIALS_FILE
    if path.exists():
        stored: list[dict[str, str]] = json.loads(path.read_text())
        return stored
    engine = make_engine(settings)
    creds: list[dict[str, str]] = []
    try:
        async with make_sessionmaker(engine)() as db, db.begin():
            for username, roles, display, org in DEMO_USERS:
                password = secrets.token_urlsafe(12)
                totp = new_totp_secret()
                await create_user(
                    db,
                    username=username,
                    roles=roles,
                    now=utc_now(),
                    master_key=master_key,
                    password=password,
                    totp_secret=totp,
                    status="active",
                    display_name=display,
                    organisation=org,
                )
                creds.append({"username": username, "password": password, "totp_secret": totp})
    finally:
        await engine.dispose()
    write_private_file(path, json.dumps(creds, indent=2).encode(), force=False)
    return creds


def print_logins(
    settings: Settings,
    keys: KeyRing,
    creds: list[dict[str, str]],
    device_port: int,
    plc_port: int = 0,
    desktop_notes: Sequence[str] = (),
) -> None:
    ssh = settings.ssh_listen
    print("Conduit demo site")
    print(f"  portal: {settings.portal_url}   ssh: {ssh}")
    print(f"  data directory: {settings.data_dir} (credentials in {CREDENTIALS_FILE}, mode 0600)")
    print("  log in with a user below; add its TOTP secret to an authenticator app:")
    for c in creds:
        print(f"    {c['username']:9} password {c['password']}  TOTP secret {c['totp_secret']}")
        print(f"              {provisioning_uri(c['totp_secret'], c['username'])}")
    print(
        f"  demo asset {DEMO_ASSET}: a simulated PLC maintenance shell on 127.0.0.1:{device_port}"
    )
    if settings.ssh.enabled:
        print("  connect as the vendor (password, then a TOTP code), then try status, show tags:")
        print(f"    ssh -p {ssh.port} vendor+{DEMO_ASSET}@{ssh.host}")
        print("  and fetch or upload files (uploads/ takes new ones):")
        print(f"    sftp -P {ssh.port} vendor+{DEMO_ASSET}@{ssh.host}")
        print(f"  {DEMO_REQUEST_ASSET}: the same device, for approved requests only: as the")
        print("  vendor, My access -> Request access; as the approver, Requests -> Approve;")
        print("  then the vendor's Connect page offers it until the approved window ends")
        if plc_port:
            print(f"  {DEMO_MODBUS_ASSET}: a Modbus/TCP PLC on 127.0.0.1:{plc_port}; the vendor")
            print("  reads it through a tunnel the gateway understands (writes are refused):")
            print(f"    ssh -N -L 5020:{DEMO_MODBUS_ASSET}:{plc_port} -p {ssh.port} "
                  f"vendor+{DEMO_MODBUS_ASSET}@{ssh.host}")  # fmt: skip
            print("  then point a Modbus tool at 127.0.0.1:5020 (unit 1)")
    for note in desktop_notes:
        print(f"  {note}")
    if any(
        note.startswith((demo_desktops.VNC_ASSET + ":", demo_desktops.RDP_ASSET + ":"))
        for note in desktop_notes
    ):
        print("  open a desktop as the vendor: Connect -> Open desktop in browser")
    fingerprints = keys.ssh_host_fingerprints()
    if fingerprints:
        print("  the gateway's SSH host key (compare when ssh asks whether to trust it):")
        for algorithm, fingerprint in fingerprints:
            print(f"    {algorithm:20} {fingerprint}")
    print(flush=True)


async def _asset_address(services: Services) -> tuple[str, int] | None:
    async with services.sessions() as db:
        asset = await services.authz.asset(db, DEMO_ASSET)
        return (asset.host, asset.port) if asset is not None else None


async def start_device(
    services: Services, directory: Path, wanted: ListenAddress | None
) -> asyncssh.SSHAcceptor:
    """The simulated device on ``wanted``, else where it listened last time, else anywhere."""
    if wanted is not None:
        try:
            return await demo_target.start_device(directory, wanted.host, wanted.port)
        except OSError as exc:
            raise ConduitError(
                f"cannot listen on {wanted} for the demo device: {exc.strerror}"
            ) from None
    previous = await _asset_address(services)
    if previous is not None:
        try:
            return await demo_target.start_device(directory, "127.0.0.1", previous[1])
        except OSError:
            pass  # taken by now: any free port will do, the asset follows it
    return await demo_target.start_device(directory, "127.0.0.1", 0)


async def seed_device(services: Services, directory: Path, host: str, port: int) -> None:
    """Register ``demo-plc`` and ``demo-plc-maint`` (zone ``demo-line``) at host:port, pin the
    device's host key, vault its key for both, grant the demo users."""
    authz, now, actor = services.authz, services.clock(), "demo"
    if DEMO_ZONE not in {z.name for z in await authz.list_zones()}:
        await authz.add_zone(DEMO_ZONE, actor=actor)
    for name in DEMO_GRANTS:
        zones = (DEMO_ZONE,) if name == DEMO_REQUEST_ASSET else ()
        await place_asset(services, name, host, port, "ssh", zones)
    async with services.sessions() as db, db.begin():
        key = demo_target.host_key_public(directory)
        public = None
        vaulted = [bool(await accounts(db, name)) for name in DEMO_GRANTS]
        if not demo_target.has_client_key(directory) or not all(vaulted):
            private, public = demo_target.new_client_key()
        for name in DEMO_GRANTS:
            await hostkeys.pin(db, name, key, actor=actor, now=now)
            if public is not None:
                await set_credential(
                    db, services.keys.master_key, asset=name,
                    username=demo_target.MAINT_USER, private_key=private, now=now,
                )  # fmt: skip
    if public is not None:  # trusted only once the vault holds the private half
        demo_target.trust_client_key(directory, public)
    granted = {(g.subject, g.object, g.action) for g in await authz.list_grants()}
    for name, grants in DEMO_GRANTS.items():
        for user, action in grants:
            if (f"user:{user}", f"asset:{name}", action) not in granted:
                await authz.add_grant(
                    subject_kind="user", subject=user, object_kind="asset", obj=name,
                    action=action, actor=actor,
                )  # fmt: skip


async def start_plc(services: Services) -> tuple[ModbusTcpServer, int]:
    """The demo PLC where it listened last time, else on a free loopback port."""
    async with services.sessions() as db:
        asset = await services.authz.asset(db, DEMO_MODBUS_ASSET)
    ports = ([asset.port] if asset is not None else []) + [_free_port(), _free_port()]
    for port in ports:
        try:
            return await demo_plc.start_plc("127.0.0.1", port), port
        except (OSError, RuntimeError):  # taken meanwhile: the next one
            continue
    raise ConduitError("cannot find a free loopback port for the demo PLC")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def seed_plc(services: Services, port: int) -> None:
    """Register ``demo-modbus-plc`` (protocol modbus) at 127.0.0.1:port, grant the demo users."""
    await place_asset(services, DEMO_MODBUS_ASSET, "127.0.0.1", port, "modbus")
    granted = {(g.subject, g.object, g.action) for g in await services.authz.list_grants()}
    for user, action in DEMO_MODBUS_GRANTS:
        if (f"user:{user}", f"asset:{DEMO_MODBUS_ASSET}", action) not in granted:
            await services.authz.add_grant(
                subject_kind="user", subject=user, object_kind="asset", obj=DEMO_MODBUS_ASSET,
                action=action, actor="demo",
            )  # fmt: skip


async def place_asset(
    services: Services, name: str, host: str, port: int, protocol: str,
    zones: tuple[str, ...] = (),
) -> None:  # fmt: skip
    """The asset at host:port: added the first time, moved when the device's port changed."""
    authz, actor = services.authz, "demo"
    async with services.sessions() as db:
        asset = await authz.asset(db, name)
        previous = (asset.host, asset.port) if asset is not None else None
    if previous is None:
        await authz.add_asset(name, host, port, protocol, actor=actor, zones=zones)
    elif previous != (host, port):
        async with services.sessions() as db, db.begin():
            asset = await authz.asset(db, name)
            assert asset is not None  # noqa: S101 - read just above; demo data is ours
            asset.host, asset.port = host, port
        await services.audit.record(
            actor=actor, action="asset.updated", result="success", target=name,
            detail={"host": host, "port": port},
        )  # fmt: skip


async def run(
    settings: Settings,
    keys: KeyRing,
    wanted: ListenAddress | None,
    serve: Callable[[Settings], Awaitable[int]],
) -> int:
    """Seed the site, start the demo device, print the logins, then ``serve`` (the CLI's)."""
    engine = make_engine(settings)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    creds = await seed(settings, keys.master_key)
    directory = settings.data_dir / DEVICE_DIR
    services = Services.build(settings, keys)
    try:
        await services.authz.refresh(force=True)
        device = await start_device(services, directory, wanted)
        plc: ModbusTcpServer | None = None
        try:
            port = device.get_port()
            await seed_device(services, directory, "127.0.0.1", port)
            plc, plc_port = await start_plc(services)
            await seed_plc(services, plc_port)
            desktops = await demo_desktops.start(services, settings.data_dir, place_asset)
        except BaseException:
            device.close()
            if plc is not None:
                await plc.shutdown()  # type: ignore[no-untyped-call]
            raise
    finally:
        await services.close()
    try:
        print_logins(settings, keys, creds, port, plc_port, desktops.notes)
        return await serve(settings)
    finally:
        device.close()
        await plc.shutdown()  # type: ignore[no-untyped-call]
        await device.wait_closed()
        await asyncio.to_thread(desktops.stop)
