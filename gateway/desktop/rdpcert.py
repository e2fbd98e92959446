"""Learning an RDP asset's certificate fingerprint, once, for an admin to pin (like SSH's scan).

Speaks just enough RDP to reach TLS (an X.224 Connection Request asking for TLS or CredSSP),
completes the TLS handshake without verifying anything and returns the SHA-256 fingerprint
of the certificate presented. Trust on first use by a person: the admin compares it with the
asset (e.g. the fingerprint Windows shows for its RDP certificate) before pinning it. Does
not log in, store the pin or decide anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import struct

from gateway.errors import ConduitError

PROTOCOL_SSL = 0x1
PROTOCOL_HYBRID = 0x2
SCAN_TIMEOUT_SECONDS = 10


class CertificateScanError(ConduitError):
    """The asset did not get as far as presenting a TLS certificate."""


def connection_request(protocols: int = PROTOCOL_SSL | PROTOCOL_HYBRID) -> bytes:
    """TPKT + X.224 Connection Request carrying an RDP Negotiation Request (MS-RDPBCGR 2.2.1.1)."""
    negotiation = struct.pack("<BBHI", 0x01, 0x00, 8, protocols)
    x224 = bytes([6 + len(negotiation), 0xE0, 0, 0, 0, 0, 0]) + negotiation
    return struct.pack(">BBH", 3, 0, 4 + len(x224)) + x224


def selected_protocol(tpkt: bytes) -> int:
    """The protocol from an X.224 Connection Confirm; refuses a negotiation failure or an
    answer without negotiation (RDP standard security, which has no certificate)."""
    if len(tpkt) < 19 or tpkt[0] != 3 or tpkt[5] != 0xD0:
        raise CertificateScanError("the asset did not answer as an RDP server", tpkt[:32].hex())
    kind, _flags, length, value = struct.unpack("<BBHI", tpkt[11:19])
    if kind == 0x03:
        raise CertificateScanError(
            "the asset refused TLS", f"RDP negotiation failure code {value:#x}"
        )
    if kind != 0x02 or length != 8 or not value & (PROTOCOL_SSL | PROTOCOL_HYBRID):
        raise CertificateScanError(
            "the asset offers no TLS (RDP standard security cannot be pinned)",
            f"negotiation response type {kind:#x} protocol {value:#x}",
        )
    return int(value)


def fingerprint(der: bytes) -> str:
    """As FreeRDP's ``/cert:...,fingerprint:sha256:`` compares it: lowercase, colons."""
    return hashlib.sha256(der).digest().hex(":")


async def scan_certificate(host: str, port: int) -> str:
    """The SHA-256 fingerprint (``aa:bb:...``) of the certificate the RDP asset presents."""
    try:
        async with asyncio.timeout(SCAN_TIMEOUT_SECONDS):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(connection_request())
                header = await reader.readexactly(4)
                (length,) = struct.unpack(">H", header[2:4])
                if not 11 <= length <= 512:
                    raise CertificateScanError(
                        "the asset did not answer as an RDP server", f"TPKT length {length}"
                    )
                selected_protocol(header + await reader.readexactly(length - 4))
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE  # read, not trusted: a person compares it
                await writer.start_tls(context)
                ssl_object = writer.get_extra_info("ssl_object")
                der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
    except (OSError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError) as exc:
        raise CertificateScanError(
            f"could not read the certificate of {host}:{port}",
            f"{host}:{port}: {type(exc).__name__}: {exc}",
        ) from None
    if not der:
        raise CertificateScanError("the asset presented no certificate", f"{host}:{port}")
    return fingerprint(der)
