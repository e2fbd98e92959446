"""How a node reaches the owner of a session to relay a watch (decision 0024): it publishes
only its leaf certificate (never a chain, never a key), the relaying node pins exactly that
leaf and checks it before the one-time grant leaves, refuses an owner without TLS, and tries
enough connections to reach the owning worker among those sharing its port.

Real TLS websocket servers on 127.0.0.1 stand for the owner: one presenting the published
leaf, one an impostor leaf signed by the same intermediate (a published full chain used to
make that intermediate a trust anchor), one without TLS. Each records the grant headers it
receives: an impostor or a clear-text owner must receive none.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request

from gateway.config import Overrides, load_settings
from gateway.db import migrate
from gateway.errors import ConfigError
from gateway.keys import init_key_material, load_keyring
from gateway.services import Services
from gateway.sessions import cluster, watch_grants
from gateway.web import watch_relay
from tests.support import clean_env, conduit, init_data_dir

Key = ec.EllipticCurvePrivateKey


def _cert(
    name: str, issuer: tuple[x509.Name, Key] | None, ca: bool
) -> tuple[Key, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer if issuer is not None else (subject, key)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: Key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


class Chain:
    """A root, an intermediate, and two leaves it signed: the node's and an impostor's."""

    def __init__(self) -> None:
        root_key, root = _cert("root", None, True)
        inter_key, self.intermediate = _cert("inter", (root.subject, root_key), True)
        self.node_key, self.node = _cert("node-b", (self.intermediate.subject, inter_key), False)
        self.evil_key, self.evil = _cert("evil", (self.intermediate.subject, inter_key), False)


@pytest.fixture(scope="module")
def chain() -> Chain:
    return Chain()


@asynccontextmanager
async def _owner(
    tmp_path: Path, key: Key | None, chain_pem: str, seen: list[str]
) -> AsyncIterator[str]:
    """A websocket server standing for the owner (TLS with ``chain_pem`` unless ``key`` is
    None): records each grant header it receives, sends ``start`` and ends the watch."""
    tls = None
    if key is not None:
        (tmp_path / "chain.pem").write_text(chain_pem)
        (tmp_path / "key.pem").write_text(_key_pem(key))
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(tmp_path / "chain.pem", tmp_path / "key.pem")

    def record(connection: ServerConnection, request: Request) -> None:
        seen.append(request.headers.get(watch_relay.GRANT_HEADER, ""))

    async def handler(connection: ServerConnection) -> None:
        await connection.send(json.dumps({"type": "start"}))
        await connection.close(1000)

    async with serve(handler, "127.0.0.1", 0, ssl=tls, process_request=record) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"127.0.0.1:{port}"


async def test_an_impostor_leaf_from_the_published_intermediate_receives_no_grant(
    chain: Chain, tmp_path: Path
) -> None:
    seen: list[str] = []
    impostor = _pem(chain.evil) + _pem(chain.intermediate)
    async with _owner(tmp_path, chain.evil_key, impostor, seen) as address:
        # The node published its full chain (leaf + intermediate), as before this fix.
        published = _pem(chain.node) + _pem(chain.intermediate)
        token = secrets.token_urlsafe(32)
        opened = await watch_relay._open_owner(
            watch_grants.Contact(address, published), "s1", token
        )
    assert seen == []  # refused at the TLS handshake: the grant never left
    assert opened == "its certificate is not the one it published"


async def test_the_published_node_is_reached_and_gets_the_grant(
    chain: Chain, tmp_path: Path
) -> None:
    seen: list[str] = []
    served = _pem(chain.node) + _pem(chain.intermediate)
    async with _owner(tmp_path, chain.node_key, served, seen) as address:
        published = watch_grants.leaf_certificate(served)
        token = secrets.token_urlsafe(32)
        opened = await watch_relay._open_owner(
            watch_grants.Contact(address, published), "s1", token
        )
        assert isinstance(opened, tuple)
        owner, first = opened
        await owner.close()
    assert seen == [token]
    assert json.loads(first) == {"type": "start"}


async def test_an_owner_without_tls_receives_no_grant(tmp_path: Path) -> None:
    seen: list[str] = []
    async with _owner(tmp_path, None, "", seen) as address:
        opened = await watch_relay._open_owner(
            watch_grants.Contact(address, ""), "s1", secrets.token_urlsafe(32)
        )
    assert seen == []  # never in clear text
    assert opened == "it publishes no TLS certificate (its portal has no TLS)"


def test_a_node_publishes_its_leaf_alone_and_refuses_to_publish_a_key(
    chain: Chain, tmp_path: Path
) -> None:
    settings = load_settings(
        None, Overrides(data_dir=tmp_path), environ={"CONDUIT_CLUSTER__PORTAL_ADDRESS": "n:8443"}
    )
    assert settings.portal.tls
    full = _pem(chain.node) + _pem(chain.intermediate)
    assert watch_grants.own_contact(settings, full).certificate == _pem(chain.node)
    for combined in (full + _key_pem(chain.node_key), _key_pem(chain.node_key) + full):
        with pytest.raises(ConfigError, match="private key"):
            watch_grants.own_contact(settings, combined)
    with pytest.raises(ConfigError, match="no usable certificate"):
        watch_grants.own_contact(settings, "not a certificate")


def test_enough_attempts_reach_the_owning_worker() -> None:
    for workers in range(1, 65):
        miss = (1 - 1 / workers) ** watch_relay.attempts_for(workers)
        assert miss < 1e-3
    assert watch_relay.attempts_for(10_000) == watch_relay.attempts_for(64)


async def test_the_owner_contact_says_how_many_workers_share_its_port(
    database_url: str, tmp_path: Path
) -> None:
    built: list[Services] = []
    try:
        for worker in range(3):
            settings = load_settings(
                None,
                Overrides(data_dir=tmp_path / "data"),
                environ={
                    "CONDUIT_DATABASE__URL": database_url,
                    "CONDUIT_SERVER__NODE_NAME": "node-b",
                },
            )
            if worker == 0:
                init_key_material(settings)
            services = Services.build(settings, load_keyring(settings, environ={}), worker=worker)
            built.append(services)
            if worker == 0:
                await migrate.upgrade(services.engine)
            await cluster.join(services)
            async with services.sessions() as db, db.begin():
                contact = watch_grants.Contact("127.0.0.1:8443", "")
                await watch_grants.publish_contact(db, "node-b", worker, contact)
        async with built[0].sessions() as db:
            found = await watch_grants.contact_of(db, "node-b", 2)
        assert found is not None and found.workers == 3
    finally:
        for services in built:
            await services.close()


def test_serve_refuses_to_start_with_a_key_in_its_certificate_file(data_dir: Path) -> None:
    init_data_dir(data_dir)
    tls = data_dir / "tls"
    combined = tls / "combined.pem"  # HAProxy style: certificate then key
    combined.write_text((tls / "portal.crt").read_text() + (tls / "portal.key").read_text())
    combined.chmod(0o600)
    env = clean_env(
        CONDUIT_PORTAL__TLS_CERT_FILE=str(combined),
        CONDUIT_PORTAL__TLS_KEY_FILE=str(tls / "portal.key"),
    )
    result = conduit(
        "serve", "--data-dir", str(data_dir), "--portal-listen", "127.0.0.1:0",
        "--ssh-listen", "127.0.0.1:0", env=env, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr  # a configuration error
    assert "holds a private key" in result.stderr
    assert "Traceback" not in result.stderr and "PRIVATE KEY" not in result.stderr
