"""The recording container's bytes: frames, header, sealed chunks, signed footer (see FORMAT.md).

Pure functions and small state machines over bytes: build and parse frames, derive the
per-recording subkeys, encrypt/decrypt chunks with the hash chain as associated data, and
sign/verify the footer. Does no file I/O, no threading and no verification policy (see
``recordings.writer`` and ``recordings.verify``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, BinaryIO

import blake3
import zstandard
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from recordings.ids import check_id
from recordings.keys import signing_key_id

MAGIC = b"CONDUITR"
FORMAT_VERSION = 2  # what new recordings are written as
FORMAT_VERSIONS = (1, 2)  # what a reader accepts
# The chain's hash and the compression of each version (the header names them).
CHAIN_HASH = {1: "SHA-256", 2: "BLAKE3"}
COMPRESSION = {1: None, 2: "zstd"}
# zstd level written by version 2, chosen by measurement (FORMAT.md): level 1 gave ratio 7.6
# on terminal text at 2.7 ms/MiB, level 3 the same ratio at 4.2 ms/MiB.
ZSTD_LEVEL = 1
ENCODING_RAW = 0
ENCODING_ZSTD = 1
# After a chunk that zstd could not shrink, skip compressing 1, 2, 4, ... up to this many.
_MAX_COMPRESS_PAUSE = 32
FRAME_HEADER = 0x48  # "H"
FRAME_CHUNK = 0x43  # "C"
FRAME_FOOTER = 0x46  # "F"
_PREFIX = struct.Struct(">BII")  # type, body length, CRC-32 of type+length
_TYPE_LEN = struct.Struct(">BI")
PREFIX_BYTES = _PREFIX.size
# A chunk holds at most one oversized event past the flush threshold (events are capped
# at MAX_EVENT_BYTES by the writer), so anything larger is corruption, not data.
MAX_EVENT_BYTES = 16 << 20
MAX_FRAME_BODY = 32 << 20
MAX_HEADER_BODY = 64 << 10
_NONCE_BYTES = 12
_TAG_BYTES = 16
_HASH_BYTES = 32
_SIGNATURE_BYTES = 64
_CHUNK_FIXED = struct.Struct(">Q12s")
_CHUNK_FIXED_V2 = struct.Struct(">Q12sBI")  # index, nonce, encoding, plaintext length
_CHUNK_V2_TAIL = struct.Struct(">BI")
_FOOTER_FIXED = struct.Struct(">Q32s16sH")  # count, final hash, signing key id, reason length
_CHUNK_AAD_CONTEXT = b"conduit chunk v1\x00"
_CHUNK_AAD_CONTEXT_V2 = b"conduit chunk v2\x00"
_HEADER_MAC_CONTEXT = b"conduit header v1\x00"
_FOOTER_CONTEXT = {1: b"conduit recording footer v1\x00", 2: b"conduit recording footer v2\x00"}
_END_REASON = re.compile(r"[a-z0-9_.:-]{1,64}")
_METADATA_KEY = re.compile(r"[a-z0-9_.-]{1,64}")
_MAX_METADATA_VALUE = 1024


class Kind(StrEnum):
    TERMINAL = "terminal"
    DESKTOP = "desktop"
    TUNNEL = "tunnel"


class FormatError(ValueError):
    """Bytes that do not follow the container format (corruption or tampering)."""


def check_end_reason(reason: str) -> str:
    if _END_REASON.fullmatch(reason) is None:
        raise ValueError("end reason must match [a-z0-9_.:-]{1,64}")
    return reason


@dataclass(frozen=True)
class Header:
    """Plaintext header. Metadata is readable without keys: put ids in it, never secrets."""

    recording_id: str
    kind: Kind
    started_at: datetime
    data_key_id: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.format_version not in FORMAT_VERSIONS:
            raise ValueError(f"unsupported format version {self.format_version!r}")
        check_id(self.recording_id)
        check_id(self.data_key_id)
        if self.started_at.tzinfo is None:
            raise ValueError("started_at must be timezone-aware")
        for key, value in self.metadata.items():
            if _METADATA_KEY.fullmatch(key) is None or len(value) > _MAX_METADATA_VALUE:
                raise ValueError(f"bad metadata entry {key[:64]!r}")

    def to_json(self) -> bytes:
        # Canonical JSON so the same header always hashes the same.
        doc = {
            "format_version": self.format_version,
            "recording_id": self.recording_id,
            "kind": self.kind.value,
            "started_at": self.started_at.isoformat(),
            "data_key_id": self.data_key_id,
            "cipher": "AES-256-GCM",
            "hash": CHAIN_HASH[self.format_version],
            "metadata": dict(self.metadata),
        }
        if COMPRESSION[self.format_version] is not None:
            doc["compression"] = COMPRESSION[self.format_version]
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Header:
        try:
            doc = json.loads(raw)
            version = doc["format_version"]
            if type(version) is not int or version not in FORMAT_VERSIONS:
                raise FormatError(f"unsupported format version {str(version)[:16]!r}")
            if (
                doc.get("hash") != CHAIN_HASH[version]
                or doc.get("compression") != (COMPRESSION[version])
            ):
                raise FormatError(f"hash or compression do not match format version {version}")
            metadata = doc["metadata"]
            if not isinstance(metadata, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
            ):
                raise FormatError("metadata must map strings to strings")
            return cls(
                recording_id=doc["recording_id"],
                kind=Kind(doc["kind"]),
                started_at=datetime.fromisoformat(doc["started_at"]),
                data_key_id=doc["data_key_id"],
                metadata=metadata,
                format_version=version,
            )
        except FormatError:
            raise
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            # RecursionError: deeply nested JSON is a cheap way to crash a naive parser.
            raise FormatError(f"malformed header: {type(exc).__name__}") from exc


@dataclass(frozen=True, repr=False)
class SubKeys:
    """Keys derived from one data key, so encryption and header MAC never share a key."""

    chunk_key: bytes
    header_mac_key: bytes

    @classmethod
    def derive(cls, data_key: bytes) -> SubKeys:
        def hkdf(info: bytes) -> bytes:
            return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(data_key)

        return cls(hkdf(b"conduit chunk key v1"), hkdf(b"conduit header mac v1"))


def frame(frame_type: int, body: bytes) -> bytes:
    """Prefix ``body`` with type, length and a CRC over both.

    The CRC is not security (the GCM tag and signature are); it lets the reader tell a
    damaged length field (tampering) from a file that simply ends early (crash).
    """
    type_len = _TYPE_LEN.pack(frame_type, len(body))
    return _PREFIX.pack(frame_type, len(body), zlib.crc32(type_len)) + body


def parse_prefix(prefix: bytes) -> tuple[int, int]:
    """Return (type, body length) of a complete 9-byte prefix, or raise FormatError."""
    frame_type, length, crc = _PREFIX.unpack(prefix)
    if zlib.crc32(_TYPE_LEN.pack(frame_type, length)) != crc:
        raise FormatError("frame prefix checksum mismatch")
    if frame_type not in (FRAME_HEADER, FRAME_CHUNK, FRAME_FOOTER):
        raise FormatError(f"unknown frame type {frame_type:#x}")
    if length > MAX_FRAME_BODY:
        raise FormatError("frame longer than the format allows")
    return frame_type, length


def read_frame(stream: BinaryIO) -> tuple[int, bytes, bytes] | None:
    """Read one frame: (type, body, whole frame bytes); None at a clean end of file.

    Raises :class:`EOFError` if the file ends inside a frame and :class:`FormatError` if
    the prefix is damaged.
    """
    prefix = stream.read(PREFIX_BYTES)
    if not prefix:
        return None
    if len(prefix) < PREFIX_BYTES:
        raise EOFError("file ends inside a frame prefix")
    frame_type, length = parse_prefix(prefix)
    body = stream.read(length)
    if len(body) < length:
        raise EOFError("file ends inside a frame body")
    return frame_type, body, prefix + body


def encode_header(header: Header, keys: SubKeys) -> bytes:
    """MAGIC + header frame. The body is the JSON followed by an HMAC-SHA256 over it."""
    doc = header.to_json()
    mac = hmac.new(keys.header_mac_key, _HEADER_MAC_CONTEXT + doc, hashlib.sha256).digest()
    return MAGIC + frame(FRAME_HEADER, doc + mac)


def split_header_body(body: bytes) -> tuple[bytes, bytes]:
    """Return (json, mac) of a header frame body."""
    if len(body) <= _HASH_BYTES or len(body) > MAX_HEADER_BODY:
        raise FormatError("header frame has an impossible length")
    return body[:-_HASH_BYTES], body[-_HASH_BYTES:]


def header_mac_ok(keys: SubKeys, doc: bytes, mac: bytes) -> bool:
    expected = hmac.new(keys.header_mac_key, _HEADER_MAC_CONTEXT + doc, hashlib.sha256).digest()
    return hmac.compare_digest(expected, mac)


def _hasher(version: int) -> Callable[[bytes], Any]:
    return blake3.blake3 if version == 2 else hashlib.sha256


def header_hash(magic_and_header_frame: bytes, version: int = FORMAT_VERSION) -> bytes:
    """The chain's starting value: the version's hash over MAGIC and the whole header frame."""
    return bytes(_hasher(version)(magic_and_header_frame).digest())


def chain(previous_hash: bytes, chunk_frame: bytes, version: int = FORMAT_VERSION) -> bytes:
    """The chain value after one chunk: hash(previous || the whole chunk frame as stored)."""
    digest = _hasher(version)(previous_hash)
    digest.update(chunk_frame)
    return bytes(digest.digest())


def chunk_aad(recording_id: str, index: int, previous_hash: bytes) -> bytes:
    return (
        _CHUNK_AAD_CONTEXT + bytes.fromhex(recording_id) + index.to_bytes(8, "big") + previous_hash
    )


class ChunkSealer:
    """Writer side, format 1: turns plaintext chunks into sealed, SHA-256-chained frames."""

    format_version = 1

    def __init__(self, recording_id: str, keys: SubKeys, start_hash: bytes) -> None:
        self._recording_id = recording_id
        self._aead = AESGCM(keys.chunk_key)
        self.index = 0
        self.last_hash = start_hash

    def seal(self, plaintext: bytes | bytearray) -> bytearray:
        """One chunk frame, built in place: the ciphertext is the only copy of the data
        (the writer thread's cost per MiB recorded, bench/ssh_relay.py)."""
        # Random nonces: 2^-32-safe far beyond any recording's chunk count, and no risk
        # of reuse if a chunk index were ever written twice.
        nonce = os.urandom(_NONCE_BYTES)
        aad = chunk_aad(self._recording_id, self.index, self.last_hash)
        body_len = _CHUNK_FIXED.size + len(plaintext) + _TAG_BYTES
        out = bytearray(_PREFIX.size + body_len)
        _PREFIX.pack_into(out, 0, FRAME_CHUNK, body_len,
                          zlib.crc32(_TYPE_LEN.pack(FRAME_CHUNK, body_len)))  # fmt: skip
        _CHUNK_FIXED.pack_into(out, _PREFIX.size, self.index, nonce)
        with memoryview(out) as view:
            self._aead.encrypt_into(nonce, plaintext, aad, view[_PREFIX.size + _CHUNK_FIXED.size :])
        digest = hashlib.sha256(self.last_hash)
        digest.update(out)  # == chain(last_hash, frame(FRAME_CHUNK, body))
        self.last_hash = digest.digest()
        self.index += 1
        return out


def chunk_aad_v2(
    recording_id: str, index: int, previous_hash: bytes, encoding: int, plain_len: int
) -> bytes:
    return (
        _CHUNK_AAD_CONTEXT_V2
        + bytes.fromhex(recording_id)
        + index.to_bytes(8, "big")
        + previous_hash
        + _CHUNK_V2_TAIL.pack(encoding, plain_len)
    )


class ChunkSealerV2:
    """Writer side, format 2: compress (or not), encrypt, frame, chain with BLAKE3.

    Runs on the writer thread: zstd, AES-GCM and BLAKE3 all work outside the event loop.
    """

    format_version = 2

    def __init__(self, recording_id: str, keys: SubKeys, start_hash: bytes) -> None:
        self._recording_id = recording_id
        self._rid = bytes.fromhex(recording_id)
        self._aead = AESGCM(keys.chunk_key)
        self._zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=False)
        self._pause = 0  # chunks still to store raw without trying (after incompressible ones)
        self._next_pause = 1
        self.index = 0
        self.last_hash = start_hash

    def _encode(self, plaintext: bytes | bytearray) -> tuple[int, bytes | bytearray]:
        if self._pause:
            self._pause -= 1
            return ENCODING_RAW, plaintext
        packed = self._zstd.compress(plaintext)
        if len(packed) < len(plaintext):
            self._next_pause = 1
            return ENCODING_ZSTD, packed
        self._pause = self._next_pause
        self._next_pause = min(self._next_pause * 2, _MAX_COMPRESS_PAUSE)
        return ENCODING_RAW, plaintext

    def seal(self, plaintext: bytes | bytearray) -> bytearray:
        """One chunk frame, built in place (the ciphertext is written into the frame)."""
        if len(plaintext) > MAX_FRAME_BODY:
            raise ValueError("chunk plaintext longer than the format allows")
        encoding, stored = self._encode(plaintext)
        nonce = os.urandom(_NONCE_BYTES)
        aad = (
            _CHUNK_AAD_CONTEXT_V2
            + self._rid
            + self.index.to_bytes(8, "big")
            + self.last_hash
            + _CHUNK_V2_TAIL.pack(encoding, len(plaintext))
        )
        body_len = _CHUNK_FIXED_V2.size + len(stored) + _TAG_BYTES
        out = bytearray(_PREFIX.size + body_len)
        _PREFIX.pack_into(out, 0, FRAME_CHUNK, body_len,
                          zlib.crc32(_TYPE_LEN.pack(FRAME_CHUNK, body_len)))  # fmt: skip
        _CHUNK_FIXED_V2.pack_into(out, _PREFIX.size, self.index, nonce, encoding, len(plaintext))
        with memoryview(out) as view:
            self._aead.encrypt_into(nonce, stored, aad, view[_PREFIX.size + _CHUNK_FIXED_V2.size :])
        digest = blake3.blake3(self.last_hash)
        digest.update(out)  # == chain(last_hash, frame, 2)
        self.last_hash = digest.digest()
        self.index += 1
        return out


