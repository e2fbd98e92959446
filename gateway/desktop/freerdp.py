"""FreeRDP 2 (``xfreerdp``) for the RDP renderer: the command line, and what its log says.

Pure: builds the argument list from a checked ``RenderRequest`` and reads xfreerdp's log
lines and exit status into readiness and one end reason. Starts nothing (see renderer.py).

Measured here against xrdp 0.9.21 with FreeRDP 2.11 (docs/decisions/0020-rdp-renderer.md):
- ``/from-stdin:force`` reads the password from stdin before connecting; the username
  stays on the command line (FreeRDP 2 prompts only for what is missing, and with no ``/u:``
  it asked for the password alone).
- ``/cert:deny,fingerprint:sha256:<hex>`` accepts exactly that certificate and aborts on
  any other without asking ("certificate not trusted, aborting.", exit 143). The CA store
  is emptied through the environment (renderer.py) so a CA-signed certificate for the right
  name cannot stand in for the pin; RDP standard security (no certificate) is off.
- Readiness: ``com.freerdp.core.connection`` at DEBUG logs the transition to
  ``CONNECTION_STATE_ACTIVE``; ``com.freerdp.core.update`` at TRACE logs each bitmap
  update. xrdp reaches ACTIVE before it checks the password and, when it refuses the
  login, sends ERRINFO_LOGOFF_BY_USER (exit 12) without drawing anything, so a logoff
  before the first frame is read as a refused login.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.errors import ConduitError

XFREERDP = "/usr/bin/xfreerdp"

# Grants that open a channel; anything else in a grant set is refused, not ignored.
GRANTS = frozenset({"clipboard-in", "clipboard-out", "file-transfer"})
MIN_WIDTH, MAX_WIDTH = 640, 3840
MIN_HEIGHT, MAX_HEIGHT = 480, 2160
MAX_USERNAME = 256
MAX_PASSWORD = 512

# End reasons: fixed codes the session ends with (conventions: codes apart from text).
AUTH_FAILED = "auth_failed"
CERT_MISMATCH = "cert_mismatch"
CONNECT_REFUSED = "connect_refused"
SERVER_CLOSED = "server_closed"
CRASHED = "crashed"
START_TIMEOUT = "start_timeout"
END_REASONS = frozenset(
    {AUTH_FAILED, CERT_MISMATCH, CONNECT_REFUSED, SERVER_CLOSED, CRASHED, START_TIMEOUT}
)

LOG_FILTERS = "com.freerdp.core.connection:DEBUG,com.freerdp.core.update:TRACE"

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
_DOMAIN = re.compile(r"^[A-Za-z0-9._-]{1,255}$")
_FINGERPRINT = re.compile(r"^(?:sha256:)?([0-9A-Fa-f]{2}(?::?[0-9A-Fa-f]{2}){31})$")
# "[07:24:55:785] [26908:26917] [ERROR][com.freerdp.crypto] - message"; the first line may
# follow the unterminated "Password: " prompt, so the leftmost match (the real prefix) counts.
_LINE = re.compile(r"\[[0-9:]+\] \[[0-9]+:[0-9]+\] \[([A-Z]+)\]\[([A-Za-z0-9._-]+)\] - (.*)$")

_CERT_REFUSALS = (
    "certificate not trusted, aborting",
    "WARNING: CERTIFICATE NAME MISMATCH!",
    "WARNING: CERTIFICATE HAS CHANGED",  # FreeRDP's wording when a stored one differs
)
_AUTH_ERRORS = (
    "ERRCONNECT_AUTHENTICATION_FAILED",
    "ERRCONNECT_LOGON_FAILURE",
    "ERRCONNECT_WRONG_PASSWORD",
    "ERRCONNECT_ACCOUNT_LOCKED_OUT",
    "ERRCONNECT_ACCOUNT_DISABLED",
    "ERRCONNECT_ACCOUNT_RESTRICTION",
    "ERRCONNECT_ACCOUNT_EXPIRED",
    "ERRCONNECT_PASSWORD_EXPIRED",
    "ERRCONNECT_PASSWORD_CERTAINLY_EXPIRED",
    "ERRCONNECT_PASSWORD_MUST_CHANGE",
    "ERRCONNECT_LOGON_TYPE_NOT_GRANTED",
)
# xfreerdp exit codes (client/X11/xf_client.h, FreeRDP 2): authentication, logon, locked out.
_AUTH_EXITS = frozenset({132, 134, 135})
_LOGOFF_BY_USER = 12  # ERRINFO_LOGOFF_BY_USER, which xfreerdp returns as its exit code
KEEP_LINES = 20
MAX_LINE = 400


class RenderRequestError(ConduitError):
    """A renderer request is out of range or malformed; nothing was started."""


def normalize_fingerprint(text: str) -> str:
    """A SHA-256 certificate fingerprint as FreeRDP compares it: lowercase, colon-separated.
    Accepts ``AB:CD:...``, ``abcd...`` and ``sha256:`` in front; anything else is refused."""
    match = _FINGERPRINT.match(text.strip())
    if match is None:
        raise RenderRequestError(
            "the pinned certificate fingerprint is not a SHA-256 fingerprint",
            "fingerprint must be 32 bytes of hex (colons optional)",
        )
    digits = match.group(1).replace(":", "").lower()
    return ":".join(digits[i : i + 2] for i in range(0, 64, 2))


@dataclass(frozen=True, repr=False)
class RenderRequest:
    """One RDP desktop to draw: where, as whom, the pinned certificate, size and grants.

    Checked on construction; ``password`` never appears in ``repr`` or in an argument list."""

    host: str
    port: int
    username: str
    password: str
    fingerprint: str
    width: int = 1024
    height: int = 768
    domain: str = ""
    grants: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        _check_host(self.host)
        if not 1 <= self.port <= 65535:
            raise RenderRequestError("the asset's port is out of range", f"port {self.port}")
        if not MIN_WIDTH <= self.width <= MAX_WIDTH or not MIN_HEIGHT <= self.height <= MAX_HEIGHT:
            raise RenderRequestError(
                "the desktop size is out of range",
                f"{self.width}x{self.height} not within "
                f"{MIN_WIDTH}x{MIN_HEIGHT}..{MAX_WIDTH}x{MAX_HEIGHT}",
            )
        if not 0 < len(self.username) <= MAX_USERNAME or not self.username.isprintable():
            raise RenderRequestError("the asset account name is not usable", "bad username")
        if self.username[0] in "/-+":
            raise RenderRequestError("the asset account name is not usable", "option-like name")
        # stdin is read line by line: a line break would end the password early
        if not 0 < len(self.password) <= MAX_PASSWORD or any(c in self.password for c in "\r\n\0"):
            raise RenderRequestError(
                "the vaulted password cannot be used for RDP",
                "empty, too long, or holds a line break or NUL",
            )
        if self.domain and not _DOMAIN.match(self.domain):
            raise RenderRequestError("the asset's domain is not usable", "bad domain")
        unknown = set(self.grants) - GRANTS
        if unknown:
            raise RenderRequestError(
                "unknown desktop grant", f"not desktop grants: {sorted(unknown)}"
            )
        object.__setattr__(self, "fingerprint", normalize_fingerprint(self.fingerprint))

    def __repr__(self) -> str:
        return (
            f"RenderRequest(host={self.host!r}, port={self.port}, username={self.username!r}, "
            f"{self.width}x{self.height}, grants={sorted(self.grants)})"
        )

    @property
    def clipboard(self) -> bool:
        return bool(self.grants & {"clipboard-in", "clipboard-out"})


def _check_host(host: str) -> None:
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if not _HOSTNAME.match(host):
        raise RenderRequestError("the asset's address is not usable", f"bad host {host[:80]!r}")


def xfreerdp_args(
    request: RenderRequest, *, transfer_dir: Path | None, timeout_ms: int
) -> list[str]:
    """The xfreerdp argument list (after the program name). No password, no ``/cert:ignore``;
    every redirection off unless granted. The password goes to stdin (``/from-stdin:force``)."""
    host = f"[{request.host}]" if ":" in request.host else request.host
    args = [
        f"/v:{host}:{request.port}",
        f"/u:{request.username}",
        "/from-stdin:force",
        f"/cert:deny,fingerprint:sha256:{request.fingerprint}",
        "-sec-rdp",  # RDP standard security has no certificate to pin
        f"/size:{request.width}x{request.height}",
        "/window-position:0x0",
        "-decorations",
        "/audio-mode:2",  # FreeRDP 2 still loads rdpsnd with its "fake" (discarding) backend
        "+clipboard" if request.clipboard else "-clipboard",
        f"/timeout:{timeout_ms}",
        "/log-level:WARN",
        f"/log-filters:{LOG_FILTERS}",
    ]
    if request.domain:
        args.insert(2, f"/d:{request.domain}")
    if "file-transfer" in request.grants:
        if transfer_dir is None:
            raise RenderRequestError("file transfer needs a folder", "no transfer_dir")
        args.append(f"/drive:conduit,{transfer_dir}")
    return args


def stdin_secret(request: RenderRequest) -> bytes:
    """What xfreerdp reads with ``/from-stdin:force``: the password line."""
    return request.password.encode() + b"\n"


@dataclass
class LogState:
    """What xfreerdp's log has said so far: connection active, first frame, notable lines."""

    active: bool = False
    first_frame: bool = False
    cert_refused: bool = False
    auth_error: str = ""
    last_error: str = ""
    lines: list[str] = field(default_factory=list)

    def feed(self, raw: str) -> None:
        match = _LINE.search(raw.strip())
        if match is None:
            return
        level, tag, message = match.groups()
        if tag == "com.freerdp.core.connection":
            if message.endswith("--> CONNECTION_STATE_ACTIVE"):
                self.active = True
            return
        if tag == "com.freerdp.core.update":
            if self.active:
                self.first_frame = True
            return
        if level not in ("WARN", "ERROR", "FATAL") or tag == "com.freerdp.utils":
            return  # com.freerdp.utils: the backtrace printed on a signal
        if tag == "com.freerdp.crypto" and any(m in message for m in _CERT_REFUSALS):
            self.cert_refused = True
        for code in _AUTH_ERRORS:
            if code in message:
                self.auth_error = code
        if level in ("ERROR", "FATAL"):
            self.last_error = message[:MAX_LINE]
        self.lines.append(f"{level} {tag}: {message[:MAX_LINE]}")
        del self.lines[:-KEEP_LINES]


def end_reason(state: LogState, returncode: int) -> tuple[str, str]:
    """(reason code, audit detail) for an xfreerdp that exited on its own."""
    if returncode < 0:
        return CRASHED, f"xfreerdp killed by signal {-returncode}"
    said = f"exit {returncode}" + (f": {state.last_error}" if state.last_error else "")
    if state.cert_refused:
        return CERT_MISMATCH, f"the server's certificate is not the pinned one ({said})"
    if state.auth_error or returncode in _AUTH_EXITS:
        return AUTH_FAILED, f"the server refused the credential ({state.auth_error or said})"
    if not state.active:
        return CONNECT_REFUSED, f"no RDP connection ({said})"
    if not state.first_frame and returncode == _LOGOFF_BY_USER:
        return AUTH_FAILED, f"logged off before the first frame, a refused login ({said})"
    return SERVER_CLOSED, f"the server ended the connection ({said})"


def notable(lines: Iterable[str]) -> str:
    return " | ".join(lines)[-2000:]
