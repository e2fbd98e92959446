"""Hash-chained, append-only audit log with signed checkpoints and SIEM export.

``AuditLog`` records, checkpoints, verifies and exports events; ``chain`` holds the pure
hashing rules, ``verify`` the checks, ``syslog`` the RFC 5424 format and senders,
``tables`` the table shapes. Does not decide what is audited: callers do, passing
identifiers only (never secrets) in ``detail``, except an exec session's command line
(see ``log``).
"""

from __future__ import annotations

from gateway.audit.chain import (
    GENESIS_HASH,
    RESULTS,
    AuditError,
    AuditEvent,
    Checkpoint,
    canonical_bytes,
    encode_detail,
)
from gateway.audit.log import PG_HEAD_LOCK, AuditLog, key_id
from gateway.audit.syslog import (
    SyslogSender,
    SyslogTarget,
    format_syslog,
    open_syslog_sender,
    parse_syslog_target,
)
from gateway.audit.verify import AuditVerifyResult, ChainVerifier

__all__ = [
    "GENESIS_HASH",
    "PG_HEAD_LOCK",
    "RESULTS",
    "AuditError",
    "AuditEvent",
    "AuditLog",
    "AuditVerifyResult",
    "ChainVerifier",
    "Checkpoint",
    "SyslogSender",
    "SyslogTarget",
    "canonical_bytes",
    "encode_detail",
    "format_syslog",
    "key_id",
    "open_syslog_sender",
    "parse_syslog_target",
]
