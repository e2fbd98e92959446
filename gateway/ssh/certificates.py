"""Certificate login for the SSH jump host: trust this gateway's user CA for the routed user.

The routed login name (``alice+plc-01``) cannot be a certificate principal, so ``prepare``
(called from ``begin_auth``) gives asyncssh one authorized-keys entry for this connection,
``cert-authority,principals="alice" <CA key>``, and only when alice may log in now (active,
not locked). asyncssh then accepts a certificate from this CA whose principals include
alice, checks its type, validity times and signature, and skips its own principal ==
login-name check because the entry names the principals. Bare public keys and other CAs
reach the server's refusing hooks, which call ``refuse_key`` / ``refuse_ca`` here.

asyncssh's checks say nothing of the gateway's register, so ``prepare`` also wraps the
connection's certificate validation (a private asyncssh coroutine, checked for; without it
certificate logins are refused): a certificate asyncssh accepted must also be in the
register of certificates this gateway issued, for a key the user still has registered.
Removing a key therefore stops its certificates at the next login, and the accepted
certificate's serial is known for the ``login.success`` audit.

Refusals are remembered with their reason and audited once: as one ``login.failure`` if the
connection ends without logging in, or as one ``ssh.key.refused`` when it then logs in by
another method or with another key (OpenSSH offers every key it holds before it tries
keyboard-interactive, so a refused key alone is not a failed login). OpenSSH also offers a
key bare just before its certificate: when that certificate logs in, the bare offer of the
same key is dropped, as no refusal. A certificate from this
CA for this user that then fails asyncssh's checks (expired, not yet valid) calls no hook at
all; ``_TrustedCA`` counts the match so that refusal has its own reason too.

Does not issue certificates (``gateway.identity.ssh_certs``) or decide access (broker).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import asyncssh

from gateway.identity.login import Identity
from gateway.identity.ssh_certs import (
    CertificateCandidate,
    certificate_candidate,
    check_registered,
    trusted_ca_line,
)
from gateway.services import Services

log = logging.getLogger(__name__)
FACTOR = "certificate"
_VALIDATE = "_validate_openssh_certificate"  # asyncssh's per-connection certificate check
MAX_NOTED = 20  # refusals kept per connection for the audit event
_BARE_KEY = "public-key-without-certificate"


class _TrustedCA(asyncssh.SSHAuthorizedKeys):
    """The one CA entry of a connection; counts the certificates it matched."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.matched = 0

    def validate(
        self,
        key: asyncssh.SSHKey,
        client_host: str,
        client_addr: str,
        cert_principals: Sequence[str] | None = None,
        ca: bool = False,
    ) -> Mapping[str, object] | None:
        options = super().validate(key, client_host, client_addr, cert_principals, ca)
        if ca and options is not None:
            self.matched += 1
        return options


