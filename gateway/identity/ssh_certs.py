"""SSH user certificates: the gateway's user CA signs a user's registered key after MFA.

A certificate names the user as its one principal, carries the key id
``conduit:<user>:<serial>``, is valid from a few minutes ago (clock skew between nodes) to
``hours`` ahead, and permits a PTY and port forwarding (which tunnels are allowed is still
the broker's decision per grant); it does not permit agent or X11 forwarding or user rc
files. Only a key registered to that user (``ssh_access``) is signed, and only for an active
account; each certificate is a row in ``ssh_certificates`` so an admin can list them.
``trusted_ca_line`` is the authorized-keys entry the SSH server trusts for one user.

``issue_audited`` is what the portal, the API and the CLI call: one transaction, then
``ssh.certificate.issued`` (or ``ssh.certificate.refused``) in the audit log; a certificate
whose audit event could not be written is not handed out. ``certificate_candidate`` and
``check_registered`` answer the SSH server's certificate login (may this account use one
now; was this certificate issued here for a key still registered). Does not check the second
factor (callers do: ``Authenticator`` or the portal's step-up) and does not run the SSH
login itself (``gateway.ssh.certificates``).
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any

import asyncssh
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import noload

from gateway.audit.sink import AuditSink
from gateway.db.models import User, UserRole
from gateway.errors import ConduitError
from gateway.identity.accounts import USERNAME_RE
from gateway.identity.lockout import is_locked
from gateway.identity.models import SSHCertificate, SSHPublicKey
from gateway.identity.ssh_access import SSHKeyError, parse_public_key

BACKDATE = dt.timedelta(minutes=5)
ISSUED_VIA = ("portal", "api", "cli")
NOT_REGISTERED = "this public key is not registered to the account: add it first"


@dataclass(frozen=True)
class IssuedCertificate:
    serial: int
    key_id: str
    fingerprint: str
    valid_after: dt.datetime
    valid_before: dt.datetime
    text: str  # one OpenSSH line: "ssh-ed25519-cert-v01@openssh.com AAAA... key id"


@dataclass(frozen=True)
class CertificateListing:
    serial: int
    username: str
    key_fingerprint: str
    issued_via: str
    issued_at: dt.datetime
    valid_before: dt.datetime


def trusted_ca_line(ca: asyncssh.SSHKey, username: str) -> str:
    """``cert-authority,principals="alice" <CA public key>`` for the SSH server.

    asyncssh accepts a certificate from the CA only if its principals include ``username``
    (and then skips comparing them with the routed login name ``alice+asset``).
    """
    if not USERNAME_RE.fullmatch(username):  # never a quote, comma or wildcard in the line
        raise ValueError(f"not a username: {username!r}")
    public = ca.export_public_key("openssh").decode("ascii").split()
    return f'cert-authority,principals="{username}" {public[0]} {public[1]}'


async def registered_key(
    db: AsyncSession, user_id: int, *, key_row_id: int | None = None, public_key: str = ""
) -> SSHPublicKey:
    """The user's registered key, by its row id or by its public key line."""
    query = select(SSHPublicKey).where(SSHPublicKey.user_id == user_id)
    if key_row_id is not None:
        query = query.where(SSHPublicKey.id == key_row_id)
    else:
        query = query.where(SSHPublicKey.fingerprint == parse_public_key(public_key).fingerprint)
    row: SSHPublicKey | None = await db.scalar(query)
    if row is None:
        raise SSHKeyError(NOT_REGISTERED)
    return row


async def issue_certificate(
    db: AsyncSession,
    ca: asyncssh.SSHKey,
    user_id: int,
    key: SSHPublicKey,
    *,
    now: dt.datetime,
    hours: int,
    via: str,
) -> IssuedCertificate:
    """Sign ``key`` for its user and record it (the caller commits and audits)."""
    if via not in ISSUED_VIA:
        raise ValueError(f"issued_via {via!r} is not one of {ISSUED_VIA}")
    user = await db.get(User, user_id)
    if user is None or key.user_id != user.id:
        raise SSHKeyError(NOT_REGISTERED)
    if user.status != "active" or is_locked(user, now):
        raise ConduitError("the account may not log in now", f"account {user.status} or locked")
    serial = secrets.randbits(63) or 1  # BIGINT is signed: 63 random bits always fit
    key_id = f"conduit:{user.username}:{serial}"
    valid_after = (now - BACKDATE).replace(microsecond=0)
    valid_before = (now + dt.timedelta(hours=hours)).replace(microsecond=0)
    cert = ca.generate_user_certificate(
        asyncssh.import_public_key(key.openssh),
        key_id,
        serial=serial,
        principals=[user.username],
        valid_after=int(valid_after.timestamp()),
        valid_before=int(valid_before.timestamp()),
        permit_x11_forwarding=False,
        permit_agent_forwarding=False,
        permit_port_forwarding=True,
        permit_pty=True,
        permit_user_rc=False,
        comment=key_id,
    )
    db.add(
        SSHCertificate(
            serial=serial,
            user_id=user.id,
            key_fingerprint=key.fingerprint,
            key_id=key_id,
            issued_via=via,
            issued_at=now,
            valid_after=valid_after,
            valid_before=valid_before,
        )
    )
    await db.flush()
    text = cert.export_certificate("openssh").decode("ascii")
    return IssuedCertificate(serial, key_id, key.fingerprint, valid_after, valid_before, text)


