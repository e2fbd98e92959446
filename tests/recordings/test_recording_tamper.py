"""Verification verdicts: a flipped byte names its chunk; truncated; incomplete; bad footer."""

from __future__ import annotations

import atexit
import functools
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from recording_helpers import Env, frames, make_env, run

from recordings import Integrity, WriterPolicy
from recordings.container import (
    ENCODING_RAW,
    ENCODING_ZSTD,
    FRAME_CHUNK,
    FRAME_FOOTER,
    FRAME_HEADER,
    MAGIC,
    frame,
)
from recordings.terminal import TerminalEvent

CHUNKS = 6


VERSION: int = 2  # the format ``sample()`` writes; the ``version`` fixture sets it per test


@pytest.fixture(autouse=True, params=[1, 2], ids=["v1", "v2"])
def version(request: pytest.FixtureRequest) -> Iterator[int]:
    """Every test here runs against a format-1 and a format-2 recording."""
    global VERSION
    VERSION = int(request.param)
    yield VERSION
    VERSION = 2


def _payload(i: int) -> bytes:
    # Even chunks compress (format 2 stores them zstd), odd ones are noise (stored raw).
    return bytes([i]) * 900 if i % 2 == 0 else random.Random(i).randbytes(900)


@functools.cache
def _sample(version: int) -> tuple[Env, bytes, list[tuple[int, int, int]]]:
    root = Path(tempfile.mkdtemp(prefix="conduit-rec-tamper-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    env = make_env(root, version)
    events = [(TerminalEvent.OUTPUT, _payload(i)) for i in range(CHUNKS)]
    rid = run(env.write(events, policy=WriterPolicy(max_unsynced_bytes=512)))
    data = env.path(rid).read_bytes()
    return env, data, frames(data)


def sample() -> tuple[Env, bytes, list[tuple[int, int, int]]]:
    """One recording with several chunks, built once per version (Hypothesis reruns the
    test body)."""
    return _sample(VERSION)


def chunk_frames() -> list[tuple[int, int, int]]:
    return [f for f in sample()[2] if f[0] == FRAME_CHUNK]


def test_format_2_sample_has_compressed_and_raw_chunks(version: int) -> None:
    env, data, _ = sample()
    encodings = {data[start + 9 + 8 + 12] for _, start, _ in chunk_frames()}
    if version == 2:
        assert encodings == {ENCODING_RAW, ENCODING_ZSTD}
        events, result = env.read_bytes(data)
        assert [e.payload for e in events] == [_payload(i) for i in range(CHUNKS)]
    assert env.verify_bytes(data).header.format_version == version  # type: ignore[union-attr]


def test_sample_has_the_expected_shape() -> None:
    env, data, found = sample()
    assert [f[0] for f in found] == [FRAME_HEADER] + [FRAME_CHUNK] * CHUNKS + [FRAME_FOOTER]
    assert env.verify_bytes(data).status is Integrity.INTACT


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    chunk=st.integers(0, CHUNKS - 1),
    position=st.floats(0, 1, exclude_max=True),
    mask=st.integers(1, 255),
)
def test_any_flipped_byte_in_any_chunk_names_that_chunk(
    chunk: int, position: float, mask: int
) -> None:
    env, data, _ = sample()
    _, start, end = chunk_frames()[chunk]
    offset = start + int(position * (end - start))
    damaged = bytearray(data)
    damaged[offset] ^= mask
    result = env.verify_bytes(bytes(damaged))
    assert result.status is Integrity.TAMPERED
    assert result.location == "chunk"
    assert result.tampered_chunk == chunk
    assert result.intact_chunks == chunk


def test_every_single_byte_of_every_chunk_is_covered() -> None:
    # Exhaustive companion to the Hypothesis test for the first and last chunk.
    env, data, _ = sample()
    for chunk in (0, CHUNKS - 1):
        _, start, end = chunk_frames()[chunk]
        for offset in range(start, end):
            damaged = bytearray(data)
            damaged[offset] ^= 0x01
            result = env.verify_bytes(bytes(damaged))
            assert (result.status, result.tampered_chunk) == (Integrity.TAMPERED, chunk), offset


def test_flipped_header_byte_is_tampered_header() -> None:
    env, data, found = sample()
    _, start, end = found[0]
    for offset in (0, start + 3, (start + end) // 2, end - 1):
        damaged = bytearray(data)
        damaged[offset] ^= 0x20
        result = env.verify_bytes(bytes(damaged))
        assert (result.status, result.location) == (Integrity.TAMPERED, "header"), offset


def test_flipped_footer_byte_is_tampered_footer() -> None:
    env, data, found = sample()
    _, start, end = found[-1]
    for offset in range(start + 9, end):  # the body: count, hash, key id, reason, signature
        damaged = bytearray(data)
        damaged[offset] ^= 0x04
        result = env.verify_bytes(bytes(damaged))
        assert result.status is Integrity.TAMPERED, offset
        assert result.location in ("footer", "chunk"), offset


def test_removed_last_chunk_is_truncated() -> None:
    env, data, _ = sample()
    _, start, end = chunk_frames()[-1]
    result = env.verify_bytes(data[:start] + data[end:])
    assert result.status is Integrity.TRUNCATED
    assert result.intact_chunks == CHUNKS - 1
    assert result.signed


def test_removed_middle_chunk_is_tampered_at_that_index() -> None:
    env, data, _ = sample()
    _, start, end = chunk_frames()[2]
    result = env.verify_bytes(data[:start] + data[end:])
    assert (result.status, result.tampered_chunk) == (Integrity.TAMPERED, 2)


def test_swapped_chunks_are_tampered() -> None:
    env, data, _ = sample()
    (_, s1, e1), (_, s2, e2) = chunk_frames()[1:3]
    swapped = data[:s1] + data[s2:e2] + data[s1:e1] + data[e2:]
    result = env.verify_bytes(swapped)
    assert (result.status, result.tampered_chunk) == (Integrity.TAMPERED, 1)


def test_missing_footer_is_incomplete_with_every_chunk_intact() -> None:
    env, data, found = sample()
    result = env.verify_bytes(data[: found[-1][1]])
    assert result.status is Integrity.INCOMPLETE
    assert result.intact_chunks == CHUNKS and not result.signed


def test_cut_inside_a_chunk_is_incomplete_up_to_the_previous_chunk() -> None:
    env, data, _ = sample()
    _, start, end = chunk_frames()[3]
    for cut in (start + 4, start + 20, end - 1):
        result = env.verify_bytes(data[:cut])
        assert result.status is Integrity.INCOMPLETE
        assert result.intact_chunks == 3 and result.intact_length == start


def test_appended_bytes_after_footer_are_tampered() -> None:
    env, data, _ = sample()
    result = env.verify_bytes(data + b"\x00")
    assert (result.status, result.location) == (Integrity.TAMPERED, "footer")


def test_not_a_recording_is_tampered_and_an_empty_file_incomplete() -> None:
    env, _, _ = sample()
    assert env.verify_bytes(b"GIF89a" + b"\x00" * 64).status is Integrity.TAMPERED
    assert env.verify_bytes(b"").status is Integrity.INCOMPLETE


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_arbitrary_damage_never_crashes_the_verifier_and_is_never_intact(
    data: st.DataObject,
) -> None:
    env, original, _ = sample()
    damaged = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        where = data.draw(st.integers(0, len(damaged)), label="where")
        edit = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]), label="edit")
        if edit == "flip" and where < len(damaged):
            damaged[where] ^= data.draw(st.integers(1, 255), label="mask")
        elif edit == "cut":
            del damaged[where:]
        elif edit == "insert":
            damaged[where:where] = data.draw(st.binary(min_size=1, max_size=40), label="bytes")
        elif edit == "delete":
            del damaged[where : where + data.draw(st.integers(1, 40), label="n")]
    result = env.verify_bytes(bytes(damaged))
    if bytes(damaged) != original:
        assert result.status is not Integrity.INTACT


def test_deeply_nested_header_json_is_tampered_not_a_crash() -> None:
    env, data, found = sample()
    body = b"[" * 30_000 + b"]" * 30_000 + b"\x00" * 32
    forged = data[: len(MAGIC)] + frame(FRAME_HEADER, body) + data[found[0][2] :]
    result = env.verify_bytes(forged)
    assert (result.status, result.location) == (Integrity.TAMPERED, "header")
