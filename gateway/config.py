"""Configuration: one typed settings object from a TOML file plus ``CONDUIT_*`` variables.

Precedence, lowest first: built-in defaults, the TOML file, environment variables
(``CONDUIT_<SECTION>__<KEY>``, e.g. ``CONDUIT_PORTAL__LISTEN``), command-line flags. An
unknown key or a bad value raises ``ConfigError`` whose one-line message names the key and
the file or variable it came from. Paths that default to "inside the data directory" are
resolved here so the rest of the code never guesses. Does not create files or directories.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.errors import ConfigError

ENV_PREFIX = "CONDUIT_"
DEFAULT_CONFIG_FILE = Path("/etc/conduit/config.toml")
# Variables with these names are not config keys (they choose the file or carry a secret).
ENV_SPECIAL = frozenset({"CONDUIT_CONFIG", "CONDUIT_MASTER_KEY"})


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_listen(value: str) -> ListenAddress:
    """Parse ``HOST:PORT`` or ``[V6]:PORT``; port 0 asks the OS for a free port."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not port_text.isascii():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} is out of range")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"expected [IPV6]:PORT, got {value!r}")
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    elif ":" in host:
        raise ValueError(f"write IPv6 addresses in brackets, as [{host}]:{port}")
    return ListenAddress(host, port)


def _check_listen(value: str) -> str:
    parse_listen(value)
    return value


def _empty_is_none(value: object) -> object:
    return None if value == "" else value


Listen = Annotated[str, AfterValidator(_check_listen)]
MAX_BALANCERS = 64


def _check_networks(values: list[str]) -> list[str]:
    """Addresses or networks (``10.0.0.5``, ``10.0.0.0/24``, ``fd00::/64``), at most 64."""
    if len(values) > MAX_BALANCERS:
        raise ValueError(f"at most {MAX_BALANCERS} addresses or networks")
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or network") from None
    return values


Networks = Annotated[list[str], AfterValidator(_check_networks)]
# TOML has no null: an empty string means "the default location inside the data directory".
OptionalPath = Annotated[Path | None, BeforeValidator(_empty_is_none)]
Seconds = Annotated[int, Field(ge=1, le=366 * 86400)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class ServerSettings(_Section):
    data_dir: Path = Path("/var/lib/conduit")
    node_name: str = ""  # empty: the host name
    shutdown_grace_seconds: Annotated[int, Field(ge=1, le=9)] = 5
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # Worker processes sharing the ports (``conduit serve --workers N`` overrides); 0: one per
    # CPU on PostgreSQL. SQLite always runs one process.
    workers: Annotated[int, Field(ge=0, le=64)] = 0


class PortalSettings(_Section):
    listen: Listen = "0.0.0.0:8443"  # noqa: S104 - a gateway listens for its users
    tls: bool = True
    tls_cert_file: OptionalPath = None  # empty: <data_dir>/tls/portal.crt, made by `conduit init`
    tls_key_file: OptionalPath = None
    public_url: str = ""  # empty: derived from listen; used in links the gateway prints
    allow_plaintext_non_loopback: bool = False  # only behind a TLS-terminating proxy
    session_idle_seconds: Seconds = 900
    session_absolute_seconds: Seconds = 43200
    banner: str = "Authorised use only. Sessions are recorded and audited."
    metrics: bool = True
    # Reverse proxies (HAProxy in HTTP mode) whose X-Forwarded-For is believed: only when the
    # TCP peer is in one of these networks, and then only up to the rightmost hop that is not.
    # Empty: the header is ignored and the TCP peer is the client.
    trusted_proxies: Networks = []


class SSHSettings(_Section):
    enabled: bool = True
    listen: Listen = "0.0.0.0:2222"  # noqa: S104
    host_key_files: list[Path] = []  # empty: the keys `conduit init` made in <data_dir>/ssh
    login_timeout_seconds: Annotated[int, Field(ge=1, le=600)] = 30
    max_unauthenticated: Annotated[int, Field(ge=1, le=100000)] = 100
    # One source (IPv4 address, IPv6 /64) may not hold more of them than this.
    max_unauthenticated_per_source: Annotated[int, Field(ge=1, le=100000)] = 50
    banner: str = ""  # empty: portal.banner
    # Lifetime of the user certificates the gateway's SSH user CA issues after MFA.
    certificate_hours: Annotated[int, Field(ge=1, le=168)] = 8
    # Load balancers that send a PROXY protocol v2 header (HAProxy send-proxy-v2); a
    # connection from elsewhere that sends one is refused. Empty: PROXY is never accepted.
    proxy_protocol_from: Networks = []

    def proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(v, strict=False) for v in self.proxy_protocol_from]


class DatabaseSettings(_Section):
    url: str = ""  # empty: sqlite+aiosqlite:///<data_dir>/conduit.db
    pool_size: Annotated[int, Field(ge=1, le=200)] = 10
    connect_timeout_seconds: Annotated[int, Field(ge=1, le=120)] = 5
    # PostgreSQL unreachable: live sessions go on this long, then end (database_lost).
    outage_grace_seconds: Annotated[int, Field(ge=1, le=3600)] = 60
    # Audit events kept on local disk while the database is unreachable, at most this many
    # bytes; when full, what cannot be audited is refused.
    audit_spool_max_bytes: Annotated[int, Field(ge=1 << 16, le=1 << 30)] = 64 << 20


