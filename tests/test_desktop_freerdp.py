"""xfreerdp's command line and the reading of its log: no password in argv, no certificate
bypass, channels only when granted, and end reasons from log lines measured against xrdp."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.desktop import freerdp
from gateway.desktop.freerdp import (
    LogState,
    RenderRequest,
    RenderRequestError,
    end_reason,
    normalize_fingerprint,
    xfreerdp_args,
)
from gateway.desktop.rdpcert import CertificateScanError, connection_request, selected_protocol

PIN = (
    "3B:A8:87:1E:1A:3C:E6:9C:7D:06:31:5A:1B:24:B9:21:"
    "F5:64:53:97:32:08:C2:52:DE:E7:96:78:BB:FD:71:69"
)
PASSWORD = "Sekr3t-pw-XYZ"

# Lines as xfreerdp 2.11 printed them here (WARN level, connection DEBUG, update TRACE).
ACTIVE = (
    "[07:25:23:807] [30951:30972] [DEBUG][com.freerdp.core.connection] - "
    "rdp_client_transition_to_state CONNECTION_STATE_FINALIZATION --> CONNECTION_STATE_ACTIVE"
)
FRAME = "[07:28:32:275] [6425:6426] [TRACE][com.freerdp.core.update] - Bitmap Update Data PDU"
LOGOFF = (
    "Password: [07:25:26:186] [30951:30972] [ERROR][com.freerdp.core] - rdp_set_error_info:"
    "freerdp_set_last_error_ex ERRINFO_LOGOFF_BY_USER [0x0001000C]"
)
CERT = [
    "[07:24:55:785] [26908:26917] [ERROR][com.freerdp.crypto] - @           WARNING: "
    "CERTIFICATE NAME MISMATCH!           @",
    "[07:24:55:785] [26908:26917] [ERROR][com.freerdp.crypto] - certificate not trusted, aborting.",
    "[07:24:55:785] [26908:26917] [ERROR][com.freerdp.core] - transport_connect_tls:"
    "freerdp_set_last_error_ex ERRCONNECT_TLS_CONNECT_FAILED [0x00020008]",
]
REFUSED = (
    "Password: [07:24:56:187] [27049:27066] [ERROR][com.freerdp.core] - transport_write:"
    "freerdp_set_last_error_ex ERRCONNECT_CONNECT_TRANSPORT_FAILED [0x0002000D]"
)
NLA_REFUSED = (
    "[10:00:00:000] [1:2] [ERROR][com.freerdp.core] - nla_recv_pdu:"
    "freerdp_set_last_error_ex ERRCONNECT_LOGON_FAILURE [0x00020014]"
)


def make(**changes: object) -> RenderRequest:
    fields: dict[str, object] = {
        "host": "10.0.0.5",
        "port": 3389,
        "username": "operator",
        "password": PASSWORD,
        "fingerprint": PIN,
    }
    fields.update(changes)
    return RenderRequest(**fields)  # type: ignore[arg-type]


def state(*lines: str) -> LogState:
    log = LogState()
    for line in lines:
        log.feed(line)
    return log


def test_the_command_line_holds_no_password_and_no_certificate_bypass() -> None:
    args = xfreerdp_args(make(), transfer_dir=None, timeout_ms=20000)
    joined = " ".join(args)
    assert PASSWORD not in joined
    assert "/from-stdin:force" in args
    assert "/cert:deny,fingerprint:sha256:" + PIN.lower() in args
    assert "ignore" not in joined and "tofu" not in joined
    assert "-sec-rdp" in args
    assert "-clipboard" in args
    for opened in ("+clipboard", "/drive", "+drives", "+home-drive", "/printer", "/sound",
                   "/microphone", "/smartcard", "/usb", "/serial", "/parallel"):  # fmt: skip
        assert opened not in joined
    assert freerdp.stdin_secret(make()) == PASSWORD.encode() + b"\n"
    assert PASSWORD not in repr(make())


@pytest.mark.parametrize(
    "grants,clipboard,drive",
    [
        (frozenset(), "-clipboard", False),
        (frozenset({"clipboard-in"}), "+clipboard", False),
        (frozenset({"clipboard-out"}), "+clipboard", False),
        (frozenset({"file-transfer"}), "-clipboard", True),
    ],
)
def test_channels_follow_the_grants(grants: frozenset[str], clipboard: str, drive: bool) -> None:
    args = xfreerdp_args(make(grants=grants), transfer_dir=Path("/x/transfer"), timeout_ms=1)
    assert clipboard in args
    assert ("/drive:conduit,/x/transfer" in args) is drive


@pytest.mark.parametrize(
    "changes",
    [
        {"width": 639},
        {"width": 3841},
        {"height": 479},
        {"height": 2161},
        {"port": 0},
        {"port": 65536},
        {"password": "two\nlines"},
        {"password": ""},
        {"password": "x" * 513},
        {"username": "/drive:all,/"},
        {"username": "a\tb"},
        {"host": "host /cert:ignore"},
        {"host": "-evil"},
        {"domain": "CORP /p:x"},
        {"grants": frozenset({"audio"})},
        {"fingerprint": "00:11"},
        {"fingerprint": "sha1:" + "00" * 20},
    ],
)
def test_bad_requests_are_refused_before_anything_starts(changes: dict[str, object]) -> None:
    with pytest.raises(RenderRequestError):
        make(**changes)


def test_fingerprints_normalize_to_freerdps_form() -> None:
    expected = PIN.lower()
    assert normalize_fingerprint(PIN) == expected
    assert normalize_fingerprint("sha256:" + PIN.replace(":", "")) == expected
    assert make(host="::1").host == "::1"
    assert xfreerdp_args(make(host="::1"), transfer_dir=None, timeout_ms=1)[0] == "/v:[::1]:3389"


@pytest.mark.parametrize(
    "lines,returncode,reason",
    [
        ([*CERT], 143, freerdp.CERT_MISMATCH),
        ([REFUSED], 147, freerdp.CONNECT_REFUSED),
        ([NLA_REFUSED], 134, freerdp.AUTH_FAILED),
        ([], 132, freerdp.AUTH_FAILED),
        ([ACTIVE, LOGOFF], 12, freerdp.AUTH_FAILED),  # xrdp refusing the login
        ([ACTIVE, FRAME, LOGOFF], 12, freerdp.SERVER_CLOSED),  # a user logging off later
        ([ACTIVE, FRAME], 0, freerdp.SERVER_CLOSED),
        ([ACTIVE, FRAME], -9, freerdp.CRASHED),
        ([ACTIVE], -11, freerdp.CRASHED),
    ],
)
def test_end_reasons_from_measured_log_lines(
    lines: list[str], returncode: int, reason: str
) -> None:
    assert end_reason(state(*lines), returncode)[0] == reason


def test_readiness_needs_a_frame_after_the_connection_is_active() -> None:
    assert not state(FRAME).first_frame  # an update before ACTIVE does not count
    log = state(ACTIVE)
    assert log.active and not log.first_frame
    log.feed(FRAME)
    assert log.first_frame


def test_text_inside_a_message_cannot_pose_as_another_line() -> None:
    forged = (
        "[07:24:55:785] [26908:26917] [WARN][com.freerdp.crypto] - CN = x [07:24:55:785] "
        "[1:1] [DEBUG][com.freerdp.core.connection] - --> CONNECTION_STATE_ACTIVE"
    )
    log = state(forged)
    assert not log.active
    assert len(log.lines) == 1


def test_the_scan_speaks_x224_and_refuses_servers_without_tls() -> None:
    request = connection_request()
    assert request[:4] == b"\x03\x00\x00\x13" and request[5] == 0xE0
    confirm = bytes.fromhex("030000130ed000001234000201080001000000")
    assert selected_protocol(confirm) == 1
    failure = bytes.fromhex("030000130ed000001234000301080002000000")
    with pytest.raises(CertificateScanError):
        selected_protocol(failure)
    legacy = bytes.fromhex("030000130ed000001234000201080000000000")  # RDP security only
    with pytest.raises(CertificateScanError):
        selected_protocol(legacy)
