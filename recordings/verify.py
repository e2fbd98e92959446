"""Reading and verifying a recording: walk the frames, authenticate every chunk, judge the end.

The verdict is one of intact / tampered (naming the header, chunk index or footer) /
truncated (a valid footer counts chunks that are missing) / incomplete (no footer, or a
footer written by crash recovery). The reader yields plaintext only from chunks that
authenticated. Does not repair anything (see ``recordings.recovery``) and does not know
where files live (it takes an open binary stream).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from recordings.container import (
    CHAIN_HASH,
    FRAME_CHUNK,
    FRAME_FOOTER,
    FRAME_HEADER,
    MAGIC,
    FormatError,
    Header,
    SubKeys,
    chain,
    decode_footer,
    footer_message,
    header_hash,
    header_mac_ok,
    open_chunk,
    open_chunk_v2,
    read_frame,
    split_header_body,
)
from recordings.events import Event, decode_events

# End reason written by crash recovery; such a recording verifies as INCOMPLETE.
INCOMPLETE_REASON = "incomplete"


class Integrity(StrEnum):
    INTACT = "intact"
    TAMPERED = "tampered"
    TRUNCATED = "truncated"
    INCOMPLETE = "incomplete"


@dataclass(frozen=True)
class VerifyResult:
    status: Integrity
    header: Header | None
    intact_chunks: int
    # For TAMPERED: "header", "chunk" (then tampered_chunk is its index) or "footer".
    location: str | None = None
    tampered_chunk: int | None = None
    end_reason: str | None = None
    signed: bool = False
    detail: str = ""
    # Recovery needs these: file length through the last intact chunk, and the chain there.
    intact_length: int = 0
    header_digest: bytes = b""
    chain_hash: bytes = b""

    @property
    def format_version(self) -> int | None:
        return None if self.header is None else self.header.format_version

    @property
    def chain_hash_name(self) -> str | None:
        """The chain's hash (``SHA-256`` for format 1, ``BLAKE3`` for 2), for reports."""
        return None if self.header is None else CHAIN_HASH[self.header.format_version]

    @property
    def ok(self) -> bool:
        """Nothing is wrong with the evidence (a recovered recording is honest, not intact)."""
        return self.status in (Integrity.INTACT, Integrity.INCOMPLETE)


DataKeyResolver = Callable[[str], bytes]


