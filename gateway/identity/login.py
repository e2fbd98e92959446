"""Authentication for every front end: password + second factor → ``Identity`` or refusal.

``Authenticator`` is the one place a login is decided. The portal uses it in two steps
(``password_step`` then ``code_step``, bound to a pending-login state); SSH and the API
call ``verify_password_and_code`` in one. All of them go through ``_conclude``, so the
lockout counter, single-use codes and audit events are the same whichever channel is used.
A one-time connect code (SSH, in place of the password) goes through ``connect_code_login``,
which refuses locked and disabled accounts as ``_conclude`` does.
Unknown users, wrong passwords, wrong codes, locked and disabled accounts all raise the
same ``AuthenticationFailed`` message; the audit event carries the real reason.

Argon2 runs in a worker thread behind a semaphore of ``hash_slots()`` (CPUs / its threads):
the event loop stays responsive, a burst of logins cannot allocate 64 MiB per attempt
without bound, and logins in a burst finish one after another instead of all at the end.
Does not create portal sessions (see ``portal_sessions``) or decide access (rbac).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.audit.sink import AuditSink
from gateway.config import LockoutSettings
from gateway.db.models import User
from gateway.errors import ConduitError
from gateway.identity import pending
from gateway.identity.accounts import USERNAME_RE
from gateway.identity.codes import use_second_factor
from gateway.identity.lockout import clear_failures, is_locked, record_failure
from gateway.identity.passwords import hash_password, needs_rehash, verify_or_dummy
from gateway.identity.passwords import hash_slots as default_hash_slots
from gateway.identity.ssh_access import connect_code_is_open, use_connect_code

log = logging.getLogger(__name__)
FAILED = "invalid username, password or code"
UNKNOWN_ACTOR = "(unknown)"
CONNECT_CODE = "connect-code"  # the factor of a login by a one-time connect code


class AuthenticationFailed(ConduitError):
    """Every failed login looks like this to the user; ``detail`` is the audited reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(FAILED, reason)
        self.reason = reason


@dataclass(frozen=True)
class Identity:
    """Who passed authentication, on which channel, and when MFA was last passed."""

    user_id: int
    username: str
    roles: tuple[str, ...]
    mfa_at: dt.datetime
    channel: str
    factor: str  # "totp", "recovery", "connect-code" or "certificate"


def _name(username: str) -> str:
    """The attempted name as stored and audited: invalid names collapse to "?"."""
    return username if USERNAME_RE.fullmatch(username) else "?"


