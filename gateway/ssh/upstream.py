"""The upstream SSH client: connects to an asset only with an Authorization in hand.

Known hosts are the asset's pinned keys and nothing else (no ~/.ssh, no agent, no config
file); a key mismatch refuses with ``HostKeyMismatch``. Credentials come from the vault for
the authorized asset. aes128-gcm first and no compression: measured fastest here (see
shared/SSH-RELAY.md). Does not decide access or record anything.
"""

from __future__ import annotations

import datetime as dt

import asyncssh

from gateway.errors import HostKeyMismatch, UpstreamError
from gateway.sessions.ticket import Ticket, check_ticket
from gateway.vault import Credential

CIPHERS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
]
CONNECT_TIMEOUT_SECONDS = 15


__all__ = ["CIPHERS", "HostKeyMismatch", "UpstreamError", "connect"]


async def connect(
    ticket: Ticket, credential: Credential, now: dt.datetime
) -> asyncssh.SSHClientConnection:
    """Log in to the ticket's target as its account, trusting only its pinned host keys.

    The ticket is checked again here (``check_ticket``): the broker checked and audited it
    already, so this refuses only a call that went around the broker."""
    check_ticket(ticket, now, login=True)
    target = ticket.target
    host, port, obj = target.host, target.port, ticket.proof.obj
    pinned = [asyncssh.import_public_key(line) for line in target.host_keys]
    if not pinned:
        raise HostKeyMismatch(
            "the asset's host key is not pinned",
            f"{obj}: no pinned host key; run conduit asset pin-hostkey",
        )
    options = asyncssh.SSHClientConnectionOptions(
        username=credential.username,
        password=credential.password,
        client_keys=[credential.private_key] if credential.private_key else None,
        known_hosts=(pinned, [], []),
        encryption_algs=CIPHERS,
        compression_algs=["none"],
        agent_path=None,
        agent_forwarding=False,
        config=None,
        ignore_encrypted=True,
        preferred_auth=["publickey"]
        if credential.private_key
        else ["password", "keyboard-interactive"],
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        login_timeout=CONNECT_TIMEOUT_SECONDS,
        keepalive_interval=30,
    )
    try:
        return await asyncssh.connect(host, port, options=options)
    except asyncssh.HostKeyNotVerifiable as exc:
        raise HostKeyMismatch(
            "the asset's identity could not be verified",
            f"{obj} {host}:{port}: host key mismatch: {exc}",
        ) from None
    except asyncssh.PermissionDenied:
        raise UpstreamError(
            "the asset refused the vaulted credential",
            f"{obj} {host}:{port}: permission denied",
        ) from None
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise UpstreamError(
            "the asset is not reachable", f"{obj} {host}:{port}: {type(exc).__name__}: {exc}"
        ) from None
