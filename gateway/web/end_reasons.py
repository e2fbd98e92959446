"""Session end reasons in words, for every page that shows one.

The codes are fixed (recordings/FORMAT.md, the broker, the front ends) and are what filters,
exports and the API carry; pages show words beside them. Each code has the words staff read
(history, player, evidence) and the words the person whose session it was reads (My sessions).
An unknown code is shown as it is: a stored row never breaks a page.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EndWords:
    staff: str
    own: str


END_REASONS: dict[str, EndWords] = {
    "closed": EndWords("ended normally", "ended normally"),
    "client_closed": EndWords("the user disconnected", "you disconnected"),
    "killed": EndWords("ended by an operator", "ended by an operator"),
    "expired": EndWords("access window ended", "your access window ended"),
    "revoked": EndWords("access revoked", "your access was revoked"),
    "idle": EndWords("ended after being idle", "ended after being idle"),
    "max_duration": EndWords(
        "reached the longest session allowed", "reached the longest session allowed"
    ),
    "signed_out": EndWords("the portal sign-in ended", "you signed out of the portal"),
    "shutdown": EndWords("the gateway was stopped", "the gateway was stopped"),
    "recording_failed": EndWords(
        "ended: could not be recorded", "ended because it could not be recorded"
    ),
    "upstream_failed": EndWords("the asset could not be reached", "the asset could not be reached"),
    "client_integrity_failure": EndWords(
        "ended: client packet failed its integrity check",
        "ended: your connection was tampered with",
    ),
    "refused": EndWords("refused before it started", "refused before it started"),
    "protocol_error": EndWords(
        "ended: the desktop or viewer sent a malformed message",
        "ended: the desktop sent something malformed",
    ),
    "renderer_crashed": EndWords(
        "ended: the RDP renderer stopped", "ended: the remote desktop viewer stopped"
    ),
    "node_lost": EndWords(
        "its gateway node stopped answering", "the gateway node serving it stopped answering"
    ),
    "database_lost": EndWords(
        "the gateway lost its database for longer than the outage grace",
        "the gateway lost its database for too long",
    ),
    "incomplete": EndWords("cut off (gateway crash)", "cut off when the gateway stopped"),
}


def staff_words(code: str) -> str:
    known = END_REASONS.get(code)
    return known.staff if known else code


def own_words(code: str) -> str:
    known = END_REASONS.get(code)
    return known.own if known else code
