"""Format 2 against format 1: the previous release's recording still verifies and exports
byte for byte; random event streams round-trip; hostile format-2 chunks are refused."""

from __future__ import annotations

import atexit
import hashlib
import hmac
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from recording_helpers import STARTED_AT, Env, frames, make_env, run

from recordings import (
    DataKeyRing,
    Event,
    Integrity,
    Kind,
    LocalDataKeyStore,
    LocalRecordingStore,
    WriterPolicy,
    export_asciicast,
    recover_recording,
    start_recording,
)
from recordings.container import (
    ENCODING_RAW,
    ENCODING_ZSTD,
    FRAME_CHUNK,
    FRAME_HEADER,
    MAGIC,
    SubKeys,
    chunk_aad_v2,
    frame,
    header_hash,
    read_frame,
    split_header_body,
)
from recordings.terminal import TerminalEvent, asciicast_lines, resize_payload

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "v1"
FIXTURE_ID = (FIXTURE / "recording_id").read_text().strip()


def _fixture_env(tmp_path: Path) -> Env:
    """The committed format-1 recording and its wrapped key, under the test helpers' keys."""
    shutil.copytree(FIXTURE, tmp_path / "v1")
    (tmp_path / "v1" / "keys").chmod(0o700)
    for key in (tmp_path / "v1" / "keys").iterdir():
        key.chmod(0o600)
    env = make_env(tmp_path / "v1", 1)
    env.store = LocalRecordingStore(tmp_path / "v1" / "rec")
    env.key_store = LocalDataKeyStore(tmp_path / "v1" / "keys")
    env.data_keys = DataKeyRing(env.key_store, env.master)
    return env


def test_previous_release_recording_verifies_and_exports_identically(tmp_path: Path) -> None:
    env = _fixture_env(tmp_path)
    events, result = env.read(FIXTURE_ID)
    assert result.status is Integrity.INTACT
    assert result.header is not None and result.header.format_version == 1
    assert result.chain_hash_name == "SHA-256"
    assert result.intact_chunks == int((FIXTURE / "chunks").read_text())
    for include_input, name in ((False, "export.cast"), (True, "export-with-input.cast")):
        out = io.StringIO()
        export_asciicast(result.header, events, out, include_input=include_input)
        assert out.getvalue() == (FIXTURE / name).read_text(), name


