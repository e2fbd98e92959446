"""``conduit demo``: a demo site on embedded defaults, needing nothing but Python.

Initialises a demo data directory, applies migrations, seeds the demo users (admin,
approver, vendor, auditor) with generated passwords and TOTP secrets, prints how to log in
and serves on http://127.0.0.1:8080 (plain HTTP is allowed on loopback only). Later
capabilities add their demo targets here. Never use a demo directory in production: its
credentials file holds passwords and TOTP secrets in clear (mode 0600).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets

from gateway.config import Settings
from gateway.db import migrate
from gateway.db.engine import make_engine, make_sessionmaker
from gateway.identity.accounts import create_user
from gateway.identity.totp import new_totp_secret, provisioning_uri
from gateway.keys import init_key_material, load_keyring, write_private_file
from gateway.logs import setup_logging
from gateway.services import utc_now

DEMO_PORTAL = "127.0.0.1:8080"
DEMO_SSH = "127.0.0.1:2222"
DEMO_USERS = (
    ("admin", ("admin",), "Demo Administrator", ""),
    ("approver", ("approver",), "Demo Approver", ""),
    ("vendor", ("vendor",), "Demo Vendor Technician", "acme-automation"),
    ("auditor", ("auditor",), "Demo Auditor", ""),
)
CREDENTIALS_FILE = "demo-credentials.json"


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


def print_logins(settings: Settings, creds: list[dict[str, str]]) -> None:
    print("Conduit demo site")
    print(f"  portal: {settings.portal_url}   ssh: {settings.ssh.listen}")
    print(f"  data directory: {settings.data_dir} (credentials in {CREDENTIALS_FILE}, mode 0600)")
    print("  log in with a user below; add its TOTP secret to an authenticator app:")
    for c in creds:
        print(f"    {c['username']:9} password {c['password']}  TOTP secret {c['totp_secret']}")
        print(f"              {provisioning_uri(c['totp_secret'], c['username'])}")
    print(flush=True)


def run_demo(args: argparse.Namespace) -> int:
    from gateway.cli import settings_from
    from gateway.serve import serve

    args.portal_listen = args.portal_listen or DEMO_PORTAL
    args.ssh_listen = args.ssh_listen or DEMO_SSH
    settings = settings_from(args, portal_tls=False)
    setup_logging(settings.logging.level, settings.logging.format)
    init_key_material(settings)
    keys = load_keyring(settings)

    async def prepare() -> list[dict[str, str]]:
        engine = make_engine(settings)
        try:
            await migrate.upgrade(engine)
        finally:
            await engine.dispose()
        return await seed(settings, keys.master_key)

    print_logins(settings, asyncio.run(prepare()))
    return asyncio.run(serve(settings))
