"""Offline check of a Conduit evidence bundle: ``python verify_bundle.py BUNDLE.zip|DIR``.

Shipped inside every bundle (``gateway.web.evidence_bundle``) and never imported by Conduit:
it needs only the Python standard library and ``cryptography`` (plus ``blake3`` for a format-2
recording), and no secret. It prints ``intact`` (exit 0), or ``tampered: <why>`` (exit 1), or
``incomplete: <why>`` (exit 2), or ``cannot check: <why>`` (exit 3, e.g. ``blake3`` missing).

What it checks, and so what "intact" proves:

* The recording file: its frames (magic, CRC of each prefix), the hash chain
  ``H(MAGIC || header frame)`` then ``H(previous || chunk frame)`` over every chunk in order,
  and the footer's Ed25519 signature by the bundle's public key over recording id, header
  hash, final hash, chunk count and end reason. ``H`` is the header's ``hash``: SHA-256 for
  format 1, BLAKE3 for format 2 (whose chunks are compressed before encryption; the chain
  covers the chunk frames exactly as stored either way). So every byte of the
  header and of every chunk is exactly what the gateway's signing key signed when the
  session ended; no byte after the footer.
* Each audit event: its hash recomputed from its fields, and the link to the previous event
  where the bundle holds two consecutive ids.

It cannot check, without the recording's data key (deliberately not in the bundle), that
each chunk's AES-GCM tag authenticates: the signature already fixes those bytes. Whether the
public key is the gateway's own must be checked out of band: compare the printed key id.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)

MAGIC = b"CONDUITR"
PREFIX = struct.Struct(">BII")  # frame type, body length, CRC-32 of type+length
TYPE_LEN = struct.Struct(">BI")
HEADER, CHUNK, FOOTER = 0x48, 0x43, 0x46
MAX_BODY = 32 << 20
FOOTER_FIXED = struct.Struct(">Q32s16sH")  # chunk count, final hash, key id, reason length
SIGNATURE_BYTES, MAC_BYTES = 64, 32
FOOTER_CONTEXT = {1: b"conduit recording footer v1\x00", 2: b"conduit recording footer v2\x00"}
CHAIN_HASH = {1: "SHA-256", 2: "BLAKE3"}
GENESIS = "0" * 64


class Tampered(Exception):
    """The evidence does not match what was signed or hashed."""


class Incomplete(Exception):
    """The recording was not closed cleanly (crash recovery, or still being written)."""


class CannotCheck(Exception):
    """This machine lacks what the check needs (the blake3 package for format 2)."""


def _hash(version: int) -> Any:
    """The chain's hash constructor for a format version."""
    if version == 1:
        return hashlib.sha256
    try:
        import blake3  # noqa: PLC0415 - only format 2 needs it; format 1 checks without
    except ImportError:
        raise CannotCheck("a format-2 recording needs the blake3 package: "
                          "pip install blake3") from None  # fmt: skip
    return blake3.blake3


