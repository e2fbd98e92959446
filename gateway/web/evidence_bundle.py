"""One recording's integrity for auditors: "verify now" and the evidence bundle download.

``GET /evidence/recordings/{id}/verify`` shows the catalog's verdict with a "Verify now" form;
``POST`` to the same path (CSRF) runs ``RecordingService.verify`` (file read in a worker
thread), which stores the new verdict in the catalog; the run is audited
``recording.verify`` like the CLI's. An htmx post gets the verdict fragment
(``_integrity_state.html``) to swap in place; a plain post gets the page. ``GET .../bundle``
downloads a zip (``bundle_files``): the recording file as stored, the signing public key,
the session's audit events as JSON lines, a manifest, a README and ``verify_bundle.py``,
which checks it all offline with Python and ``cryptography`` only. Opening the file for the
bundle is audited ``recording.download`` by the service before a byte is read.

The bundle holds no secret: not the master key and not the recording's data key. The
footer's signature covers the header hash and the hash chain over every chunk frame as
stored, so the offline check proves every byte is what the gateway signed without
decrypting anything; a data key would add only the power to read the session (typed
passwords included) to whoever holds a copy of the zip. Auditors and admins only
(``READ_EVIDENCE``); anyone else, and an unknown recording, get the same 404, audited.
Does not change a recording, only the catalog's verdict.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import tempfile
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any, BinaryIO

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from gateway.audit import query as audit_query
from gateway.recorder import CatalogEntry, RecordingMissing
from gateway.web.auth import PortalContext, render, services_of, source_of
from gateway.web.layout import page, sign_in_redirect
from gateway.web.portal_forms import (
    NotPermitted,
    audit_refusal,
    require_capability,
    shown_instant,
    signed_in,
    signed_in_post,
)
from gateway.web.replay import Unreadable, peek_header
from rbac.roles import SiteAction
from recordings import VerifyResult, signing_key_id
from recordings.container import CHAIN_HASH, COMPRESSION

router = APIRouter(include_in_schema=False)
HERE = Path(__file__).parent
SCRIPT = HERE / "verify_bundle.py"
# The session's events lie between its recording's start and end; the end is audited just
# after the catalog records it, so a little slack after.
EVENT_SLACK = dt.timedelta(minutes=10)
MAX_BUNDLE_EVENTS = 100_000
COPY_BLOCK = 1 << 20
BADGES = {
    "intact": "intact",
    "incomplete": "incomplete after crash",
    "tampered": "tampered",
    "truncated": "tampered (truncated)",
    "missing": "missing",
    "unverified": "unverified",
}


async def _entry(request: Request, context: PortalContext, recording_id: str) -> CatalogEntry:
    """The catalog entry, or ``NotPermitted`` (a 404, audited) for a bad or unknown id."""
    try:
        return await services_of(request).recordings.entry(recording_id)
    except (RecordingMissing, ValueError):
        await audit_refusal(request, context.session.username, 404, "no such recording")
        raise NotPermitted(request.url.path) from None


def integrity_view(entry: CatalogEntry, now: dt.datetime) -> dict[str, Any]:
    """What ``_integrity_state.html`` shows: the badge word, its detail and when it was judged."""
    state = entry.integrity
    if state == "incomplete" and entry.state == "open":
        label = "being recorded"
    else:
        label = BADGES.get(state, state)
    return {
        "id": entry.id,
        "state": state,
        "label": label,
        "detail": entry.integrity_detail,
        "verified_at": shown_instant(entry.verified_at, now),
    }


def _values(entry: CatalogEntry, now: dt.datetime) -> dict[str, Any]:
    return {
        "rec": entry,
        "started": shown_instant(entry.started_at, now),
        "ended": shown_instant(entry.ended_at, now),
        "integrity": integrity_view(entry, now),
    }


@router.get("/evidence/recordings/{recording_id}/verify", response_class=HTMLResponse)
async def integrity_page(request: Request, recording_id: str) -> Response:
    context = await signed_in(request, SiteAction.READ_EVIDENCE)
    if context is None:
        return sign_in_redirect(request)
    entry = await _entry(request, context, recording_id)
    values = _values(entry, services_of(request).clock())
    return await page(request, context, "recording_integrity.html", values, current="evidence")


async def verify_recording(request: Request, actor: str, entry: CatalogEntry) -> CatalogEntry:
    """Verify the file now (the catalog keeps the verdict), audit ``recording.verify`` as
    the CLI does, and return the entry with its new verdict."""
    services = services_of(request)
    try:
        result: VerifyResult | None = await services.recordings.verify(entry.id)
    except RecordingMissing:
        result = None
    await services.audit.record(
        actor=actor,
        action="recording.verify",
        result="success" if result is not None and result.ok else "failure",
        target=entry.id,
        source=source_of(request),
        detail={"status": str(result.status) if result is not None else "missing",
                "session_id": entry.session_id},
    )  # fmt: skip
    return await services.recordings.entry(entry.id)


@router.post("/evidence/recordings/{recording_id}/verify", response_class=HTMLResponse)
async def verify_now(request: Request, recording_id: str) -> Response:
    context = await signed_in_post(request)
    await require_capability(request, context, SiteAction.READ_EVIDENCE)
    entry = await _entry(request, context, recording_id)
    services = services_of(request)
    entry = await verify_recording(request, context.session.username, entry)
    values = _values(entry, services.clock())
    if request.headers.get("HX-Request") == "true":
        return render(request, "_integrity_state.html", values)
    values["verified_now"] = True
    return await page(request, context, "recording_integrity.html", values, current="evidence")


def readme(entry: CatalogEntry, key_id: str, version: int | None = None) -> str:
    """The bundle's README: what is inside and how to check it with python/openssl alone."""
    if version in CHAIN_HASH:
        packed = f", chunks compressed with {COMPRESSION[version]}" if COMPRESSION[version] else ""
        fmt = f"container format {version}, {CHAIN_HASH[version]} hash chain{packed}"
    else:
        fmt = "container format unknown: the header cannot be read"
    return README.format(id=entry.id, session=entry.session_id, user=entry.username,
                         asset=entry.asset, key_id=key_id, format=fmt)  # fmt: skip


