"""Configuration: defaults, file, environment and flags; errors name the key and source."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.config import Overrides, Settings, load_settings, parse_listen
from gateway.errors import ConfigError
from tests.support import clean_env, conduit

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conduit.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text,key",
    [
        ('[portal]\nlisen = "127.0.0.1:1"\n', "portal.lisen"),
        ('[portl]\nlisten = "127.0.0.1:1"\n', "portl"),
        ('[portal]\nlisten = "nonsense"\n', "portal.listen"),
        ('[portal]\nlisten = "127.0.0.1:70000"\n', "portal.listen"),
        ('[portal]\nlisten = "::1:80"\n', "portal.listen"),
        ("[ssh]\nlogin_timeout_seconds = 0\n", "ssh.login_timeout_seconds"),
        ('[ssh]\nlogin_timeout_seconds = "soon"\n', "ssh.login_timeout_seconds"),
        ('[logging]\nformat = "xml"\n', "logging.format"),
        ("[lockout]\nmax_failures = -1\n", "lockout.max_failures"),
        ('[database]\nurl = "mysql://x"\n', "database.url"),
        ('[portal]\ntls = false\nlisten = "0.0.0.0:80"\n', "portal.tls"),
    ],
)
def test_file_error_names_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    message = info.value.message
    assert f" {key}" in message or f"{key}:" in message
    assert str(path) in message
    assert "\n" not in message


def test_unknown_key_says_so(tmp_path: Path) -> None:
    path = write(tmp_path, "[ssh]\nbanner_text = 'x'\n")
    with pytest.raises(ConfigError, match=r"ssh\.banner_text: unknown key"):
        load_settings(path, environ={})


def test_invalid_toml_names_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[portal\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_settings(path, environ={})
    assert str(path) in info.value.message


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml", environ={})


def test_precedence_file_env_flag(tmp_path: Path) -> None:
    path = write(
        tmp_path, '[portal]\nlisten = "127.0.0.1:1001"\n[ssh]\nlisten = "127.0.0.1:1002"\n'
    )
    env = {"CONDUIT_PORTAL__LISTEN": "127.0.0.1:2001", "CONDUIT_SESSIONS__MAX_PER_USER": "3"}
    settings = load_settings(path, environ=env)
    assert settings.portal.listen == "127.0.0.1:2001"
    assert settings.ssh.listen == "127.0.0.1:1002"
    assert settings.sessions.max_per_user == 3
    flagged = load_settings(path, Overrides(portal_listen="127.0.0.1:3001"), environ=env)
    assert flagged.portal.listen == "127.0.0.1:3001"


def test_env_errors_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CONDUIT_SSH__LISTEN"):
        load_settings(None, environ={"CONDUIT_SSH__LISTEN": "bad"})
    with pytest.raises(ConfigError, match="CONDUIT_SSH__NOPE"):
        load_settings(None, environ={"CONDUIT_SSH__NOPE": "1"})
    with pytest.raises(ConfigError, match="CONDUIT_FOO"):
        load_settings(None, environ={"CONDUIT_FOO": "1"})


def test_env_list_value(tmp_path: Path) -> None:
    env = {"CONDUIT_SSH__HOST_KEY_FILES": '["/k/a", "/k/b"]'}
    settings = load_settings(None, environ=env)
    assert settings.ssh_host_key_files == [Path("/k/a"), Path("/k/b")]


def test_paths_derive_from_data_dir(tmp_path: Path) -> None:
    settings = load_settings(None, Overrides(data_dir=tmp_path), environ={})
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'conduit.db'}"
    assert settings.recordings_dir == tmp_path / "recordings"
    assert settings.master_key_file == tmp_path / "keys" / "master.key"
    assert settings.tls_cert_file.parent == tmp_path / "tls"


@pytest.mark.parametrize(
    "text,host,port",
    [
        ("127.0.0.1:80", "127.0.0.1", 80),
        ("[::1]:2222", "::1", 2222),
        ("localhost:0", "localhost", 0),
    ],
)
def test_parse_listen(text: str, host: str, port: int) -> None:
    listen = parse_listen(text)
    assert (listen.host, listen.port) == (host, port)
    assert listen.is_loopback


def test_example_file_documents_every_key_with_its_default() -> None:
    example = ROOT / "config.example.toml"
    loaded = load_settings(example, environ={})
    assert loaded == Settings()
    documented = tomllib.loads(example.read_text())
    for section, model in Settings.model_fields.items():
        assert section in documented, f"section [{section}] missing from config.example.toml"
        annotation = model.annotation
        assert annotation is not None
        for key in annotation.model_fields:  # type: ignore[union-attr]
            assert key in documented[section], f"{section}.{key} missing from the example"


def test_serve_with_bad_config_prints_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[portal]\nlisten = "127.0.0.1:8443"\ncolour = "blue"\n')
    result = conduit("serve", "--config", str(path), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"config error: portal.colour: unknown key (in file {path})"]


def test_bad_environment_value_stops_a_real_process(tmp_path: Path) -> None:
    env = clean_env(CONDUIT_LOGGING__LEVEL="loud")
    result = conduit("config", "check", "--data-dir", str(tmp_path), env=env)
    assert result.returncode == 2
    assert "logging.level" in result.stderr
    assert "CONDUIT_LOGGING__LEVEL" in result.stderr


def test_config_check_redacts_database_password(tmp_path: Path) -> None:
    path = write(tmp_path, '[database]\nurl = "postgresql+asyncpg://conduit:s3cret@db/conduit"\n')
    result = conduit("config", "check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout
    assert "conduit:***@db/conduit" in result.stdout