class ClusterSettings(_Section):
    """Membership and cross-node control (PostgreSQL; on SQLite there is one node)."""

    # Seconds between this node's heartbeats; also how often it looks for dead nodes.
    heartbeat_seconds: Annotated[float, Field(ge=0.2, le=60)] = 5.0
    # A node whose last heartbeat is older than this is dead: its sessions end (node_lost).
    # Judged only by a node whose database answered throughout this and a heartbeat, so it
    # may be shorter than database.outage_grace_seconds (decision 0023).
    dead_after_seconds: Annotated[float, Field(ge=1, le=600)] = 30.0
    # Kill requests and policy changes arrive by NOTIFY; this poll catches any missed one.
    poll_seconds: Annotated[float, Field(ge=0.1, le=60)] = 0.5
    # Where the other nodes reach this node's portal to watch a session it relays
    # (HOST:PORT). Empty: portal.listen, unless that is a wildcard address (then sessions
    # here can be watched only through this node's own portal).
    portal_address: Annotated[str, Field(max_length=300)] = ""

    @field_validator("portal_address")
    @classmethod
    def _portal_address_parses(cls, value: str) -> str:
        return _check_listen(value) if value else value

    @model_validator(mode="after")
    def _dead_after_spans_heartbeats(self) -> ClusterSettings:
        if self.dead_after_seconds < 3 * self.heartbeat_seconds:
            raise ValueError(
                "cluster.dead_after_seconds must be at least 3 x cluster.heartbeat_seconds"
            )
        return self


class RecordingsSettings(_Section):
    dir: OptionalPath = None  # empty: <data_dir>/recordings
    retention_days: Annotated[int, Field(ge=0)] = 0  # 0: keep forever
    quota_bytes: Annotated[int, Field(ge=0)] = 0  # 0: no quota
    flush_interval_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    flush_bytes: Annotated[int, Field(ge=4096)] = 65536


class KeysSettings(_Section):
    master_key_file: OptionalPath = None  # empty: <data_dir>/keys/master.key
    signing_key_file: OptionalPath = None  # empty: <data_dir>/keys/signing.key
    ssh_user_ca_key_file: OptionalPath = None  # empty: <data_dir>/keys/ssh_user_ca


class SessionSettings(_Section):
    idle_timeout_seconds: Seconds = 900
    max_duration_seconds: Seconds = 28800
    max_per_user: Annotated[int, Field(ge=0)] = 0  # 0: no limit


class DesktopSettings(_Section):
    # Desktops (VNC, RDP) this node relays at once; an RDP one runs its own renderer
    # (Xvnc + xfreerdp, about 120 MB): size it to the node's memory.
    max_sessions: Annotated[int, Field(ge=0, le=1000)] = 16
    # A start point and a full update every this many seconds: how finely replay can seek.
    keyframe_seconds: Annotated[float, Field(ge=1, le=60)] = 5.0
    # The desktop player reads a recording's RFB in parts of at most this many bytes.
    replay_part_bytes: Annotated[int, Field(ge=4 << 10, le=64 << 20)] = 8 << 20


class LockoutSettings(_Section):
    max_failures: Annotated[int, Field(ge=1, le=100)] = 5
    window_seconds: Seconds = 900
    lock_seconds: Seconds = 900


class PasswordSettings(_Section):
    min_length: Annotated[int, Field(ge=8, le=256)] = 12
    reject_common: bool = True


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    portal: PortalSettings = PortalSettings()
    ssh: SSHSettings = SSHSettings()
    database: DatabaseSettings = DatabaseSettings()
    cluster: ClusterSettings = ClusterSettings()
    recordings: RecordingsSettings = RecordingsSettings()
    keys: KeysSettings = KeysSettings()
    sessions: SessionSettings = SessionSettings()
    desktop: DesktopSettings = DesktopSettings()
    lockout: LockoutSettings = LockoutSettings()
    passwords: PasswordSettings = PasswordSettings()
    logging: LoggingSettings = LoggingSettings()

    # Resolved paths: the rest of the code uses these, never the raw optional fields.
    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite+aiosqlite:///{self.data_dir / 'conduit.db'}"

    @property
    def recordings_dir(self) -> Path:
        return self.recordings.dir or self.data_dir / "recordings"

    @property
    def master_key_file(self) -> Path:
        return self.keys.master_key_file or self.data_dir / "keys" / "master.key"

    @property
    def signing_key_file(self) -> Path:
        return self.keys.signing_key_file or self.data_dir / "keys" / "signing.key"

    @property
    def ssh_user_ca_key_file(self) -> Path:
        return self.keys.ssh_user_ca_key_file or self.data_dir / "keys" / "ssh_user_ca"

    @property
    def tls_cert_file(self) -> Path:
        return self.portal.tls_cert_file or self.data_dir / "tls" / "portal.crt"

    @property
    def tls_key_file(self) -> Path:
        return self.portal.tls_key_file or self.data_dir / "tls" / "portal.key"

    @property
    def ssh_host_key_files(self) -> list[Path]:
        if self.ssh.host_key_files:
            return list(self.ssh.host_key_files)
        return [self.data_dir / "ssh" / f"ssh_host_{kind}_key" for kind in ("ed25519", "ecdsa")]

    @property
    def portal_listen(self) -> ListenAddress:
        return parse_listen(self.portal.listen)

    @property
    def ssh_listen(self) -> ListenAddress:
        return parse_listen(self.ssh.listen)

    @property
    def portal_url(self) -> str:
        if self.portal.public_url:
            return self.portal.public_url.rstrip("/")
        listen = self.portal_listen
        host = "127.0.0.1" if listen.host in ("0.0.0.0", "::") else listen.host  # noqa: S104
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self.portal.tls else 'http'}://{shown}:{listen.port}"


