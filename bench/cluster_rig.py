"""The test bed for ``bench.cluster``: a fresh PostgreSQL database, one data directory that
every node shares (keys, recordings), the real sshd (asset, and jump host for ProxyJump),
and ``conduit serve`` nodes started, SIGKILLed and stopped on demand. Does not measure.

Set up as ``bench.ssh_relay_rig`` does (its sshd with raised throttles, its client configs,
its ``populate`` with the vendor ``bench``'s registered key and user certificate), on
PostgreSQL, plus an admin ``root`` (password + TOTP) for the kill runs. A node may run
``--workers N`` (issue 20's multi-process node); a ``conduit serve`` without that option
refuses it, which ``start_node`` reports as ``WorkersUnavailable``.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pyotp

from bench.ssh_relay_rig import Rig, populate, start_sshd, stop, write_client_configs
from gateway.config import Overrides, load_settings
from gateway.identity.accounts import create_user
from gateway.keys import load_keyring
from gateway.services import Services
from tests.haproxy import BALANCER, NodePorts
from tests.sshd_target import free_port
from tests.support import CONDUIT, PG_ADMIN_DSN, clean_env, init_data_dir

ADMIN = "root"
ADMIN_PASSWORD = "Bench-Admin-Passphrase-9"  # noqa: S105 - throwaway benchmark account
ADMIN_TOTP = pyotp.random_base32()


class WorkersUnavailable(RuntimeError):
    """This ``conduit serve`` has no ``--workers`` option (yet)."""


async def pg_exec(statement: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


class Node:
    """A ``conduit serve`` node on free loopback ports, its output in a log file."""

    def __init__(self, name: str, site: Site, workers: int | None, env: dict[str, str]) -> None:
        self.name = name
        self.workers = workers
        self.portal, self.ssh_port = free_port(), free_port()
        self.log = site.work / f"node-{name}-{secrets.token_hex(3)}.log"
        extra = ["--workers", str(workers)] if workers is not None else []
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(
                [*CONDUIT, "serve", "--data-dir", str(site.data),
                 "--portal-listen", f"127.0.0.1:{self.portal}",
                 "--ssh-listen", f"127.0.0.1:{self.ssh_port}", *extra],
                stdout=sink, stderr=sink, stdin=subprocess.DEVNULL,
                env=clean_env(**site.environ, **env, CONDUIT_SERVER__NODE_NAME=name),
            )  # fmt: skip

    @property
    def ports(self) -> NodePorts:
        return NodePorts(self.ssh_port, self.portal)

    def wait_ready(self, site: Site, limit: float = 90) -> None:
        """Until every worker of the node serves SSH (each prints the line once its listener
        is bound: with SO_REUSEPORT a connection made before a worker binds can only reach
        the others) and has joined the cluster."""
        deadline = time.monotonic() + limit
        while self.log.read_text().count("Conduit SSH on") < (self.workers or 1):
            if self.proc.poll() is not None:
                text = self.log.read_text()
                if "--workers" in text and "unrecognized arguments" in text:
                    raise WorkersUnavailable(text.strip().splitlines()[-1])
                raise RuntimeError(f"node {self.name} exited: {text[-800:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {self.name} did not start: {self.log.read_text()[-800:]}")
            time.sleep(0.05)
        while asyncio.run(site.members(self.name)) < (self.workers or 1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"node {self.name}: workers did not join the cluster")
            time.sleep(0.1)

    def sigkill(self) -> None:
        """The node dies at once: no shutdown, no session ends, heartbeats stop."""
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        stop(self.proc)


@dataclass
class Site:
    """The shared parts: database, data directory, sshd, client configs."""

    work: Path
    database: str
    environ: dict[str, str]
    data: Path
    sshd: subprocess.Popen[bytes]
    rig: Rig  # argv builders (ProxyJump, certificate logins); its gateway port is set per node

    async def members(self, node: str) -> int:
        conn = await asyncpg.connect(self.dsn, timeout=5)
        try:
            found = await conn.fetchval("SELECT count(*) FROM nodes WHERE name = $1", node)
            return int(found)
        finally:
            await conn.close()

    @property
    def dsn(self) -> str:
        return self.environ["CONDUIT_DATABASE__URL"].replace("+asyncpg", "")

    def start_node(self, name: str, workers: int | None, **env: str) -> Node:
        """A node with ``workers`` worker processes (None: no option given), taking PROXY
        headers from the balancer; ``WorkersUnavailable`` if the option is refused."""
        env = {"CONDUIT_SSH__PROXY_PROTOCOL_FROM": f'["{BALANCER}/32"]', **env}
        node = Node(name, self, workers, env)
        try:
            node.wait_ready(self)
        except BaseException:
            node.stop()
            raise
        return node

    async def close(self) -> None:
        stop(self.sshd)
        await pg_exec(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


async def add_admin(data: Path, environ: dict[str, str]) -> None:
    settings = load_settings(None, Overrides(data_dir=data), environ=environ)
    services = Services.build(settings, load_keyring(settings))
    try:
        async with services.sessions() as db, db.begin():
            await create_user(
                db, username=ADMIN, roles=["admin"], now=services.clock(),
                master_key=services.keys.master_key, password=ADMIN_PASSWORD,
                totp_secret=ADMIN_TOTP, status="active",
            )  # fmt: skip
    finally:
        await services.close()


async def build(work: Path) -> Site:
    """Database, data directory (init + migrations), sshd, users, asset and grants."""
    name = f"conduit_bench_{secrets.token_hex(6)}"
    await pg_exec(f'CREATE DATABASE "{name}"')
    environ = {"CONDUIT_DATABASE__URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"}
    sshd_dir = work / "sshd"
    try:
        sshd_port, jump_port, sshd = start_sshd(sshd_dir)
    except BaseException:
        await pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        raise
    site: Site | None = None
    try:
        key = sshd_dir / "client_ed25519"
        config, vendor_key = await asyncio.to_thread(write_client_configs, work, key)
        data = work / "data"
        await asyncio.to_thread(init_data_dir, data, env=clean_env(**environ))
        await populate(data, sshd_dir, sshd_port, 0, vendor_key, environ=environ)
        await add_admin(data, environ)
        rig = Rig(work, sshd_port, jump_port, 0, 0, key, config, work / "unused", data, {})
        site = Site(work, name, environ, data, sshd, rig)
        return site
    finally:
        if site is None:
            stop(sshd)
            await pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
