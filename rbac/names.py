"""Names of things in policy: validation and the exact, namespaced form the model uses.

Every name is checked against one strict pattern, and every policy term carries its kind
(``user:alice``, ``asset:plc-1``), so a user can never be confused with a role of the same
name and nothing is ever matched by pattern. Does not know which names exist.
"""

from __future__ import annotations

import re

from rbac.errors import PolicyNameError
from rbac.modbus import is_modbus_action, parse_modbus_action

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
SUBJECT_KINDS = ("user", "role", "org")
OBJECT_KINDS = ("asset", "zone")
SIMPLE_ACTIONS = frozenset(
    {
        "ssh",
        "sftp-read",
        "sftp-write",
        "vnc",
        "rdp",
        # Inside a desktop session (vnc, rdp): the clipboard each way, RDP drive redirection.
        "clipboard-in",
        "clipboard-out",
        "file-transfer",
        "watch",
        "kill",
        "approve",
        "request",  # may file access requests for the asset or zone (rbac.availability)
        "audit-read",
        "admin",
    }
)
TUNNEL_RE = re.compile(r"tunnel:([1-9][0-9]{0,4})")
# Open an asset's desktop; each needs the asset's protocol to match. What a desktop session
# may also do is granted apart (DESKTOP_GRANTS) and decided when the session opens.
DESKTOP_ACTIONS = frozenset({"vnc", "rdp"})
DESKTOP_GRANTS = ("clipboard-in", "clipboard-out", "file-transfer")
# Actions that log in to an asset as one of its vaulted accounts. Unqualified, they cover the
# asset's default account only; ``ssh:account=maint`` covers account ``maint`` only. So the
# account a session logs in as is part of every decision, and a grant names any account
# other than the default one.
ACCOUNT_ACTIONS = frozenset({"ssh", "sftp-read", "sftp-write"})
DEFAULT_ACCOUNT = "default"
ACCOUNT_RE = re.compile(r"(ssh|sftp-read|sftp-write):account=([a-z0-9][a-z0-9._-]{0,63})")


def with_account(action: str, account: str) -> str:
    """The action that covers logging in as ``account`` (the default one needs no mention)."""
    if account == DEFAULT_ACCOUNT or action not in ACCOUNT_ACTIONS:
        return action
    return check_action(f"{action}:account={check_name(account, 'account')}")


def logs_in(action: str) -> bool:
    """Whether ``action`` logs in to one of an asset's accounts (``ssh``, ``sftp-*``, plain or
    ``account=`` qualified): only such an authorization may unlock a vaulted credential."""
    return action in ACCOUNT_ACTIONS or ACCOUNT_RE.fullmatch(action) is not None


def unlocks_credential(action: str) -> bool:
    """Whether an authorization for ``action`` may unlock the asset's vaulted credential:
    logging in (``logs_in``) or opening a desktop (the VNC or RDP password)."""
    return logs_in(action) or action in DESKTOP_ACTIONS


def account_base(action: str) -> str:
    """``ssh`` for ``ssh:account=maint`` (whose rules include ``ssh``'s denies); else ""."""
    match = ACCOUNT_RE.fullmatch(action)
    return match.group(1) if match else ""


def account_of(action: str) -> str:
    """The account an action covers: its ``account=`` qualifier, else the default one."""
    match = ACCOUNT_RE.fullmatch(action)
    return match.group(2) if match else DEFAULT_ACCOUNT


def check_name(name: str, what: str = "name") -> str:
    if not NAME_RE.fullmatch(name):
        raise PolicyNameError(
            f"{what} {name!r} is not valid: 1-64 of a-z 0-9 . _ -, starting with a letter or digit"
        )
    return name


def check_action(action: str) -> str:
    if action in SIMPLE_ACTIONS:
        return action
    match = TUNNEL_RE.fullmatch(action)
    if match and int(match.group(1)) <= 65535:
        return action
    qualified = ACCOUNT_RE.fullmatch(action)
    if qualified and qualified.group(2) != DEFAULT_ACCOUNT:
        return action
    if is_modbus_action(action):
        parse_modbus_action(action)  # raises with what is wrong
        return action
    raise PolicyNameError(
        f"action {action[:100]!r} is not valid: one of {', '.join(sorted(SIMPLE_ACTIONS))}, "
        "tunnel:<port>, ssh/sftp-read/sftp-write:account=<name> (not the default account), "
        "or modbus-read/modbus-write[:unit=N][:hr=A-B...] / modbus-fc:<n> (rbac.modbus)"
    )


def term(kind: str, name: str) -> str:
    """The model's form of a subject or object: ``kind:name``, both validated."""
    if kind not in SUBJECT_KINDS + OBJECT_KINDS:
        raise PolicyNameError(f"unknown kind {kind!r}")
    return f"{kind}:{check_name(name, kind)}"


def split_term(value: str) -> tuple[str, str]:
    kind, sep, name = value.partition(":")
    if not sep or kind not in SUBJECT_KINDS + OBJECT_KINDS:
        raise PolicyNameError(f"{value!r} is not a kind:name term")
    check_name(name, kind)
    return kind, name
