"""``conduit asset pin-cert``: pinning a desktop target's TLS certificate from the command line,
against real targets (TigerVNC ``Xvnc`` with VeNCrypt X.509; xrdp when root) and by hand."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.authz import certificates
from gateway.config import Overrides, load_settings
from gateway.db.engine import make_engine, make_sessionmaker
from tests.desktop_targets import make_certificate, missing_reason, start_xvnc
from tests.rdp_target import RDPTarget
from tests.support import conduit, init_data_dir

FINGERPRINT = "ab" * 32


def _pins(data_dir: Path, asset: str) -> tuple[str, ...]:
    async def run() -> tuple[str, ...]:
        engine = make_engine(load_settings(None, Overrides(data_dir=data_dir), environ={}))
        try:
            async with make_sessionmaker(engine)() as db:
                return await certificates.pinned(db, asset)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _ok(data_dir: Path, *args: str) -> str:
    done = conduit(*args, "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _audit(data_dir: Path, action: str) -> list[dict[str, object]]:
    lines = _ok(data_dir, "audit", "export").splitlines()
    return [e for e in map(json.loads, lines) if e["action"] == action]


def _asset(data_dir: Path, name: str, protocol: str, port: int) -> None:
    _ok(data_dir, "asset", "add", name, "--host", "127.0.0.1", "--port", str(port),
        "--protocol", protocol)  # fmt: skip


def test_given_fingerprints_pin_replace_and_are_audited(data_dir: Path) -> None:
    init_data_dir(data_dir)
    _asset(data_dir, "hmi-rdp", "rdp", 3389)
    colons = ":".join([FINGERPRINT.upper()[i : i + 2] for i in range(0, 64, 2)])
    out = _ok(data_dir, "asset", "pin-cert", "hmi-rdp", "--fingerprint", colons)
    assert FINGERPRINT in out
    other = "cd" * 32
    _ok(data_dir, "asset", "pin-cert", "hmi-rdp", "--fingerprint", other)
    assert _pins(data_dir, "hmi-rdp") == (FINGERPRINT, other)
    _ok(data_dir, "asset", "pin-cert", "hmi-rdp", "--fingerprint", other, "--replace")
    assert _pins(data_dir, "hmi-rdp") == (other,)
    events = _audit(data_dir, "certificate.pinned")
    assert [e["detail"]["sha256"] for e in events] == [FINGERPRINT, other, other]  # type: ignore[index]
    assert events[-1]["detail"]["replace"] is True  # type: ignore[index]
    assert events[-1]["target"] == "hmi-rdp"


def test_bad_input_is_refused_and_pins_nothing(data_dir: Path) -> None:
    init_data_dir(data_dir)
    _asset(data_dir, "plc-ssh", "ssh", 22)
    _asset(data_dir, "hmi-vnc", "vnc", 5900)
    d = ("--data-dir", str(data_dir))
    cases = [
        (("asset", "pin-cert", "hmi-vnc", "--fingerprint", "not-hex"), "64 hex digits"),
        (("asset", "pin-cert", "hmi-vnc", "--fingerprint", "ab" * 31), "64 hex digits"),
        (("asset", "pin-cert", "nowhere", "--fingerprint", FINGERPRINT), "does not exist"),
        (("asset", "pin-cert", "plc-ssh", "--fingerprint", FINGERPRINT), "pin-hostkey"),
    ]
    for args, words in cases:
        done = conduit(*args, *d)
        assert done.returncode != 0, args
        assert words in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    both = conduit("asset", "pin-cert", "hmi-vnc", "--scan", "--fingerprint", FINGERPRINT, *d)
    assert both.returncode == 2  # argparse: one of the two
    assert _pins(data_dir, "hmi-vnc") == ()
    assert _pins(data_dir, "plc-ssh") == ()
    assert _audit(data_dir, "certificate.pinned") == []


def test_scan_reads_the_vnc_targets_certificate(data_dir: Path, tmp_path: Path) -> None:
    missing = missing_reason()
    if missing:
        pytest.skip(missing)
    init_data_dir(data_dir)
    cert, key, sha256 = make_certificate(tmp_path)
    target = start_xvnc(tmp_path / "xvnc", security="X509None", certificate=(cert, key))
    try:
        _asset(data_dir, "hmi-vnc", "vnc", target.port)
        out = _ok(data_dir, "asset", "pin-cert", "hmi-vnc", "--scan")
        assert sha256 in out
        assert _pins(data_dir, "hmi-vnc") == (sha256,)
        [event] = _audit(data_dir, "certificate.pinned")
        assert event["detail"] == {"sha256": sha256, "replace": False, "how": "scan"}
    finally:
        target.stop()


def test_scan_of_a_vnc_target_without_tls_is_refused(data_dir: Path, tmp_path: Path) -> None:
    missing = missing_reason()
    if missing:
        pytest.skip(missing)
    init_data_dir(data_dir)
    target = start_xvnc(tmp_path / "xvnc", security="None")
    try:
        _asset(data_dir, "hmi-vnc", "vnc", target.port)
        done = conduit("asset", "pin-cert", "hmi-vnc", "--scan", "--data-dir", str(data_dir))
        assert done.returncode != 0
        assert "Traceback" not in done.stderr and done.stderr.strip()
        assert _pins(data_dir, "hmi-vnc") == ()
    finally:
        target.stop()


def test_scan_reads_the_rdp_targets_certificate(data_dir: Path, rdp_target: RDPTarget) -> None:
    init_data_dir(data_dir)
    port, fingerprint = rdp_target.port, rdp_target.fingerprint
    _asset(data_dir, "hmi-rdp", "rdp", port)
    _ok(data_dir, "asset", "pin-cert", "hmi-rdp", "--scan")
    assert _pins(data_dir, "hmi-rdp") == (certificates.normalize(fingerprint),)
