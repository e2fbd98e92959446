"""The site the desktop tests build with the real ``conduit`` command: portal users with their
TOTP secrets, VNC and RDP assets with vaulted credentials, grants; a TigerVNC ``Xvnc`` with an
``xterm`` running ``bash`` in a work directory; and ``DesktopSite``, a served data directory with
its CLI and audit log at hand, which each test module extends with its own targets.

Used by the browser tests (``test_portal_desktop*.py``) and the websocket acceptance
(``test_desktop_ws_acceptance.py``). Does not start the gateway (``tests.support.serving``),
x11vnc or xrdp (``tests.desktop_targets``, ``tests.rdp_target``), nor a browser
(``tests.browser_support``).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import Browser, BrowserContext, Page

from tests.browser_support import portal_context, sign_in
from tests.desktop_targets import XvncTarget, start_xvnc, stop
from tests.support import Served, conduit, init_data_dir, serving

PASSWORD = "correct horse battery staple 9"  # noqa: S105 - the portal users' test password
# The browser tests' xterm: a font and colours a screenshot reads well in.
XTERM_LOOK = ("-fa", "Monospace", "-fs", "12", "-bg", "#202020", "-fg", "#f0f0f0")


def cli(data_dir: Path, *args: str, stdin: str | None = None) -> str:
    """``conduit ARGS --data-dir DATA_DIR``, which must succeed; its standard output."""
    done = conduit(*args, "--data-dir", str(data_dir), stdin=stdin)
    assert done.returncode == 0, done.stderr
    return done.stdout


def add_users(
    data_dir: Path, secrets_dir: Path, users: Iterable[tuple[str, str]]
) -> dict[str, str]:
    """Each (user, role) with ``PASSWORD`` and a TOTP secret (vendors in organisation acme);
    the secrets by user. The secret files stay in ``secrets_dir``."""
    secrets: dict[str, str] = {}
    for user, role in users:
        secret_file = secrets_dir / f"{user}.totp"
        org = ["--org", "acme"] if role == "vendor" else []
        cli(data_dir, "user", "add", user, "--role", role, *org, "--password-stdin",
            "--totp-secret-file", str(secret_file), stdin=PASSWORD + "\n")  # fmt: skip
        secrets[user] = secret_file.read_text().strip()
    return secrets


def add_asset(
    data_dir: Path,
    name: str,
    port: int,
    password: str | None,
    *,
    protocol: str = "vnc",
    username: str = "vnc",
) -> None:
    """A desktop asset on 127.0.0.1:``port``, its ``password`` vaulted (None: no credential)."""
    cli(data_dir, "asset", "add", name, "--host", "127.0.0.1", "--port", str(port),
        "--protocol", protocol)  # fmt: skip
    if password is not None:
        cli(data_dir, "asset", "credential", name, "--username", username, "--password-stdin",
            stdin=password + "\n")  # fmt: skip


def add_grant(data_dir: Path, user: str, asset: str, action: str, *extra: str) -> str:
    """A grant of ``action`` on ``asset`` to ``user`` (``extra``: --until and such); its id."""
    added = cli(data_dir, "grant", "add", "--user", user, "--asset", asset, "--action", action,
                *extra)  # fmt: skip
    return added.strip().splitlines()[-1]


@dataclass
class XDesktop:
    """An Xvnc target with an xterm over its top-left corner, running bash in ``work``; ``env``
    runs X clients on it."""

    target: XvncTarget
    xterm: subprocess.Popen[bytes]
    work: Path
    env: dict[str, str]


@contextmanager
def xvnc_with_xterm(
    base: Path, password: str, geometry: str, xterm_geometry: str, *xterm_options: str
) -> Iterator[XDesktop]:
    """Xvnc (VNC authentication with ``password``) and an xterm of ``xterm_geometry``; both
    stopped afterwards. With no window manager the keyboard goes to the window under the
    pointer: tests put the pointer on the xterm."""
    target = start_xvnc(base / "xvnc", password=password, geometry=geometry)
    work = base / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "XAUTHORITY"}
    env.update({"DISPLAY": target.display_name, "HOME": str(work), "PS1": "$ "})
    xterm = subprocess.Popen(
        ["xterm", "-geometry", xterm_geometry, *xterm_options, "-e", "bash", "--norc",
         "--noprofile"],
        env=env, cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield XDesktop(target, xterm, work, env)
    finally:
        stop(xterm)
        target.stop()


@dataclass
class DesktopSite:
    """A served data directory: the portal users' TOTP secrets, the CLI, the audit log."""

    server: Served
    data_dir: Path
    secrets: dict[str, str]

    def cli(self, *args: str, stdin: str | None = None) -> str:
        return cli(self.data_dir, *args, stdin=stdin)

    def audit(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.cli("audit", "export").splitlines()]


@dataclass
class VncSite(DesktopSite):
    """The browser tests' site: a vendor and an approver (and who else they ask for) on one
    VNC asset, an Xvnc with an xterm."""

    desk: XDesktop


@contextmanager
def served_vnc_site(
    base: Path,
    vnc_password: str,
    xterm_geometry: str,
    users: Iterable[tuple[str, str]],
    asset: str,
    env: dict[str, str] | None = None,
) -> Iterator[VncSite]:
    """An 800x600 Xvnc with an xterm of ``xterm_geometry`` (``XTERM_LOOK``); ``users``; the
    VNC ``asset`` with ``vnc_password`` vaulted, ``vnc`` granted to vendor and ``kill`` to
    approver; served (``env``: the gateway's environment). Everything stopped afterwards."""
    data_dir = base / "data"
    init_data_dir(data_dir)
    with xvnc_with_xterm(base, vnc_password, "800x600", xterm_geometry, *XTERM_LOOK) as desk:
        secrets = add_users(data_dir, base, users)
        add_asset(data_dir, asset, desk.target.port, vnc_password)
        add_grant(data_dir, "vendor", asset, "vnc")
        add_grant(data_dir, "approver", asset, "kill")
        with serving(data_dir, env=env) as (server, _ssh_port):
            yield VncSite(server, data_dir, secrets, desk)


def browser_context(browser: Browser, site: DesktopSite) -> BrowserContext:
    return portal_context(browser, site.server.base)


def sign_in_as(page: Page, site: DesktopSite, user: str) -> None:
    sign_in(page, user, PASSWORD, site.secrets[user])