@dataclass
class Authenticator:
    sessions: async_sessionmaker[Any]
    master_key: bytes = field(repr=False)
    lockout: LockoutSettings
    audit: AuditSink
    hash_slots: int = field(default_factory=default_hash_slots)
    _slots: asyncio.Semaphore | None = field(default=None, init=False, repr=False)

    async def _verify(self, stored_hash: str | None, password: str) -> bool:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.hash_slots)
        async with self._slots:
            return await asyncio.to_thread(verify_or_dummy, stored_hash, password)

    async def _lookup(self, db: AsyncSession, name: str) -> User | None:
        if name == "?":
            return None
        user: User | None = await db.scalar(select(User).where(User.username == name))
        return user

    async def _check_password(self, name: str, password: str) -> tuple[int | None, bool]:
        """Argon2 for a known user, dummy work for an unknown one; rehash when stale."""
        async with self.sessions() as db:
            user = await self._lookup(db, name)
        stored = user.password_hash if user is not None else None
        ok = await self._verify(stored, password)
        if ok and user is not None and stored is not None and needs_rehash(stored):
            new_hash = await asyncio.to_thread(hash_password, password)
            async with self.sessions() as db, db.begin():
                await db.execute(
                    update(User)
                    .where(User.id == user.id, User.password_hash == stored)
                    .values(password_hash=new_hash)
                )
        return (user.id if user is not None else None), ok

    async def password_step(
        self, raw_pending: str | None, username: str, password: str, now: dt.datetime, source: str
    ) -> bool:
        """Step 1. True: go on to step 2 (whatever the result). False: state gone or hijack.

        The result of the password check is stored, not shown: step 2 reveals only
        success or the one failure message.
        """
        name = _name(username)
        async with self.sessions() as db:
            state = await pending.find(db, raw_pending, now)
        if state is None:
            return False
        if state.username and state.username != name:
            await self._refuse_conflict(state.id, state.username, name, now, source)
            return False
        user_id, ok = await self._check_password(name, password)
        async with self.sessions() as db, db.begin():
            bound = await pending.bind(db, state.id, name, user_id, ok)
            if not bound:
                await pending.destroy(db, state.id)
        if not bound:
            # Another step 1 for a different user got in first: both lose.
            await self._refuse_conflict(state.id, "(concurrent)", name, now, source)
        return bound

    async def _refuse_conflict(
        self, pending_id: int, first: str, second: str, now: dt.datetime, source: str
    ) -> None:
        async with self.sessions() as db, db.begin():
            await pending.destroy(db, pending_id)
        log.warning("pending login named two users; destroyed", extra={"source": source})
        await self.audit.record(
            actor=second if second != "?" else UNKNOWN_ACTOR,
            action="login.failure",
            result="failure",
            target=first,
            source=source,
            detail={"reason": "pending-login-user-mismatch", "channel": "portal"},
        )

    async def code_step(
        self, raw_pending: str | None, code: str, now: dt.datetime, source: str
    ) -> tuple[Identity, str]:
        """Step 2: spend the pending state and conclude; returns the identity and next path."""
        async with self.sessions() as db, db.begin():
            state = await pending.take(db, raw_pending, now)
        if state is None or not state.username:
            raise AuthenticationFailed("no-pending-login")
        identity = await self._conclude(
            state.user_id, state.username, state.password_ok, code, "portal", now, source
        )
        return identity, state.next_path

    async def verify_password_and_code(
        self, username: str, password: str, code: str, channel: str, source: str, now: dt.datetime
    ) -> Identity:
        """One-shot login for SSH and the API: same rules, same lockout counter as the portal."""
        name = _name(username)
        user_id, ok = await self._check_password(name, password)
        return await self._conclude(user_id, name, ok, code, channel, now, source)

    async def connect_code_login(
        self, username: str, asset: str, code: str, channel: str, source: str, now: dt.datetime
    ) -> Identity | None:
        """A one-time connect code given where the password goes (made in the portal after
        MFA, bound to this user and ``asset``): the identity, spending the code.

        None when ``code`` is no such code: nothing is audited or counted, the caller goes on
        with it as a password (or refuses). A valid code for an account that may not log in
        now (locked, disabled) raises ``AuthenticationFailed``, audited, and stays unspent.
        """
        name = _name(username)
        reason: str | None = None
        identity: Identity | None = None
        async with self.sessions() as db, db.begin():
            user = await self._lookup(db, name)
            # Unknown names run the same query (no user has id 0).
            user_id = user.id if user is not None else 0
            is_open = await connect_code_is_open(db, user_id, asset, code, now)
            if user is None or not is_open:
                return None
            if user.status != "active":
                reason = f"account-{user.status}"
            elif is_locked(user, now):
                reason = "locked"
            elif await use_connect_code(db, user.id, asset, code, now):
                identity = Identity(
                    user.id, user.username, tuple(user.role_names), now, channel, CONNECT_CODE
                )
            else:
                return None  # spent by a concurrent login a moment ago
        detail = {"channel": channel, "factor": CONNECT_CODE}
        if identity is not None:
            await self.audit.record(
                actor=identity.username,
                action="login.success",
                result="success",
                target=asset,
                source=source,
                detail=detail,
            )
            return identity
        await self.audit.record(
            actor=name,
            action="login.failure",
            result="failure",
            target=asset,
            source=source,
            detail={"channel": channel, "reason": reason, "factor": CONNECT_CODE},
        )
        raise AuthenticationFailed(reason or "unknown")

    async def confirm_code(
        self, user_id: int, username: str, code: str, channel: str, source: str, now: dt.datetime
    ) -> Identity:
        """Step-up for someone already logged in: a fresh code, same lockout and single use."""
        return await self._conclude(user_id, username, True, code, channel, now, source)

    async def _conclude(
        self,
        user_id: int | None,
        name: str,
        password_ok: bool,
        code: str,
        channel: str,
        now: dt.datetime,
        source: str,
    ) -> Identity:
        reason: str | None = None
        locked_now = False
        factor: str | None = None
        identity: Identity | None = None
        async with self.sessions() as db, db.begin():
            user = await db.get(User, user_id) if user_id is not None else None
            if user is None:
                reason = "unknown-user"
            elif user.status != "active":
                reason = f"account-{user.status}"
            elif is_locked(user, now):
                reason = "locked"
            elif not password_ok:
                reason = "bad-password"
            else:
                factor = await use_second_factor(db, user, code, now, self.master_key)
                reason = None if factor is not None else "bad-code"
            if user is not None and reason in ("bad-password", "bad-code"):
                locked_now = await record_failure(db, user.id, channel, now, self.lockout)
            elif user is not None and factor is not None:
                await clear_failures(db, user.id)
                identity = Identity(
                    user.id, user.username, tuple(user.role_names), now, channel, factor
                )
        # Audited after the commit: the audit log takes its own write lock.
        actor = name if name != "?" else UNKNOWN_ACTOR
        if identity is not None:
            await self.audit.record(
                actor=actor,
                action="login.success",
                result="success",
                source=source,
                detail={"channel": channel, "factor": identity.factor},
            )
            return identity
        await self.audit.record(
            actor=actor,
            action="login.failure",
            result="failure",
            source=source,
            detail={"channel": channel, "reason": reason},
        )
        if locked_now:
            await self.audit.record(
                actor=actor,
                action="account.lock",
                result="success",
                target=actor,
                source=source,
                detail={"channel": channel, "lock_seconds": self.lockout.lock_seconds},
            )
        raise AuthenticationFailed(reason or "unknown")
