"""The client's address behind a trusted HTTP reverse proxy (``portal.trusted_proxies``).

HAProxy in HTTP mode (``option forwardfor``) appends the address it received a request
from to ``X-Forwarded-For``. Anyone can send that header, so it is believed only when the
TCP peer is a configured proxy, and then walked from the right: each hop a trusted proxy
appended is believed, and the first hop that is not itself a trusted proxy is the client.
Everything to its left was written by the client and is ignored. A hop that is not an IP
address stops the walk at the last address known to be real (fail closed: the proxy's own
address, never a value the client chose). At most ``MAX_HOPS`` hops from the right are read.
Pure: takes the peer, the header values and the networks; does no I/O and decides nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_HOPS = 32
MAX_HEADER = 4096  # characters of X-Forwarded-For read, from the right


@lru_cache(maxsize=8)
def networks(values: tuple[str, ...]) -> tuple[Network, ...]:
    """The configured networks, parsed once per distinct setting."""
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        found = ipaddress.ip_address(text.strip().removeprefix("[").removesuffix("]"))
    except ValueError:
        return None
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


def _trusted(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, nets: Sequence[Network]
) -> bool:
    return any(address.version == net.version and address in net for net in nets)


def client_address(peer: str, forwarded_for: Sequence[str], nets: Sequence[Network]) -> str:
    """The client's address: ``peer`` unless it is a trusted proxy, else the rightmost hop of
    ``forwarded_for`` (every header value, in order) that is not a trusted proxy."""
    current = _address(peer)
    if current is None or not nets or not _trusted(current, nets):
        return peer
    joined = ",".join(forwarded_for)[-MAX_HEADER:]
    hops = [hop for hop in joined.split(",") if hop.strip()][-MAX_HOPS:]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break  # not an address: keep the last one known to be real
        current = address
        if not _trusted(address, nets):
            break
    return str(current)