README = """Conduit evidence bundle: recording {id}
Session {session} of {user} on {asset}.

Files
  {id}.rec            the recording exactly as stored (encrypted chunks, signed footer;
                      {format})
  signing-key.pem     the gateway's Ed25519 public key (key id {key_id})
  audit-events.jsonl  the audit events of this session, with their hash-chain fields
  manifest.json       who and what this is, and the SHA-256 of each file
  verify_bundle.py    the offline check described below
  README.txt          this file

Check it offline (no Conduit, no secret; Python 3.11+ with the "cryptography" package, and
for a format-2 recording also "blake3": pip install cryptography blake3):
  python3 verify_bundle.py THIS-BUNDLE.zip        (or the directory it was unpacked into)
It prints "intact", or "tampered: <why>", or "incomplete: <why>" (exit codes 0, 1, 2; 3 and
"cannot check" when blake3 is missing). The recording's format and hash are in manifest.json
("format_version", "chain_hash") and in the line the script writes after "intact".

What "intact" proves
  The footer's Ed25519 signature (by the key in signing-key.pem) covers the recording id,
  the hash (SHA-256 in format 1, BLAKE3 in format 2) over the magic and header frame, the
  hash chain over every chunk frame exactly as stored (compressed or not, encrypted),
  the chunk count and the end reason. The script recomputes the chain from the file, so one
  changed, missing, added or reordered byte anywhere in the header or chunks, or after the
  footer, gives "tampered". Each audit event's hash is recomputed from its fields, and
  consecutive events are checked to be chained.
What it does not prove
  That the key is the gateway's: compare its id with the one your gateway reports. Check it
  with openssl alone (the id is the first 16 bytes of SHA-256 of the raw 32-byte key):
    openssl pkey -pubin -in signing-key.pem -outform DER | tail -c 32 | sha256sum | cut -c1-32
  That these are all of the session's audit events: the full chain (with its signed
  checkpoints) is checked on the gateway with "conduit audit verify".
  The recording's content is encrypted with its own data key, which is not in this bundle
  on purpose: the signature already fixes every encrypted byte, and the key would let
  anyone holding a copy read the session, typed passwords included. Replay it in the
  portal, or with "conduit recordings export" on the gateway.
"""