def new_sealer(header: Header, keys: SubKeys, start_hash: bytes) -> ChunkSealer | ChunkSealerV2:
    """The sealer for the header's format version."""
    if header.format_version == 1:
        return ChunkSealer(header.recording_id, keys, start_hash)
    return ChunkSealerV2(header.recording_id, keys, start_hash)


def open_chunk_v2(
    aead: AESGCM, recording_id: str, expected_index: int, previous_hash: bytes, body: bytes
) -> bytes:
    """Decrypt and decompress one format-2 chunk body; FormatError unless it is chunk
    ``expected_index`` exactly as sealed."""
    if len(body) < _CHUNK_FIXED_V2.size + _TAG_BYTES:
        raise FormatError("chunk too short")
    index, nonce, encoding, plain_len = _CHUNK_FIXED_V2.unpack_from(body)
    if index != expected_index:
        raise FormatError(f"chunk index {index} where {expected_index} was expected")
    if encoding not in (ENCODING_RAW, ENCODING_ZSTD) or plain_len > MAX_FRAME_BODY:
        raise FormatError("chunk encoding or length outside the format")
    aad = chunk_aad_v2(recording_id, index, previous_hash, encoding, plain_len)
    try:
        stored = aead.decrypt(nonce, body[_CHUNK_FIXED_V2.size :], aad)
    except Exception as exc:  # InvalidTag: content, chain position or key do not match
        raise FormatError("chunk does not authenticate") from exc
    if encoding == ENCODING_RAW:
        plaintext = stored
    else:
        try:
            # The frame's own content size, if it states one, must fit the authenticated
            # length; then the output is bounded by it, so a hostile frame cannot expand.
            size = zstandard.frame_content_size(stored)
            if size > plain_len:
                raise FormatError("chunk claims more plaintext than its length")
            plaintext = zstandard.ZstdDecompressor().decompress(
                stored, max_output_size=max(plain_len, 1)
            )
        except zstandard.ZstdError as exc:
            raise FormatError("chunk does not decompress") from exc
    if len(plaintext) != plain_len:
        raise FormatError("chunk length does not match its plaintext")
    return plaintext