@dataclass(frozen=True)
class Overrides:
    """What command-line flags may change; ``None`` leaves the configured value."""

    data_dir: Path | None = None
    portal_listen: str | None = None
    ssh_listen: str | None = None
    portal_tls: bool | None = None


def _env_layer(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Config keys from ``CONDUIT_SECTION__KEY`` variables, and which variable set each key."""
    layer: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in ENV_SPECIAL:
            continue
        section, sep, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if not sep or not section or not key:
            raise ConfigError(
                f"config error: environment variable {name} is not a config key "
                "(expected CONDUIT_<SECTION>__<KEY>)"
            )
        parsed: Any = value
        if value.startswith("["):
            # Lists (e.g. host key files) are written as TOML arrays.
            try:
                parsed = tomllib.loads(f"v = {value}")["v"]
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config error: {name}: not a list: {exc}") from None
        layer.setdefault(section, {})
        if not isinstance(layer[section], dict):
            raise ConfigError(f"config error: {name}: section {section!r} is not a table")
        layer[section][key] = parsed
        origin[f"{section}.{key}"] = f"environment variable {name}"
    return layer, origin


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config error: file {path} does not exist") from None
    except PermissionError:
        raise ConfigError(f"config error: file {path} is not readable") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config error: {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config error: {path} is not UTF-8 text") from None


def _describe(error: Mapping[str, Any]) -> tuple[str, str]:
    """Dotted key and a short reason from one pydantic error."""
    loc = [str(part) for part in error.get("loc", ())]
    key = ".".join(loc) if loc else "(top level)"
    if error.get("type") == "extra_forbidden":
        return key, "unknown key"
    msg = str(error.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    return key, f"bad value {error.get('input')!r}: {msg}"


def resolve_config_file(explicit: Path | None, environ: Mapping[str, str]) -> Path | None:
    if explicit is not None:
        return explicit
    if environ.get("CONDUIT_CONFIG"):
        return Path(environ["CONDUIT_CONFIG"])
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def load_settings(
    config_file: Path | None = None,
    overrides: Overrides | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings; every failure is one ``ConfigError`` line naming key and source."""
    env = os.environ if environ is None else environ
    path = resolve_config_file(config_file, env)
    raw: dict[str, Any] = _read_file(path) if path is not None else {}
    env_layer, origin = _env_layer(env)
    data = _merge(raw, env_layer)
    ov = overrides or Overrides()
    flags: dict[str, dict[str, Any]] = {}
    if ov.data_dir is not None:
        flags.setdefault("server", {})["data_dir"] = str(ov.data_dir)
    if ov.portal_listen is not None:
        flags.setdefault("portal", {})["listen"] = ov.portal_listen
    if ov.portal_tls is not None:
        flags.setdefault("portal", {})["tls"] = ov.portal_tls
    if ov.ssh_listen is not None:
        flags.setdefault("ssh", {})["listen"] = ov.ssh_listen
    for section, keys in flags.items():
        for key in keys:
            origin[f"{section}.{key}"] = "the command line"
    data = _merge(data, flags)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        key, reason = _describe(exc.errors()[0])
        source = origin.get(key) or (f"file {path}" if path is not None else "defaults")
        raise ConfigError(f"config error: {key}: {reason} (in {source})") from None
    _check_consistency(settings, path)
    return settings


def _check_consistency(settings: Settings, path: Path | None) -> None:
    source = f"file {path}" if path is not None else "defaults"
    if not settings.portal.tls and not settings.portal_listen.is_loopback:
        if not settings.portal.allow_plaintext_non_loopback:
            raise ConfigError(
                "config error: portal.tls: plain HTTP is only allowed on a loopback address "
                f"(set portal.allow_plaintext_non_loopback behind a TLS proxy) (in {source})"
            )
    url = settings.database_url
    if not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise ConfigError(
            "config error: database.url: bad value: expected sqlite+aiosqlite:// or "
            f"postgresql+asyncpg:// (in {source})"
        )