def _write_member(bundle: zipfile.ZipFile, name: str, source: BinaryIO) -> str:
    """Copy ``source`` into the zip as ``name``; returns its SHA-256."""
    digest = hashlib.sha256()
    with bundle.open(name, "w", force_zip64=True) as out:
        while block := source.read(COPY_BLOCK):
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def bundle_files(
    out: IO[bytes], entry: CatalogEntry, recording: BinaryIO, public_pem: bytes, key_id: str,
    events: list[str], exported: dict[str, str],
) -> None:  # fmt: skip
    """Write the bundle zip into ``out`` (blocking: run it in a thread)."""
    try:
        version: int | None = peek_header(recording).format_version
    except Unreadable:
        version = None  # the bundle still carries the file; its check will say why
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        digests = {f"{entry.id}.rec": _write_member(bundle, f"{entry.id}.rec", recording)}
        small = {
            "signing-key.pem": public_pem,
            "audit-events.jsonl": "".join(events).encode(),
            "verify_bundle.py": SCRIPT.read_bytes(),
            "README.txt": readme(entry, key_id, version).encode(),
        }
        for name, data in small.items():
            bundle.writestr(name, data)
            digests[name] = hashlib.sha256(data).hexdigest()
        manifest = {
            "recording_id": entry.id, "session_id": entry.session_id, "user": entry.username,
            "asset": entry.asset, "protocol": entry.protocol, "kind": entry.kind,
            "started_at": entry.started_at.isoformat(),
            "ended_at": entry.ended_at.isoformat() if entry.ended_at else None,
            "end_reason": entry.end_reason, "catalog_integrity": entry.integrity,
            "signing_key_id": key_id, "sha256": digests, **exported,
            "format_version": version,
            "chain_hash": CHAIN_HASH.get(version) if version is not None else None,
            "compression": COMPRESSION.get(version) if version is not None else None,
        }  # fmt: skip
        bundle.writestr("manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")


async def session_events(request: Request, entry: CatalogEntry) -> list[str]:
    """The session's audit events as JSON lines, scanned only over its recording's span."""
    services = services_of(request)
    until = (entry.ended_at or services.clock()) + EVENT_SLACK
    wanted = audit_query.AuditFilter(
        session_id=entry.session_id, since=entry.started_at - EVENT_SLACK, until=until
    )
    return [
        json.dumps(event.as_json(), ensure_ascii=False, sort_keys=True) + "\n"
        async for event in audit_query.matching(
            services.sessions, wanted, max_events=MAX_BUNDLE_EVENTS
        )
    ]


@router.get("/evidence/recordings/{recording_id}/bundle")
async def bundle(request: Request, recording_id: str) -> Response:
    context = await signed_in(request, SiteAction.READ_EVIDENCE)
    if context is None:
        return sign_in_redirect(request)
    entry = await _entry(request, context, recording_id)
    try:
        return await bundle_download(request, context.session.username, entry)
    except RecordingMissing:
        await audit_refusal(request, context.session.username, 404, "recording file missing")
        raise NotPermitted(request.url.path) from None


async def bundle_download(request: Request, actor: str, entry: CatalogEntry) -> Response:
    """The evidence zip of ``entry`` for ``actor`` (opening the file is audited
    ``recording.download``); ``RecordingMissing`` when the file is gone."""
    services = services_of(request)
    public = services.keys.signing_key.public_key()
    pem = public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    events = await session_events(request, entry)
    exported = {"exported_by": actor, "exported_at": services.clock().isoformat()}
    spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the streaming generator
    try:
        async with services.recordings.open_for_reading(
            entry.id, actor=actor, source=source_of(request), purpose="download"
        ) as (_, stream):
            await asyncio.to_thread(
                bundle_files, spool, entry, stream, pem, signing_key_id(public), events, exported
            )
    except BaseException:
        spool.close()
        raise
    size = await asyncio.to_thread(spool.seek, 0, 2)
    await asyncio.to_thread(spool.seek, 0)
    name = f"conduit-evidence-{entry.id}.zip"
    return StreamingResponse(
        _stream(spool), media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}"',
                 "Content-Length": str(size), "Cache-Control": "no-store"},
    )  # fmt: skip


async def _stream(spool: IO[bytes]) -> AsyncIterator[bytes]:
    try:
        while block := await asyncio.to_thread(spool.read, COPY_BLOCK):
            yield block
    finally:
        spool.close()