def _frames(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(type, body, whole frame) for every frame after the magic."""
    if not data.startswith(MAGIC):
        raise Tampered("recording: not a Conduit recording (bad magic)")
    out, pos = [], len(MAGIC)
    while pos < len(data):
        if pos + PREFIX.size > len(data):
            raise Incomplete("recording: file ends inside a frame prefix")
        kind, length, crc = PREFIX.unpack_from(data, pos)
        if zlib.crc32(TYPE_LEN.pack(kind, length)) != crc or kind not in (HEADER, CHUNK, FOOTER):
            raise Tampered(f"recording: damaged frame prefix at byte {pos}")
        if length > MAX_BODY:
            raise Tampered(f"recording: frame at byte {pos} longer than the format allows")
        end = pos + PREFIX.size + length
        if end > len(data):
            raise Incomplete("recording: file ends inside a frame")
        out.append((kind, data[pos + PREFIX.size : end], data[pos:end]))
        pos = end
    return out


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:16].hex()


def check_recording(data: bytes, public_key: Ed25519PublicKey) -> str:
    """A one-line summary if the signed chain matches every byte; else raise."""
    frames = _frames(data)
    if not frames or frames[0][0] != HEADER:
        raise Tampered("recording: the first frame is not a header")
    body = frames[0][1]
    try:
        header = json.loads(body[:-MAC_BYTES])
        recording_id = bytes.fromhex(header["recording_id"])
        version = header["format_version"]
        if type(version) is not int or CHAIN_HASH.get(version) != header["hash"]:
            raise ValueError("format version and hash do not match")
    except (ValueError, KeyError, TypeError) as exc:
        raise Tampered(f"recording: header unreadable ({type(exc).__name__}: {exc})") from None
    new = _hash(version)

    def digest_of(*parts: bytes) -> bytes:
        h = new(parts[0])
        for part in parts[1:]:
            h.update(part)
        return bytes(h.digest())

    chain = digest_of(MAGIC + frames[0][2])
    header_digest, chunks = chain, 0
    for index, (kind, chunk_body, raw) in enumerate(frames[1:], start=1):
        if kind == FOOTER:
            if index != len(frames) - 1:
                raise Tampered("recording: data after the footer")
            summary = _check_footer(chunk_body, recording_id, header_digest, chain, chunks,
                                    public_key, version)  # fmt: skip
            return f"format {version} ({CHAIN_HASH[version]} chain): {summary}"
        if kind != CHUNK or struct.unpack_from(">Q", chunk_body)[0] != chunks:
            raise Tampered(f"recording: chunk {chunks} is out of place")
        chain = digest_of(chain, raw)
        chunks += 1
    raise Incomplete(f"recording: no footer ({chunks} chunks, not signed)")


def _check_footer(
    body: bytes, recording_id: bytes, header_digest: bytes, chain: bytes, chunks: int,
    public_key: Ed25519PublicKey, version: int,
) -> str:  # fmt: skip
    if len(body) < FOOTER_FIXED.size + SIGNATURE_BYTES:
        raise Tampered("recording: footer too short")
    count, final_hash, signer, reason_len = FOOTER_FIXED.unpack_from(body)
    if len(body) != FOOTER_FIXED.size + reason_len + SIGNATURE_BYTES:
        raise Tampered("recording: footer length mismatch")
    reason = body[FOOTER_FIXED.size : FOOTER_FIXED.size + reason_len]
    if signer.hex() != key_id(public_key):
        raise Tampered(f"recording: signed by key {signer.hex()}, not the bundle's key")
    message = (FOOTER_CONTEXT[version] + recording_id + header_digest + final_hash
               + count.to_bytes(8, "big") + reason)  # fmt: skip
    try:
        public_key.verify(body[-SIGNATURE_BYTES:], message)
    except InvalidSignature:
        raise Tampered("recording: the footer's signature does not verify") from None
    if count > chunks:
        raise Tampered(f"recording: {count - chunks} signed chunk(s) missing (truncated)")
    if count != chunks or final_hash != chain:
        raise Tampered("recording: the chunks do not match the signed hash chain")
    if reason == b"incomplete":
        raise Incomplete("recording: closed by crash recovery (signed, end reason incomplete)")
    return f"{chunks} chunks signed by key {signer.hex()}, end reason {reason.decode()}"


def _event_hash(event: dict[str, object]) -> str:
    """The audit chain's hash of one event (Conduit decision 0002): canonical JSON, SHA-256."""
    detail = json.dumps(event["detail"], sort_keys=True, separators=(",", ":"),
                        ensure_ascii=False)  # fmt: skip
    fields = {"v": 1, "detail": detail, **{k: event[k] for k in (
        "id", "time", "actor", "source", "action", "target", "result", "prev_hash")}}  # fmt: skip
    encoded = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode()).hexdigest()


def check_audit(lines: list[str]) -> int:
    """How many events check out; raise on the first that does not."""
    previous: dict[str, object] | None = None
    for number, line in enumerate(lines, start=1):
        try:
            event = json.loads(line)
            computed = _event_hash(event)
        except (ValueError, KeyError, TypeError) as exc:
            raise Tampered(f"audit line {number}: unreadable ({type(exc).__name__})") from None
        if computed != event["hash"]:
            raise Tampered(f"audit event {event['id']}: content does not match its hash")
        if previous is not None and event["id"] == previous["id"] + 1:  # type: ignore[operator]
            if event["prev_hash"] != previous["hash"]:
                raise Tampered(f"audit event {event['id']}: not chained to event {previous['id']}")
        previous = event
    return len(lines)


def _read(source: Path) -> dict[str, bytes]:
    if source.is_dir():
        return {p.relative_to(source).as_posix(): p.read_bytes()
                for p in source.rglob("*") if p.is_file()}  # fmt: skip
    try:
        with zipfile.ZipFile(source) as bundle:
            return {n: bundle.read(n) for n in bundle.namelist() if not n.endswith("/")}
    except (zipfile.BadZipFile, OSError) as exc:  # a flipped byte breaks the zip's CRC too
        raise Tampered(f"bundle: the zip file is damaged ({exc})") from None


def verify(source: Path) -> str:
    files = _read(source)
    recordings = [name for name in files if name.endswith(".rec")]
    if len(recordings) != 1 or "signing-key.pem" not in files:
        raise Tampered("bundle: expected one .rec file and signing-key.pem")
    public_key = load_pem_public_key(files["signing-key.pem"])
    if not isinstance(public_key, Ed25519PublicKey):
        raise Tampered("bundle: signing-key.pem is not an Ed25519 public key")
    summary = check_recording(files[recordings[0]], public_key)
    events = files.get("audit-events.jsonl", b"").decode().splitlines()
    return f"{summary}; {check_audit(events)} audit event(s) match their hashes"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python verify_bundle.py BUNDLE.zip|DIRECTORY", file=sys.stderr)
        return 64
    try:
        summary = verify(Path(argv[1]))
    except Tampered as exc:
        print(f"tampered: {exc}")
        return 1
    except Incomplete as exc:
        print(f"incomplete: {exc}")
        return 2
    except CannotCheck as exc:
        print(f"cannot check: {exc}")
        return 3
    print("intact")
    print(summary, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
