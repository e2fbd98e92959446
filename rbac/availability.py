"""What a person may do with one asset, as "My access" shows it: available now (until when),
request pending, next window, requestable.

"Requestable" is policy like everything else: an allow rule with action ``request`` on the
asset or one of its zones lets its subject (a user, role or organisation) file access
requests for it. The state is computed from the same ``PolicyIndex`` that decides sessions,
at an instant passed in. Does not read the clock, know which requests exist (the caller says
whether one is pending) or decide any session (``PolicyIndex.authorize`` does).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from rbac.names import TUNNEL_RE, logs_in
from rbac.policy import PolicyIndex

REQUEST_ACTION = "request"


class AccessState(StrEnum):
    AVAILABLE = "available"  # some use of the asset is allowed now
    PENDING = "pending"  # not available; a request of this person waits for a decision
    NEXT_WINDOW = "next-window"  # not available; a standing grant opens again later
    REQUESTABLE = "requestable"  # not available; the person may ask for it


@dataclass(frozen=True)
class AssetAccess:
    """One asset's state for one person; ``until`` is None when availability has no end."""

    asset: str
    state: AccessState
    actions_now: tuple[str, ...] = ()
    until: datetime | None = None
    next_window: datetime | None = None
    requestable: bool = False


def uses_asset(action: str) -> bool:
    """Whether ``action`` uses the asset itself (log in, files, tunnel, desktop), as opposed
    to acting on it as an approver, watcher or administrator."""
    return logs_in(action) or action in ("vnc", "rdp") or TUNNEL_RE.fullmatch(action) is not None


def asset_access(
    index: PolicyIndex,
    subject: str,
    asset: str,
    actions: Iterable[str],
    now: datetime,
    *,
    pending: bool = False,
) -> AssetAccess | None:
    """``subject``'s state on ``asset`` (both terms) at ``now``, considering the use
    ``actions``; ``None`` when the asset is none of the subject's business (nothing allowed,
    nothing to come, nothing requestable, nothing pending)."""
    uses = sorted({a for a in actions if uses_asset(a)})
    name = asset.partition(":")[2]
    requestable = index.authorize(subject, asset, REQUEST_ACTION, now).allowed
    allowed = [(a, index.authorize(subject, asset, a, now)) for a in uses]
    now_ok = [(a, d) for a, d in allowed if d.allowed]
    if now_ok:
        ends = [d.valid_until for _, d in now_ok]
        until = None if any(e is None for e in ends) else max(e for e in ends if e is not None)
        return AssetAccess(
            name, AccessState.AVAILABLE, tuple(a for a, _ in now_ok), until, None, requestable
        )
    if pending:
        return AssetAccess(name, AccessState.PENDING, requestable=requestable)
    starts = [s for s in (index.next_allowed(subject, asset, a, now) for a in uses) if s]
    if starts:
        return AssetAccess(
            name, AccessState.NEXT_WINDOW, next_window=min(starts), requestable=requestable
        )
    if requestable:
        return AssetAccess(name, AccessState.REQUESTABLE, requestable=True)
    return None
