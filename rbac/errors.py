"""Exceptions raised by rbac: a short message for users, a detail for the audit log.

Mirrors the shape of ``gateway.errors.ConduitError`` (``message`` and ``detail``) without
importing it, because rbac never imports gateway; the gateway translates these at its edges.
"""

from __future__ import annotations


class RbacError(Exception):
    """Base class. ``message`` is safe to show a user; ``detail`` is for the audit log."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail if detail is not None else message


class WindowError(RbacError, ValueError):
    """A time window or an instant cannot be used (for example a naive datetime)."""


class ScheduleError(WindowError):
    """Schedule text cannot be parsed; the message names the offending part."""


class RequestError(RbacError, ValueError):
    """An access request's content is invalid (empty reason, duration over the cap, ...)."""


class TransitionError(RbacError):
    """The access request cannot move from its current state to the one asked for."""


class ApprovalError(RbacError):
    """This person may not approve or deny this request (own request, not eligible, twice)."""


class PolicyNameError(RbacError, ValueError):
    """A name, subject, object or action in policy is malformed."""