def open_chunk(
    aead: AESGCM, recording_id: str, expected_index: int, previous_hash: bytes, body: bytes
) -> bytes:
    """Decrypt one format-1 chunk body; raise FormatError if it is not chunk
    ``expected_index``."""
    if len(body) < _CHUNK_FIXED.size + _TAG_BYTES:
        raise FormatError("chunk too short")
    index, nonce = _CHUNK_FIXED.unpack_from(body)
    if index != expected_index:
        raise FormatError(f"chunk index {index} where {expected_index} was expected")
    aad = chunk_aad(recording_id, index, previous_hash)
    try:
        return aead.decrypt(nonce, body[_CHUNK_FIXED.size :], aad)
    except Exception as exc:  # InvalidTag: content, chain position or key do not match
        raise FormatError("chunk does not authenticate") from exc


@dataclass(frozen=True)
class Footer:
    chunk_count: int
    final_hash: bytes
    signing_key_id: str  # which trusted Ed25519 key signed; lets signing keys rotate
    end_reason: str
    signature: bytes


def footer_message(
    recording_id: str,
    header_digest: bytes,
    final_hash: bytes,
    chunk_count: int,
    end_reason: str,
    version: int = FORMAT_VERSION,
) -> bytes:
    """What the Ed25519 signature covers: the issue asks for header and final hash; count and
    end reason are included too so neither can be altered after signing."""
    return (
        _FOOTER_CONTEXT[version]
        + bytes.fromhex(recording_id)
        + header_digest
        + final_hash
        + chunk_count.to_bytes(8, "big")
        + end_reason.encode()
    )


