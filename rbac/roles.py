"""Site-wide role capabilities: what a role may do that is not about one asset.

Per-asset access (``ssh``, ``watch``, ``kill``, ``approve``...) is decided by the policy in
``rbac.policy`` from grants. A few things are site-wide by role: seeing every access request,
seeing every live session, acting on any asset as an administrator, managing grants. This
table is the one place they are decided; front ends ask ``role_allows`` and never compare
role names themselves. Does not know who has which role (identity does).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class SiteAction(StrEnum):
    SEE_ALL_REQUESTS = "requests.see-all"  # every vendor's access requests
    SEE_ALL_SESSIONS = "sessions.see-all"  # every live session, on every asset
    ANY_ASSET = "assets.any"  # every per-asset action (watch, kill) on every asset
    MANAGE_GRANTS = "grants.manage"  # add, list and revoke grants
    MANAGE_USERS = "users.manage"  # end another user's portal sessions, reset, disable
    # What the portal offers a role (its home page and menu); the policy still decides each use.
    USE_ASSETS = "assets.use"  # "my access", connect instructions, connect codes
    DECIDE_REQUESTS = "requests.decide"  # the queue of pending requests and its count
    READ_EVIDENCE = "evidence.read"  # session history, replay, verification, audit export
    # The live-sessions table in the menu; each row still needs watch/kill on its asset (or
    # SEE_ALL_SESSIONS), so the capability opens the page, never a session.
    WATCH_SESSIONS = "sessions.watch"
    # The admin pages (/admin): zones, assets, credentials, host keys, users and grants.
    ADMINISTER_SITE = "site.administer"


ROLE_CAPABILITIES: dict[str, frozenset[SiteAction]] = {
    "admin": frozenset(SiteAction),
    "approver": frozenset(
        {SiteAction.SEE_ALL_REQUESTS, SiteAction.DECIDE_REQUESTS, SiteAction.WATCH_SESSIONS}
    ),
    # Auditors already see every live session (SEE_ALL_SESSIONS, read-only); the page shows
    # them the same rows, with Kill only where the policy grants kill on the asset.
    "auditor": frozenset(
        {
            SiteAction.SEE_ALL_REQUESTS,
            SiteAction.SEE_ALL_SESSIONS,
            SiteAction.READ_EVIDENCE,
            SiteAction.WATCH_SESSIONS,
        }
    ),
    "vendor": frozenset({SiteAction.USE_ASSETS}),
}


def role_allows(roles: Iterable[str], action: SiteAction) -> bool:
    """Whether any of ``roles`` carries ``action``; unknown roles carry nothing."""
    return any(action in ROLE_CAPABILITIES.get(role, frozenset()) for role in roles)
