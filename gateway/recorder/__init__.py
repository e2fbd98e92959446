"""The gateway side of session recordings: catalog, service, search, retention and quota.

``RecordingService`` starts, closes, recovers, verifies and opens recordings (audited);
``catalog`` holds the table queries, ``search`` the full-text index, ``quota`` and
``retention`` the storage rules, ``files`` safe deletion. The container format, crypto,
verification and the screen interpreter live in the top-level ``recordings`` package.
Does not decide who may view or search (callers check authorization first).
"""

from __future__ import annotations

from gateway.recorder.catalog import CatalogEntry
from gateway.recorder.quota import QuotaExceeded, QuotaStatus, quota_status
from gateway.recorder.retention import RetentionReport, apply_retention
from gateway.recorder.search import SearchHit
from gateway.recorder.service import (
    RecordingMissing,
    RecordingService,
    SessionInfo,
    judged_closed,
    master_key_id,
)

__all__ = [
    "CatalogEntry",
    "QuotaExceeded",
    "QuotaStatus",
    "RecordingMissing",
    "RecordingService",
    "RetentionReport",
    "SearchHit",
    "SessionInfo",
    "apply_retention",
    "judged_closed",
    "master_key_id",
    "quota_status",
]
