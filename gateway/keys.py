"""Key material on disk: create it once (``conduit init``), load and check it at start.

Owns the data-directory layout for secrets: master key, Ed25519 signing key, SSH host keys,
the SSH user CA key (signs user certificates) and the portal's self-signed TLS certificate.
Files are created 0600 with ``O_EXCL`` so no other mode is ever visible, never overwritten
unless forced, and refused at load time when group- or world-accessible. Does not encrypt
or sign anything itself.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import ipaddress
import os
import secrets
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from gateway.config import Settings
from gateway.errors import KeyMaterialError

MASTER_KEY_BYTES = 32
SSH_KEY_ALGORITHMS = {"ed25519": "ssh-ed25519", "ecdsa": "ecdsa-sha2-nistp256"}


@dataclass
class InitReport:
    """What ``init`` did with each file: created, replaced or kept."""

    actions: list[tuple[str, Path]] = field(default_factory=list)

    def add(self, action: str, path: Path) -> None:
        self.actions.append((action, path))


def ensure_private_dir(path: Path) -> bool:
    """Create ``path`` (and parents) and make it 0700. Returns True when it was created."""
    created = not path.exists()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        path.chmod(0o700)
    return created


def write_private_file(path: Path, content: bytes, *, force: bool) -> str:
    """Write ``content`` to ``path`` with mode 0600 from the first byte.

    Without ``force`` an existing file is kept ("kept"). With it the new content goes to a
    temporary file that replaces the old one atomically ("replaced").
    """
    ensure_private_dir(path.parent)
    if path.exists() and not force:
        return "kept"
    existed = path.exists()
    target = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp") if existed else path
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    if existed:
        os.replace(target, path)
    return "replaced" if existed else "created"


def _ensure(path: Path, make: Callable[[], bytes], force: bool, report: InitReport) -> None:
    if path.exists() and not force:
        report.add("kept", path)
        return
    report.add(write_private_file(path, make(), force=force), path)


def _make_master_key() -> bytes:
    return base64.b64encode(secrets.token_bytes(MASTER_KEY_BYTES)) + b"\n"


def _make_signing_key() -> bytes:
    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _make_ssh_host_key(algorithm: str) -> bytes:
    return bytes(asyncssh.generate_private_key(algorithm).export_private_key("openssh"))


def _make_ssh_user_ca() -> bytes:
    key = asyncssh.generate_private_key("ssh-ed25519", comment="conduit-user-ca")
    return bytes(key.export_private_key("openssh"))


def _make_tls_pair() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    hostname = socket.gethostname()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Conduit portal {hostname}")])
    now = dt.datetime.now(dt.UTC)
    alt_names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    if hostname and hostname != "localhost":
        alt_names.append(x509.DNSName(hostname))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=397))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def init_key_material(settings: Settings, *, force: bool = False) -> InitReport:
    """Create the data directory and every missing key; idempotent unless ``force``."""
    report = InitReport()
    report.add("created" if ensure_private_dir(settings.data_dir) else "kept", settings.data_dir)
    ensure_private_dir(settings.recordings_dir)
    _ensure(settings.master_key_file, _make_master_key, force, report)
    _ensure(settings.signing_key_file, _make_signing_key, force, report)
    if not settings.ssh.host_key_files:
        for kind, path in zip(SSH_KEY_ALGORITHMS, settings.ssh_host_key_files, strict=True):
            make = functools.partial(_make_ssh_host_key, SSH_KEY_ALGORITHMS[kind])
            _ensure(path, make, force, report)
    _ensure(settings.ssh_user_ca_key_file, _make_ssh_user_ca, force, report)
    if settings.portal.tls and settings.portal.tls_cert_file is None:
        cert_file, key_file = settings.tls_cert_file, settings.tls_key_file
        if force or not (cert_file.exists() and key_file.exists()):
            cert_pem, key_pem = _make_tls_pair()
            report.add(write_private_file(key_file, key_pem, force=True), key_file)
            report.add(write_private_file(cert_file, cert_pem, force=True), cert_file)
        else:
            report.add("kept", key_file)
            report.add("kept", cert_file)
    return report


def _read_private(path: Path, what: str) -> bytes:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyMaterialError(
            f"{what} {path} is missing: run `conduit init`", f"missing {path}"
        ) from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise KeyMaterialError(
            f"{what} {path} is accessible by group or others: chmod 600 it",
            f"unsafe mode {oct(stat.S_IMODE(st.st_mode))} on {path}",
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyMaterialError(f"{what} {path} is not readable", str(exc)) from None


@dataclass(frozen=True)
class KeyRing:
    """The keys a running gateway holds. Its repr never shows key bytes."""

    master_key: bytes = field(repr=False)
    signing_key: ed25519.Ed25519PrivateKey = field(repr=False)
    ssh_host_keys: tuple[asyncssh.SSHKey, ...] = field(repr=False)
    tls_cert_file: Path | None
    tls_key_file: Path | None
    # Signs SSH user certificates. Required when SSH is enabled; otherwise loaded if present.
    ssh_user_ca: asyncssh.SSHKey | None = field(default=None, repr=False)

    def ssh_host_fingerprints(self) -> list[tuple[str, str]]:
        """(algorithm, ``SHA256:...``) of each SSH host key, as OpenSSH shows them when it
        asks whether to trust the gateway: what a user compares before the first login."""
        return [(key.get_algorithm(), key.get_fingerprint("sha256")) for key in self.ssh_host_keys]


def load_keyring(settings: Settings, environ: dict[str, str] | None = None) -> KeyRing:
    """Load and check every key the configuration names; raise ``KeyMaterialError``."""
    env = os.environ if environ is None else environ
    if env.get("CONDUIT_MASTER_KEY"):
        encoded = env["CONDUIT_MASTER_KEY"].encode()
        source = "CONDUIT_MASTER_KEY"
    else:
        encoded = _read_private(settings.master_key_file, "master key").strip()
        source = str(settings.master_key_file)
    try:
        master = base64.b64decode(encoded, validate=True)
    except ValueError:
        master = b""
    if len(master) != MASTER_KEY_BYTES:
        raise KeyMaterialError(f"master key in {source} is not 32 bytes of base64")
    pem = _read_private(settings.signing_key_file, "signing key")
    try:
        signing = serialization.load_pem_private_key(pem, password=None)
    except ValueError:
        raise KeyMaterialError(
            f"signing key {settings.signing_key_file} is not a PEM key"
        ) from None
    if not isinstance(signing, ed25519.Ed25519PrivateKey):
        raise KeyMaterialError(f"signing key {settings.signing_key_file} is not Ed25519")
    host_keys: list[asyncssh.SSHKey] = []
    if settings.ssh.enabled:
        for path in settings.ssh_host_key_files:
            data = _read_private(path, "SSH host key")
            try:
                host_keys.append(asyncssh.import_private_key(data))
            except (asyncssh.KeyImportError, ValueError):
                raise KeyMaterialError(f"SSH host key {path} is not a private key") from None
    user_ca = _load_user_ca(settings)
    cert: Path | None = None
    key: Path | None = None
    if settings.portal.tls:
        cert, key = settings.tls_cert_file, settings.tls_key_file
        _read_private(key, "TLS key")
        if not cert.is_file():
            raise KeyMaterialError(f"TLS certificate {cert} is missing: run `conduit init`")
    return KeyRing(master, signing, tuple(host_keys), cert, key, user_ca)


def _load_user_ca(settings: Settings) -> asyncssh.SSHKey | None:
    path = settings.ssh_user_ca_key_file
    if not settings.ssh.enabled and not path.exists():
        return None
    # A data directory made before certificates existed lacks this file: the message
    # names it and `conduit init`, which adds only what is missing.
    data = _read_private(path, "SSH user CA key")
    try:
        return asyncssh.import_private_key(data)
    except (asyncssh.KeyImportError, ValueError):
        raise KeyMaterialError(f"SSH user CA key {path} is not a private key") from None


def keyring_files_present(keys: KeyRing, settings: Settings) -> bool:
    """Readiness: the files the running process loaded are still there and private."""
    paths = (
        [settings.signing_key_file, *settings.ssh_host_key_files]
        if keys.ssh_host_keys
        else [settings.signing_key_file]
    )
    if keys.tls_key_file is not None:
        paths.append(keys.tls_key_file)
    if keys.ssh_user_ca is not None:
        paths.append(settings.ssh_user_ca_key_file)
    try:
        return all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in paths)
    except OSError:
        return False
