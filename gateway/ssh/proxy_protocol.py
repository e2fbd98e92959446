"""PROXY protocol version 2 headers (HAProxy's ``send-proxy-v2``): bytes in, the client's
address out, with limits. No I/O (``gateway.ssh.proxy_gate`` feeds it).

A load balancer in TCP mode opens its own connection to the gateway, so the gateway would
see the balancer's address; the header it sends first carries the client's. Only TCP over
IPv4 or IPv6 is accepted (``PROXY``), and ``LOCAL`` (the balancer's own health check, which
keeps the connection's real endpoints). TLVs after the addresses are skipped, within
``MAX_TLV_BYTES``. Version 1 (text) headers are not accepted: ``looks_like_proxy`` only
recognises them so that one sent where none is allowed can be refused by name.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
FIXED = 16  # signature, version/command, family/transport, length
MAX_TLV_BYTES = 512  # what HAProxy sends (unique id, ALPN, SSL facts) fits many times over
MAX_HEADER = FIXED + 36 + MAX_TLV_BYTES
_V1 = b"PROXY "
_TCP4, _TCP6, _UNSPEC = 0x11, 0x21, 0x00
_ADDRESS_BYTES = {_TCP4: 12, _TCP6: 36, _UNSPEC: 0}


class ProxyHeaderError(ValueError):
    """Not a PROXY v2 header this gateway accepts; the text says why (for the audit)."""


@dataclass(frozen=True)
class ProxyHeader:
    """``source`` is the client's (address, port); None for LOCAL or an unspecified family
    (the connection's own endpoints stand). ``length`` is the header's size in bytes."""

    source: tuple[str, int] | None
    length: int


def looks_like_proxy(first: bytes) -> bool:
    """Whether a connection's first bytes begin a PROXY header (v1 or v2)."""
    if not first:
        return False
    n = min(len(first), len(SIGNATURE))
    return first[:n] == SIGNATURE[:n] or first[: len(_V1)] == _V1[: min(len(first), len(_V1))]


def parse(buf: bytes) -> ProxyHeader | None:
    """The header at the start of ``buf``; None while more bytes are needed.

    ``ProxyHeaderError`` as soon as ``buf`` cannot start a header accepted here.
    """
    head = buf[: len(SIGNATURE)]
    if head != SIGNATURE[: len(head)]:
        raise ProxyHeaderError("no PROXY protocol v2 signature")
    if len(buf) < FIXED:
        return None
    version, command = buf[12] >> 4, buf[12] & 0x0F
    family, length = buf[13], struct.unpack_from("!H", buf, 14)[0]
    if version != 2:
        raise ProxyHeaderError(f"PROXY protocol version {version}")
    if command not in (0, 1):
        raise ProxyHeaderError(f"PROXY command {command}")
    if family not in _ADDRESS_BYTES and command == 1:
        raise ProxyHeaderError(f"PROXY family/transport 0x{family:02x} (TCP only)")
    if length > MAX_HEADER - FIXED:
        raise ProxyHeaderError(f"PROXY header of {FIXED + length} bytes")
    needed = _ADDRESS_BYTES.get(family, 0) if command == 1 else 0
    if length < needed:
        raise ProxyHeaderError(f"PROXY addresses cut short ({length} < {needed} bytes)")
    if len(buf) < FIXED + length:
        return None
    if command == 0 or family == _UNSPEC:
        return ProxyHeader(None, FIXED + length)
    if family == _TCP4:
        address = str(ipaddress.IPv4Address(buf[16:20]))
        port = struct.unpack_from("!H", buf, 24)[0]
    else:
        address = str(ipaddress.IPv6Address(buf[16:32]))
        port = struct.unpack_from("!H", buf, 48)[0]
    return ProxyHeader((address, port), FIXED + length)


def build(source: tuple[str, int], destination: tuple[str, int], tlvs: bytes = b"") -> bytes:
    """A PROXY command header for TCP from ``source`` to ``destination`` (tests, benches)."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        raise ValueError("source and destination must be the same IP version")
    family = _TCP4 if src.version == 4 else _TCP6
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1]) + tlvs
    return SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body