async def issue_audited(
    sessions: async_sessionmaker[Any],
    audit: AuditSink,
    ca: asyncssh.SSHKey | None,
    user_id: int,
    username: str,
    *,
    key_row_id: int | None = None,
    public_key: str = "",
    now: dt.datetime,
    hours: int,
    via: str,
    source: str,
) -> IssuedCertificate:
    """Issue for a user who has just passed MFA; audit the issue or the refusal."""
    try:
        if ca is None:
            raise ConduitError(
                "this gateway has no SSH user CA: run `conduit init`", "no SSH user CA key"
            )
        async with sessions() as db, db.begin():
            key = await registered_key(db, user_id, key_row_id=key_row_id, public_key=public_key)
            issued = await issue_certificate(db, ca, user_id, key, now=now, hours=hours, via=via)
    except ConduitError as exc:
        await audit.record(
            actor=username,
            action="ssh.certificate.refused",
            result="denied",
            source=source,
            detail={"via": via, "reason": exc.detail},
        )
        raise
    await audit.record(
        actor=username,
        action="ssh.certificate.issued",
        result="success",
        target=issued.key_id,
        source=source,
        detail={
            "via": via,
            "serial": str(issued.serial),
            "key_fingerprint": issued.fingerprint,
            "valid_before": issued.valid_before.isoformat(),
        },
    )
    return issued


async def list_certificates(
    db: AsyncSession, username: str | None = None, limit: int = 500
) -> list[CertificateListing]:
    """Issued certificates, newest first, optionally of one user."""
    query = (
        select(SSHCertificate, User.username)
        .join(User, User.id == SSHCertificate.user_id)
        .order_by(SSHCertificate.issued_at.desc(), SSHCertificate.id.desc())
        .limit(limit)
    )
    if username is not None:
        query = query.where(User.username == username)
    rows = (await db.execute(query)).all()
    return [
        CertificateListing(
            c.serial, name, c.key_fingerprint, c.issued_via, c.issued_at, c.valid_before
        )
        for c, name in rows
    ]


@dataclass(frozen=True)
class CertificateCandidate:
    """An account that may log in with a certificate now (roles read only once one is
    accepted, ``check_registered``)."""

    user_id: int
    username: str
    roles: tuple[str, ...] = ()


async def certificate_candidate(
    sessions: async_sessionmaker[AsyncSession], username: str, now: dt.datetime
) -> CertificateCandidate | str:
    """The account a certificate login for ``username`` would be, or why there is none
    (``unknown-user``, ``account-<status>``, ``locked``)."""
    async with sessions() as db:
        row: User | None = await db.scalar(
            select(User).where(User.username == username).options(noload(User.roles))
        )
    if row is None:
        return "unknown-user"
    if row.status != "active":
        return f"account-{row.status}"
    if is_locked(row, now):
        return "locked"
    return CertificateCandidate(row.id, row.username)


@dataclass(frozen=True)
class RegisterCheck:
    """A presented certificate against the register: issued here (and not yet expired) for
    this user and key, the key still registered, and the user's roles when both hold."""

    issued: bool
    registered: bool
    roles: tuple[str, ...]


async def check_registered(
    sessions: async_sessionmaker[AsyncSession],
    user_id: int,
    serial: int,
    fingerprint: str,
    now: dt.datetime,
) -> RegisterCheck:
    async with sessions() as db:
        issued = await db.scalar(
            select(SSHCertificate.id).where(
                SSHCertificate.serial == serial,
                SSHCertificate.user_id == user_id,
                SSHCertificate.key_fingerprint == fingerprint,
                SSHCertificate.valid_before > now,
            )
        )
        registered = await db.scalar(
            select(SSHPublicKey.id).where(
                SSHPublicKey.user_id == user_id, SSHPublicKey.fingerprint == fingerprint
            )
        )
        roles: tuple[str, ...] = ()
        if issued is not None and registered is not None:
            found = await db.scalars(select(UserRole.role).where(UserRole.user_id == user_id))
            roles = tuple(sorted(found.all()))
    return RegisterCheck(issued is not None, registered is not None, roles)