class RecordingReader:
    """One pass over a recording: iterate :meth:`chunks` or :meth:`events`, then read
    :attr:`result`. Plaintext comes only from chunks that authenticated, in order; reading
    stops at the first one that does not."""

    def __init__(
        self,
        stream: BinaryIO,
        resolve_data_key: DataKeyResolver,
        verify_keys: Mapping[str, Ed25519PublicKey],
    ) -> None:
        self._stream = stream
        self._resolve = resolve_data_key
        self._verify_keys = verify_keys
        self.result: VerifyResult | None = None

    def chunks(self) -> Iterator[bytes]:
        self.result = None
        self.result = yield from self._walk()

    def events(self) -> Iterator[Event]:
        for plaintext in self.chunks():
            yield from decode_events(plaintext)

    def _open_header(self) -> tuple[Header, SubKeys, bytes] | VerifyResult:
        """Header, subkeys and frame bytes, or the verdict if the header is unusable."""
        magic = self._stream.read(len(MAGIC))
        if len(magic) < len(MAGIC) and MAGIC.startswith(magic):
            return VerifyResult(Integrity.INCOMPLETE, None, 0, detail="file ends before header")
        bad = VerifyResult(Integrity.TAMPERED, None, 0, location="header")
        if magic != MAGIC:
            return _with_detail(bad, "not a Conduit recording")
        try:
            frame = read_frame(self._stream)
        except EOFError:
            return VerifyResult(Integrity.INCOMPLETE, None, 0, detail="file ends inside header")
        except FormatError as exc:
            return _with_detail(bad, str(exc))
        if frame is None:
            return VerifyResult(Integrity.INCOMPLETE, None, 0, detail="file ends before header")
        frame_type, body, raw = frame
        if frame_type != FRAME_HEADER:
            return _with_detail(bad, "first frame is not a header")
        try:
            doc, mac = split_header_body(body)
            header = Header.from_json(doc)
        except FormatError as exc:
            return _with_detail(bad, str(exc))
        try:
            keys = SubKeys.derive(self._resolve(header.data_key_id))
        except Exception as exc:
            # Fail closed whatever the cause (missing, unwrappable, unreadable key file):
            # without the key nothing can be vouched for.
            return _with_detail(bad, f"data key cannot be resolved: {exc}")
        if not header_mac_ok(keys, doc, mac):
            return _with_detail(bad, "header does not authenticate")
        return header, keys, raw

    def _walk(self) -> Generator[bytes, None, VerifyResult]:
        opened = self._open_header()
        if isinstance(opened, VerifyResult):
            return opened
        header, keys, raw = opened
        version = header.format_version
        digest = header_hash(MAGIC + raw, version)
        opener = open_chunk_v2 if version == 2 else open_chunk
        aead = AESGCM(keys.chunk_key)
        position = len(MAGIC) + len(raw)
        chain_hash = digest
        index = 0

        def verdict(
            status: Integrity,
            *,
            location: str | None = None,
            tampered_chunk: int | None = None,
            detail: str = "",
            end_reason: str | None = None,
        ) -> VerifyResult:
            return VerifyResult(
                status,
                header,
                index,
                location=location,
                tampered_chunk=tampered_chunk,
                end_reason=end_reason,
                signed=end_reason is not None,  # only a verified footer supplies a reason
                detail=detail,
                intact_length=position,
                header_digest=digest,
                chain_hash=chain_hash,
            )

        while True:
            try:
                frame = read_frame(self._stream)
            except EOFError:
                return verdict(Integrity.INCOMPLETE, detail="no footer; partial tail frame")
            except FormatError as exc:
                return verdict(
                    Integrity.TAMPERED, location="chunk", tampered_chunk=index, detail=str(exc)
                )
            if frame is None:
                return verdict(Integrity.INCOMPLETE, detail="no footer")
            frame_type, body, raw = frame
            if frame_type == FRAME_FOOTER:
                return self._judge_footer(header, body, digest, chain_hash, index, verdict)
            try:
                if frame_type != FRAME_CHUNK:
                    raise FormatError("unexpected frame where a chunk belongs")
                plaintext = opener(aead, header.recording_id, index, chain_hash, body)
            except FormatError as exc:
                return verdict(
                    Integrity.TAMPERED, location="chunk", tampered_chunk=index, detail=str(exc)
                )
            chain_hash = chain(chain_hash, raw, version)
            index += 1
            position += len(raw)
            yield plaintext

    def _judge_footer(
        self,
        header: Header,
        body: bytes,
        digest: bytes,
        chain_hash: bytes,
        index: int,
        verdict: Callable[..., VerifyResult],
    ) -> VerifyResult:
        try:
            footer = decode_footer(body)
        except FormatError as exc:
            return verdict(Integrity.TAMPERED, location="footer", detail=str(exc))
        key = self._verify_keys.get(footer.signing_key_id)
        if key is None:
            return verdict(Integrity.TAMPERED, location="footer", detail="unknown signing key")
        message = footer_message(
            header.recording_id,
            digest,
            footer.final_hash,
            footer.chunk_count,
            footer.end_reason,
            header.format_version,
        )
        try:
            key.verify(footer.signature, message)
        except InvalidSignature:
            return verdict(Integrity.TAMPERED, location="footer", detail="bad signature")
        reason = footer.end_reason
        if self._stream.read(1):
            return verdict(
                Integrity.TAMPERED, location="footer", detail="data after footer", end_reason=reason
            )
        if footer.chunk_count > index:
            missing = footer.chunk_count - index
            return verdict(
                Integrity.TRUNCATED, detail=f"{missing} chunk(s) missing", end_reason=reason
            )
        if footer.chunk_count < index or not hmac.compare_digest(footer.final_hash, chain_hash):
            return verdict(
                Integrity.TAMPERED,
                location="chunk",
                tampered_chunk=min(footer.chunk_count, index),
                detail="chunks do not match the signed footer",
                end_reason=reason,
            )
        if footer.end_reason == INCOMPLETE_REASON:
            return verdict(
                Integrity.INCOMPLETE, detail="closed by crash recovery", end_reason=reason
            )
        return verdict(Integrity.INTACT, end_reason=reason)


def _with_detail(result: VerifyResult, detail: str) -> VerifyResult:
    return VerifyResult(result.status, result.header, 0, location=result.location, detail=detail)


def verify_recording(
    stream: BinaryIO,
    resolve_data_key: DataKeyResolver,
    verify_keys: Mapping[str, Ed25519PublicKey],
) -> VerifyResult:
    """Authenticate every chunk and the footer without keeping any plaintext."""
    reader = RecordingReader(stream, resolve_data_key, verify_keys)
    for _ in reader.chunks():
        pass
    if reader.result is None:  # chunks() always sets it once exhausted
        raise RuntimeError("reader finished without a verdict")
    return reader.result
