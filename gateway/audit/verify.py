"""Verification of an audit chain fed event by event: hashes, links, gaps, checkpoints.

Knows nothing about storage: ``AuditLog.verify`` streams events in id order into a
``ChainVerifier`` and asks for the result. What each check catches:

* a row edited in place (trigger dropped)      -> its content no longer matches its hash;
* a row deleted                                -> a gap in the ids;
* a row edited and re-hashed                   -> the next row's ``prev_hash`` breaks;
* a chain rewritten and re-hashed to the end   -> a signed checkpoint no longer matches;
* tail rows deleted past a checkpoint          -> the checkpoint names a missing event;
* a checkpoint forged or edited                -> its Ed25519 signature fails.

Events appended after the newest checkpoint are covered by the chain only until the next
checkpoint; that window is the price of not signing every append.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit.chain import (
    GENESIS_HASH,
    AuditEvent,
    Checkpoint,
    checkpoint_message,
    recompute_hash,
)


@dataclass(frozen=True)
class AuditVerifyResult:
    ok: bool
    checked: int
    problems: list[str] = field(default_factory=list)
    first_bad_id: int | None = None
    checkpoints: int = 0


class ChainVerifier:
    """Feed events in id order, then ``finish()``; problems name event ids."""

    def __init__(
        self, public_key: Ed25519PublicKey, key_id: str, checkpoints: list[Checkpoint]
    ) -> None:
        self._problems: list[str] = []
        self._first_bad: int | None = None
        self._by_event: dict[int, list[Checkpoint]] = defaultdict(list)
        self._checkpoints = len(checkpoints)
        for cp in checkpoints:
            if self._signature_ok(public_key, key_id, cp):
                self._by_event[cp.event_id].append(cp)
        self._last_id = 0
        self._last_hash = GENESIS_HASH
        self.checked = 0

    def _bad(self, event_id: int, problem: str) -> None:
        self._problems.append(problem)
        if self._first_bad is None or event_id < self._first_bad:
            self._first_bad = event_id

    def _signature_ok(self, public_key: Ed25519PublicKey, key_id: str, cp: Checkpoint) -> bool:
        if cp.key_id != key_id:
            self._bad(cp.event_id, f"checkpoint {cp.id}: signed by unknown key {cp.key_id}")
            return False
        try:
            public_key.verify(cp.signature, checkpoint_message(cp.event_id, cp.event_hash, cp.time))
        except InvalidSignature:
            self._bad(
                cp.event_id,
                f"checkpoint {cp.id}: signature invalid for event {cp.event_id} "
                "(checkpoint forged or edited)",
            )
            return False
        return True

    def feed(self, event: AuditEvent) -> None:
        self.checked += 1
        expected = self._last_id + 1
        if event.id > expected:
            last = event.id - 1
            missing = f"event {expected}" if last == expected else f"events {expected}-{last}"
            self._bad(expected, f"{missing} missing: gap after event {self._last_id} (deleted)")
        elif event.id < expected:  # cannot happen with a primary key; kept for foreign dumps
            self._bad(event.id, f"event {event.id}: out of order after event {self._last_id}")
        # A gap already explains the broken link after it; report the link only otherwise.
        if event.id == expected and event.prev_hash != self._last_hash:
            self._bad(
                event.id,
                f"event {event.id}: prev_hash does not match the hash of event {self._last_id} "
                "(chain broken: a row was edited, re-hashed, inserted or deleted)",
            )
        if recompute_hash(event) != event.hash:
            self._bad(event.id, f"event {event.id}: content does not match its hash (modified)")
        for cp in self._by_event.pop(event.id, []):
            if cp.event_hash != event.hash:
                self._bad(
                    event.id,
                    f"checkpoint {cp.id}: event {event.id} hash differs from the signed "
                    "checkpoint (chain rewritten)",
                )
        self._last_id = event.id
        self._last_hash = event.hash

    def finish(self) -> AuditVerifyResult:
        for event_id, cps in sorted(self._by_event.items()):
            for cp in cps:
                self._bad(
                    event_id,
                    f"checkpoint {cp.id}: its event {event_id} is missing (deleted or "
                    f"truncated; the chain ends at event {self._last_id})",
                )
        self._by_event.clear()
        return AuditVerifyResult(
            ok=not self._problems,
            checked=self.checked,
            problems=list(self._problems),
            first_bad_id=self._first_bad,
            checkpoints=self._checkpoints,
        )
