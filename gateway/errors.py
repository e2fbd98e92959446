"""The project's own exceptions: a short message for users, a detail for the audit log.

Protocol front ends translate these at the edges (HTTP status, SSH disconnect, websocket
close code). Nothing here knows about any wire protocol.
"""

from __future__ import annotations


class ConduitError(Exception):
    """Base class. ``message`` is safe to show a user; ``detail`` is for the audit log."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail if detail is not None else message


class ConfigError(ConduitError):
    """The configuration cannot be used; the message names the key and where it came from."""


class KeyMaterialError(ConduitError):
    """A key file is missing, unreadable, malformed or has unsafe permissions."""


class SchemaError(ConduitError):
    """The database schema is not at the revision this code expects."""


class NotFoundOrForbidden(ConduitError):
    """What a user sees for a missing or forbidden object: the two must look the same."""

    def __init__(self, detail: str) -> None:
        super().__init__("not found or not permitted", detail)


class UpstreamError(ConduitError):
    """The asset could not be reached or refused the vaulted credential."""


class HostKeyMismatch(UpstreamError):
    """The asset presented a host key that is not pinned for it."""


class TicketRefused(UpstreamError):
    """An upstream connect was asked for with a ticket that does not hold: its target is not
    what its authorization covers (asset, account), or the authorization has run out."""