class CertificateLogin:
    """Per SSH connection: whom a certificate may log in, and what was refused and why."""

    def __init__(self, services: Services) -> None:
        self._s = services
        self._candidate: CertificateCandidate | None = None
        self._trusted: _TrustedCA | None = None
        self._why_not = "malformed-username"
        self._refused: list[dict[str, str]] = []
        self._cert_refusal: tuple[str, str] | None = None  # (reason, fingerprint)
        self.serial: int | None = None  # of the certificate that logged in
        self._certified_key = ""  # fingerprint of the key that certificate certifies

    async def prepare(self, conn: asyncssh.SSHServerConnection, user: str | None) -> None:
        """Trust the CA for ``user`` on ``conn`` if that account may log in now."""
        self._candidate, self._trusted = None, None
        self._cert_refusal, self.serial, self._certified_key = None, None, ""
        conn.set_authorized_keys(None)
        ca = self._s.keys.ssh_user_ca
        if user is None or ca is None:
            self._why_not = "malformed-username" if ca is not None else "no-user-ca"
            return
        if not self._guard(conn):
            self._why_not = "certificate-check-unavailable"
            return
        found = await certificate_candidate(self._s.sessions, user, self._s.clock())
        if isinstance(found, str):
            self._why_not = found
        else:
            self._candidate = found
        if self._candidate is not None:
            self._trusted = _TrustedCA(trusted_ca_line(ca, user))
            conn.set_authorized_keys(self._trusted)

    def _guard(self, conn: asyncssh.SSHServerConnection) -> bool:
        """Wrap ``conn``'s certificate check once with ``_registered_check``."""
        validate: Callable[[str, Any], Awaitable[Any]] | None = getattr(conn, _VALIDATE, None)
        if validate is None:
            log.error("asyncssh %s: no %s: certificate logins refused",
                      asyncssh.__version__, _VALIDATE)  # fmt: skip
            return False
        if getattr(validate, "_conduit_guard", False):
            return True

        async def guarded(username: str, cert: Any) -> Any:
            key = await validate(username, cert)
            if key is None or await self._registered_check(cert):
                return key
            return None

        guarded._conduit_guard = True  # type: ignore[attr-defined]
        setattr(conn, _VALIDATE, guarded)
        return True

    async def _registered_check(self, cert: Any) -> bool:
        """A certificate asyncssh accepted: issued here, for a key still registered?

        Asked only when a certificate is presented, so other logins pay nothing for it."""
        candidate = self._candidate
        serial = int(getattr(cert, "_serial", -1))
        fingerprint = cert.key.get_fingerprint("sha256")
        if candidate is None:  # asyncssh accepted one only through our entry: not reached
            return False
        check = await check_registered(
            self._s.sessions, candidate.user_id, serial, fingerprint, self._s.clock()
        )
        if not check.issued:
            reason = "certificate-not-in-register"
            # Signed with our CA's key, and asyncssh found it valid, yet never issued here:
            # the CA key has been used outside this gateway.
            self._s.metrics.alert(
                "certificate_outside_register",
                f"serial {serial} for {candidate.username}, key {fingerprint}",
            )
        elif not check.registered:
            reason = "certificate-key-removed"
        else:
            self.serial, self._certified_key = serial, fingerprint
            self._candidate = replace(candidate, roles=check.roles)
            return True
        self._cert_refusal = (reason, fingerprint)
        return False

    def refuse_key(self, key: asyncssh.SSHKey) -> None:
        self._note(_BARE_KEY, key.get_fingerprint("sha256"))

    def refuse_ca(self, ca_key: asyncssh.SSHKey) -> None:
        ours = self._s.keys.ssh_user_ca
        if ours is None or ca_key.public_data != ours.public_data:
            reason = "certificate-from-another-ca"
        elif self._candidate is None:
            reason = f"certificate-refused-{self._why_not}"
        else:
            reason = "certificate-for-another-user"
        self._note(reason, ca_key.get_fingerprint("sha256"))

    def _note(self, reason: str, fingerprint: str) -> None:
        if len(self._refused) < MAX_NOTED:
            self._refused.append({"reason": reason, "fingerprint": fingerprint})

    def identity(self, now: dt.datetime) -> Identity | None:
        """After asyncssh accepted a certificate from our CA: who logged in."""
        c = self._candidate
        if c is None or self._trusted is None or self._trusted.matched == 0 or self.serial is None:
            return None
        # The second factor was passed when the certificate was issued; as for connect
        # codes, the SSH identity records the login time.
        return Identity(c.user_id, c.username, c.roles, now, "ssh", FACTOR)

    def failure_detail(self) -> dict[str, object] | None:
        """The audit detail of the keys and certificates refused on this connection, if any:
        for its ``login.failure``, or its ``ssh.key.refused`` once something else logged in."""
        refused = list(self._refused)
        if self.serial is not None:
            # OpenSSH offers a key bare before its certificate (id_ed25519, then
            # id_ed25519-cert.pub): that offer was no refusal once the certificate logged in.
            refused = [r for r in refused if not _certified(r, self._certified_key)]
        if self._cert_refusal is not None:
            reason, fingerprint = self._cert_refusal
            refused.insert(0, {"reason": reason, "fingerprint": fingerprint})
        elif self.serial is None and self._trusted is not None and self._trusted.matched:
            # Matched our CA and this user, then refused: expired or not yet valid, not a user
            # certificate, or the client gave up before signing with it. (A certificate that
            # logged in matched too: that match was no refusal.)
            refused.insert(0, {"reason": "certificate-not-valid", "fingerprint": ""})
        if not refused:
            return None
        primary = next((r for r in refused if r["reason"].startswith("certificate")), refused[0])
        return {
            "channel": "ssh",
            "factor": FACTOR,
            "reason": primary["reason"],
            "refused": refused,
        }


def _certified(refusal: dict[str, str], fingerprint: str) -> bool:
    """``refusal`` is the bare offer of the key whose certificate then logged in."""
    return refusal["reason"] == _BARE_KEY and refusal["fingerprint"] == fingerprint