def test_previous_release_recording_recovers_after_a_cut(tmp_path: Path) -> None:
    env = _fixture_env(tmp_path)
    path = env.path(FIXTURE_ID)
    data = path.read_bytes()
    chunks = [f for f in frames(data) if f[0] == FRAME_CHUNK]
    _, start, end = chunks[5]
    path.write_bytes(data[: (start + end) // 2])
    result = recover_recording(
        env.store, FIXTURE_ID, env.data_keys.resolve, env.signing_key, env.verify_keys
    )
    assert result.status is Integrity.INCOMPLETE and result.signed and result.intact_chunks == 5
    assert result.header is not None and result.header.format_version == 1


def test_previous_release_recording_flipped_byte_names_its_chunk(tmp_path: Path) -> None:
    env = _fixture_env(tmp_path)
    data = bytearray(env.path(FIXTURE_ID).read_bytes())
    _, start, end = [f for f in frames(bytes(data)) if f[0] == FRAME_CHUNK][7]
    data[(start + end) // 2] ^= 0x10
    result = env.verify_bytes(bytes(data))
    assert (result.status, result.tampered_chunk) == (Integrity.TAMPERED, 7)


async def test_new_recordings_are_format_2_with_blake3_and_zstd(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    writer = await start_recording(
        store=env.store,
        data_keys=env.data_keys,
        signing_key=env.signing_key,
        kind=Kind.TERMINAL,
        started_at=STARTED_AT,
        metadata={},
        clock=time.monotonic,
        on_failure=env.failures.append,
    )
    text = b"drwxr-xr-x 2 root root 4096 Dec  6 07:00 /usr/lib/x86_64-linux-gnu\r\n" * 2000
    assert writer.record(TerminalEvent.OUTPUT, text)
    outcome = await writer.close("closed")
    data = env.path(writer.recording_id).read_bytes()
    doc = json.loads(split_header_body(frames(data)[0] and _header_body(data))[0])
    assert (doc["format_version"], doc["hash"], doc["compression"]) == (2, "BLAKE3", "zstd")
    assert outcome.output_bytes == len(text)
    assert outcome.stored_bytes == len(data) < len(text) // 20
    result = env.verify(writer.recording_id)
    assert result.status is Integrity.INTACT and result.chain_hash_name == "BLAKE3"


def _header_body(data: bytes) -> bytes:
    stream = io.BytesIO(data[len(MAGIC) :])
    found = read_frame(stream)
    assert found is not None and found[0] == FRAME_HEADER
    return found[1]


# Hypothesis: one store for every example (a recording per example, written by the real writer).
_ROOT = Path(tempfile.mkdtemp(prefix="conduit-rec-roundtrip-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)
_ENVS = {version: make_env(_ROOT / f"v{version}", version) for version in (1, 2)}

_EVENT = st.one_of(
    st.tuples(st.just(int(TerminalEvent.OUTPUT)), st.binary(max_size=3000)),
    st.tuples(
        st.just(int(TerminalEvent.OUTPUT)),
        st.text(max_size=400).map(lambda t: (t * 7).encode()),  # compressible text
    ),
    st.tuples(st.just(int(TerminalEvent.INPUT)), st.binary(max_size=40)),
    st.tuples(
        st.just(int(TerminalEvent.RESIZE)),
        st.tuples(st.integers(1, 500), st.integers(1, 200)).map(lambda s: resize_payload(*s)),
    ),
    st.tuples(st.just(int(TerminalEvent.MARKER)), st.text(max_size=30).map(str.encode)),
)


@pytest.mark.parametrize("version", [1, 2])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(_EVENT, max_size=60), chunk=st.sampled_from([64, 1024, 64 << 10]))
def test_random_event_streams_round_trip_write_verify_export(
    version: int, events: list[tuple[int, bytes]], chunk: int
) -> None:
    env = _ENVS[version]
    # A pty session (size first), whose output the export keeps byte-exact.
    events = [(int(TerminalEvent.RESIZE), resize_payload(80, 24)), *events]
    rid = run(env.write(events, policy=WriterPolicy(max_unsynced_bytes=chunk)))
    read, result = env.read(rid)
    assert result.status is Integrity.INTACT
    assert result.header is not None and result.header.format_version == version
    assert [(e.type, e.payload) for e in read] == events
    offsets = [e.offset_us for e in read]
    assert offsets == sorted(offsets)
    # Export of what was read equals export of what was written (at the offsets recorded).
    written_events = [Event(r.offset_us, t, p) for r, (t, p) in zip(read, events, strict=True)]
    expected = "".join(asciicast_lines(result.header, written_events, include_input=True))
    out = io.StringIO()
    export_asciicast(result.header, iter(read), out, include_input=True)
    assert out.getvalue() == expected
    lines = [json.loads(line) for line in out.getvalue().splitlines()[1:]]
    written = b"".join(p for t, p in events if t == TerminalEvent.OUTPUT)
    exported = "".join(line[2] for line in lines if line[1] == "o")
    assert exported == written.decode("utf-8", "replace")


# Hostile chunks: sealed with the right key (as a data-key holder could) but lying about
# their length or encoding. Authentication passes; the bounds must still hold.


def _forge(env: Env, rid: str, stored: bytes, encoding: int, plain_len: int) -> bytes:
    data = env.path(rid).read_bytes()
    head_end = frames(data)[0][2]
    header_bytes = data[:head_end]
    digest = header_hash(header_bytes, 2)
    result = env.verify_bytes(data)
    assert result.header is not None
    keys = SubKeys.derive(env.data_keys.resolve(result.header.data_key_id))
    nonce = b"\x01" * 12
    aad = chunk_aad_v2(rid, 0, digest, encoding, plain_len)
    body = (
        (0).to_bytes(8, "big")
        + nonce
        + bytes([encoding])
        + plain_len.to_bytes(4, "big")
        + AESGCM(keys.chunk_key).encrypt(nonce, stored, aad)
    )
    return header_bytes + frame(FRAME_CHUNK, body)


@pytest.mark.parametrize(
    "make",
    [
        # a zstd frame that expands beyond the length the chunk declares
        lambda: (zstandard.ZstdCompressor().compress(b"\x01\x00\x00" + b"A" * 1_000_000), 10),
        # the same without a content size in the frame (streamed): bounded by plain_len
        lambda: (
            zstandard.ZstdCompressor(write_content_size=False).compress(b"A" * 1_000_000),
            10,
        ),
        # a frame shorter than declared
        lambda: (zstandard.ZstdCompressor().compress(b"\x01\x00\x00"), 500),
        # not zstd at all
        lambda: (b"\x00" * 64, 64),
    ],
)
async def test_authenticated_but_lying_zstd_chunk_is_tampered(tmp_path: Path, make: object) -> None:
    env = make_env(tmp_path)
    rid = await env.write([])
    stored, plain_len = make()  # type: ignore[operator]
    result = env.verify_bytes(_forge(env, rid, stored, ENCODING_ZSTD, plain_len))
    assert (result.status, result.tampered_chunk) == (Integrity.TAMPERED, 0), result.detail


async def test_unknown_encoding_and_oversized_length_are_tampered(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    rid = await env.write([])
    for encoding, plain_len in ((7, 3), (ENCODING_RAW, 4), (ENCODING_RAW, (32 << 20) + 1)):
        result = env.verify_bytes(_forge(env, rid, b"\x01\x00\x00", encoding, plain_len))
        assert (result.status, result.tampered_chunk) == (Integrity.TAMPERED, 0)
    ok = env.verify_bytes(_forge(env, rid, b"\x01\x00\x00", ENCODING_RAW, 3))
    assert ok.status is Integrity.INCOMPLETE and ok.intact_chunks == 1  # the control case


@pytest.mark.parametrize(
    "change",
    [
        {"hash": "SHA-256"},  # format 2 claiming format 1's hash
        {"compression": None},
        {"format_version": 3},
        {"format_version": True},
    ],
)
async def test_header_whose_version_and_hash_disagree_is_tampered(
    tmp_path: Path, change: dict[str, object]
) -> None:
    env = make_env(tmp_path)
    rid = await env.write([(TerminalEvent.OUTPUT, b"x")])
    data = env.path(rid).read_bytes()
    doc_raw, _ = split_header_body(_header_body(data))
    doc = {**json.loads(doc_raw), **change}
    doc = {k: v for k, v in doc.items() if v is not None}
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    keys = SubKeys.derive(env.data_keys.resolve(doc["data_key_id"]))  # type: ignore[arg-type]
    mac = hmac.new(keys.header_mac_key, b"conduit header v1\x00" + raw, hashlib.sha256).digest()
    forged = MAGIC + frame(FRAME_HEADER, raw + mac) + data[frames(data)[0][2] :]
    result = env.verify_bytes(forged)
    assert (result.status, result.location) == (Integrity.TAMPERED, "header"), result.detail


def test_format_2_stores_noise_raw_pauses_compression_after_it_and_compresses_text(
    tmp_path: Path,
) -> None:
    env = make_env(tmp_path)
    text = (TerminalEvent.OUTPUT, b"ok\r\n" * 1000)
    noise = [(TerminalEvent.OUTPUT, os.urandom(4000)) for _ in range(2)]
    # text; noise (raw, pause 1); text (skipped: raw); noise (raw, pause 2); text, text
    # (skipped: raw); text (compressed again)
    rid = run(
        env.write(
            [text, noise[0], text, noise[1], text, text, text],
            policy=WriterPolicy(max_unsynced_bytes=1000),
        )
    )
    data = env.path(rid).read_bytes()
    encodings = [data[s + 9 + 8 + 12] for t, s, _ in frames(data) if t == FRAME_CHUNK]
    z, r = ENCODING_ZSTD, ENCODING_RAW
    assert encodings == [z, r, r, r, r, r, z]
    events, result = env.read(rid)
    assert result.status is Integrity.INTACT
    assert [e.payload for e in events] == [p for _, p in [text, noise[0], text, noise[1]]] + [
        text[1]
    ] * 3