def encode_footer(footer: Footer) -> bytes:
    reason = check_end_reason(footer.end_reason).encode()
    body = (
        _FOOTER_FIXED.pack(
            footer.chunk_count,
            footer.final_hash,
            bytes.fromhex(footer.signing_key_id),
            len(reason),
        )
        + reason
        + footer.signature
    )
    return frame(FRAME_FOOTER, body)


def decode_footer(body: bytes) -> Footer:
    if len(body) < _FOOTER_FIXED.size + _SIGNATURE_BYTES:
        raise FormatError("footer too short")
    count, final_hash, key_id, reason_len = _FOOTER_FIXED.unpack_from(body)
    if len(body) != _FOOTER_FIXED.size + reason_len + _SIGNATURE_BYTES:
        raise FormatError("footer length mismatch")
    raw_reason = body[_FOOTER_FIXED.size : _FOOTER_FIXED.size + reason_len]
    try:
        reason = check_end_reason(raw_reason.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError("footer end reason malformed") from exc
    return Footer(count, final_hash, key_id.hex(), reason, body[-_SIGNATURE_BYTES:])


def signed_footer(
    signing_key: Ed25519PrivateKey,
    recording_id: str,
    header_digest: bytes,
    final_hash: bytes,
    chunk_count: int,
    end_reason: str,
    version: int = FORMAT_VERSION,
) -> bytes:
    """Sign and encode a footer frame."""
    check_end_reason(end_reason)
    message = footer_message(
        recording_id, header_digest, final_hash, chunk_count, end_reason, version
    )
    key_id = signing_key_id(signing_key.public_key())
    footer = Footer(chunk_count, final_hash, key_id, end_reason, signing_key.sign(message))
    return encode_footer(footer)
