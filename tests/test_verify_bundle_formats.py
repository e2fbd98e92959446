"""The bundle's offline check (gateway/web/verify_bundle.py) on both container formats: the
previous release's format-1 recording (committed fixture) and a format-2 one written now."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.web import verify_bundle
from recordings import (
    DataKeyRing,
    Kind,
    LocalDataKeyStore,
    LocalRecordingStore,
    MasterKey,
    WriterPolicy,
    start_recording,
)
from recordings.terminal import TerminalEvent

FIXTURE = Path(__file__).resolve().parent / "recordings" / "fixtures" / "v1"
SIGNING = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))  # the fixture's key
STARTED_AT = dt.datetime(2026, 12, 6, 7, 0, tzinfo=dt.UTC)
PEM = SIGNING.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def _bundle(directory: Path, recording: bytes) -> Path:
    directory.mkdir()
    (directory / "r.rec").write_bytes(recording)
    (directory / "signing-key.pem").write_bytes(PEM)
    return directory


def _v1() -> bytes:
    recording_id = (FIXTURE / "recording_id").read_text().strip()
    return next(FIXTURE.rglob(f"{recording_id}.rec")).read_bytes()


def _v2(root: Path) -> bytes:
    async def write() -> bytes:
        store = LocalRecordingStore(root / "rec")
        ring = DataKeyRing(LocalDataKeyStore(root / "keys"), MasterKey("m1", bytes(range(32))))
        writer = await start_recording(
            store=store, data_keys=ring, signing_key=SIGNING, kind=Kind.TERMINAL,
            started_at=STARTED_AT, metadata={}, clock=time.monotonic,
            on_failure=print, policy=WriterPolicy(max_unsynced_bytes=512),
        )  # fmt: skip
        for i in range(20):
            writer.record(TerminalEvent.OUTPUT, f"line {i} of plant output\r\n".encode() * 30)
        await writer.close("closed")
        with store.open_read(writer.recording_id) as stream:
            return stream.read()

    return asyncio.run(write())


@pytest.mark.parametrize("version", [1, 2])
def test_offline_check_names_format_and_hash_and_catches_swaps(
    tmp_path: Path, version: int
) -> None:
    data = _v1() if version == 1 else _v2(tmp_path / "w")
    summary = verify_bundle.verify(_bundle(tmp_path / "ok", data))
    chain = {1: "SHA-256", 2: "BLAKE3"}[version]
    assert summary.startswith(f"format {version} ({chain} chain): "), summary
    # Swap chunks 1 and 2, remove chunk 3, flip one bit of chunk 0, truncate chunk 4.
    frames = verify_bundle._frames(data)
    raw = [f[2] for f in frames]
    head = len(verify_bundle.MAGIC)
    prefix = data[:head]
    swapped = prefix + b"".join([raw[0], raw[1], raw[3], raw[2], *raw[4:]])
    removed = prefix + b"".join(raw[:4] + raw[5:])
    flipped = bytearray(data)
    flipped[head + len(raw[0]) + len(raw[1]) // 2] ^= 0x04
    cut = prefix + b"".join(raw[:5]) + raw[5][:-3]
    for name, damaged, expected in (
        ("swapped", swapped, verify_bundle.Tampered),
        ("removed", removed, verify_bundle.Tampered),
        ("flipped", bytes(flipped), verify_bundle.Tampered),
        ("cut", cut, verify_bundle.Incomplete),
    ):
        with pytest.raises(expected):
            verify_bundle.verify(_bundle(tmp_path / name, damaged))


def test_without_blake3_format_1_still_checks_and_format_2_says_it_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    v2 = _v2(tmp_path / "w")
    monkeypatch.setitem(sys.modules, "blake3", None)  # import blake3 -> ImportError
    assert verify_bundle.main(["verify_bundle.py", str(_bundle(tmp_path / "v1", _v1()))]) == 0
    assert capsys.readouterr().out == "intact\n"
    assert verify_bundle.main(["verify_bundle.py", str(_bundle(tmp_path / "v2", v2))]) == 3
    assert capsys.readouterr().out.startswith("cannot check: a format-2 recording needs")
