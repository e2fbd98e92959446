"""`conduit init`: creates private key material once, keeps it, replaces only with --force."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import asyncssh
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from tests.support import conduit, init_data_dir

KEY_FILES = [
    "keys/master.key",
    "keys/signing.key",
    "ssh/ssh_host_ed25519_key",
    "ssh/ssh_host_ecdsa_key",
    "keys/ssh_user_ca",
    "tls/portal.key",
    "tls/portal.crt",
]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(data_dir: Path) -> dict[str, bytes]:
    return {name: (data_dir / name).read_bytes() for name in KEY_FILES}


def test_init_creates_private_files_and_is_idempotent(data_dir: Path) -> None:
    first = conduit("init", "--data-dir", str(data_dir))
    assert first.returncode == 0, first.stderr
    assert mode(data_dir) == 0o700
    for sub in ("keys", "ssh", "tls", "recordings"):
        assert mode(data_dir / sub) == 0o700, sub
    for name in KEY_FILES:
        assert mode(data_dir / name) == 0o600, name
    before = snapshot(data_dir)

    second = conduit("init", "--data-dir", str(data_dir))
    assert second.returncode == 0, second.stderr
    assert "created" not in second.stdout and "replaced" not in second.stdout
    assert snapshot(data_dir) == before

    forced = conduit("init", "--data-dir", str(data_dir), "--force")
    assert forced.returncode == 0, forced.stderr
    after = snapshot(data_dir)
    assert all(after[name] != before[name] for name in KEY_FILES)
    for name in KEY_FILES:
        assert mode(data_dir / name) == 0o600, name


def test_init_tightens_an_existing_data_dir(data_dir: Path) -> None:
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    assert conduit("init", "--data-dir", str(data_dir)).returncode == 0
    assert mode(data_dir) == 0o700


def test_init_only_fills_in_missing_keys(data_dir: Path) -> None:
    assert conduit("init", "--data-dir", str(data_dir)).returncode == 0
    before = snapshot(data_dir)
    (data_dir / "keys/signing.key").unlink()
    result = conduit("init", "--data-dir", str(data_dir))
    assert result.returncode == 0
    assert f"created  {data_dir / 'keys/signing.key'}" in result.stdout
    after = snapshot(data_dir)
    assert after["keys/master.key"] == before["keys/master.key"]
    assert after["keys/signing.key"] != before["keys/signing.key"]


def test_a_data_dir_from_before_certificates_gets_its_user_ca(
    data_dir: Path, free_port: int
) -> None:
    init_data_dir(data_dir)
    (data_dir / "keys/ssh_user_ca").unlink()  # what an older `conduit init` left
    refused = conduit(
        "serve", "--data-dir", str(data_dir), "--portal-listen", f"127.0.0.1:{free_port}",
        "--ssh-listen", "127.0.0.1:0",
    )  # fmt: skip
    assert refused.returncode == 1
    assert f"SSH user CA key {data_dir / 'keys/ssh_user_ca'} is missing" in refused.stderr
    assert "run `conduit init`" in refused.stderr and "Traceback" not in refused.stderr
    added = conduit("init", "--data-dir", str(data_dir))
    assert added.returncode == 0, added.stderr
    assert added.stdout.count("created") == 1
    assert f"created  {data_dir / 'keys/ssh_user_ca'}" in added.stdout
    ca = asyncssh.import_private_key((data_dir / "keys/ssh_user_ca").read_bytes())
    assert ca.algorithm == b"ssh-ed25519"


def test_key_material_is_usable(data_dir: Path) -> None:
    assert conduit("init", "--data-dir", str(data_dir)).returncode == 0
    signing = load_pem_private_key((data_dir / "keys/signing.key").read_bytes(), None)
    assert isinstance(signing, ed25519.Ed25519PrivateKey)
    host = asyncssh.import_private_key((data_dir / "ssh/ssh_host_ed25519_key").read_bytes())
    assert host.algorithm == b"ssh-ed25519"
    cert = x509.load_pem_x509_certificate((data_dir / "tls/portal.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert cert.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=300)


def test_serve_refuses_a_world_readable_key(data_dir: Path, free_port: int) -> None:
    init_data_dir(data_dir)
    (data_dir / "keys/master.key").chmod(0o644)
    result = conduit(
        "serve",
        "--data-dir",
        str(data_dir),
        "--portal-listen",
        f"127.0.0.1:{free_port}",
        "--ssh-listen",
        "127.0.0.1:0",
    )
    assert result.returncode == 1
    assert "master key" in result.stderr and "chmod 600" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_without_init_says_what_to_run(tmp_path: Path, free_port: int) -> None:
    result = conduit(
        "serve",
        "--data-dir",
        str(tmp_path / "never"),
        "--portal-listen",
        f"127.0.0.1:{free_port}",
    )
    assert result.returncode == 1
    assert "run `conduit init`" in result.stderr


def test_commands_print_no_dependency_warnings(data_dir: Path) -> None:
    """asyncssh's DSA lookups under cryptography >= 51 printed ten warning lines per command."""
    where = ("--data-dir", str(data_dir))
    for args in (("--help",), ("init", *where), ("db", "upgrade", *where)):
        done = conduit(*args)
        assert done.returncode == 0, done.stderr
        assert "Warning" not in done.stderr and "DSA" not in done.stderr, done.stderr
