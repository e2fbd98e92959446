"""Change events: policy, grants, users or roles changed, so live sessions re-check now.

In-process publish/subscribe today; the payload is plain data (kind and ids) so the same
events can cross processes and nodes (PostgreSQL LISTEN/NOTIFY) without changing callers.
Subscribers must be quick and must not raise: a failing subscriber is logged and skipped.
Does not decide anything about the sessions it notifies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Change:
    kind: str  # e.g. grant.added, grant.revoked, request.approved, asset.changed, policy.reloaded
    ids: tuple[str, ...] = ()
    detail: dict[str, str] = field(default_factory=dict)


Subscriber = Callable[[Change], None]


class ChangeBus:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    def publish(self, change: Change) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(change)
            except Exception:  # one broken subscriber must not starve the others
                log.exception("change subscriber failed on %s", change.kind)
