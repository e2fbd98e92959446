"""SSH user certificates: issued after MFA (CLI, portal, API), the only way a key logs in.

Real peers: OpenSSH ``ssh`` with ``-i key -o CertificateFile=...`` as the vendor, OpenSSH
sshd as the asset behind the gateway, ``ssh-keygen -s`` for certificates this gateway did
not issue. The portal and API tests run in-process, as in test_identity_web.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import httpx
import pyotp
import pytest
from sqlalchemy import select

from gateway.audit.tables import AuditEventRow
from gateway.authz import hostkeys
from gateway.config import Overrides, load_settings
from gateway.db.models import User
from gateway.identity import ssh_access
from gateway.identity.accounts import create_user
from gateway.identity.models import SSHPublicKey
from gateway.keys import load_keyring
from gateway.services import Services
from gateway.vault import set_credential
from gateway.web.app import create_app
from tests.sshd_target import SSHDTarget, free_port, keygen
from tests.support import CONDUIT, Served, clean_env, conduit, init_data_dir, kbdint_client
from tests.test_identity_helpers import PASSWORDS, Env, env
from tests.test_identity_web import account_csrf, login

__all__ = ["env"]
PASSWORD = "correct horse battery staple"
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")


@dataclass
class Gateway:
    data: Path
    server: Served
    ssh_port: int
    secrets: dict[str, str]
    work: Path
    steps: dict[str, int]

    def key(self, user: str) -> Path:
        return self.work / f"{user}_ed25519"

    def code(self, user: str) -> str:
        """A code not used before: each success spends its time step (codes are single-use)."""
        self.steps[user] = self.steps.get(user, -1) + 1
        return pyotp.TOTP(self.secrets[user]).at(time.time() + 30 * self.steps[user])

    def issue(self, user: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
        return conduit("ssh-cert", "--user", user, "--key", f"{self.key(user)}.pub",
                       "--password-stdin", "--code-stdin", "--data-dir", str(self.data),
                       stdin=f"{PASSWORD}\n{code or self.code(user)}\n")  # fmt: skip

    def ssh(
        self, route: str, key: Path, cert: Path | None, command: str = "echo hi"
    ) -> subprocess.CompletedProcess[str]:
        certificate = ["-o", f"CertificateFile={cert}"] if cert is not None else []
        argv = ["ssh", "-p", str(self.ssh_port), "-o", "StrictHostKeyChecking=no",
                "-o", f"UserKnownHostsFile={self.work / 'known_hosts'}",
                "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-i", str(key),
                *certificate, "-o", "PreferredAuthentications=publickey",
                "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                f"{route}@127.0.0.1", command]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONDUIT_", "SSH_"))}
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL, check=False)  # fmt: skip

    def audit(self) -> list[dict[str, object]]:
        exported = conduit("audit", "export", "--data-dir", str(self.data))
        assert exported.returncode == 0, exported.stderr
        return [json.loads(line) for line in exported.stdout.splitlines()]

    def wait_for(self, action: str, reason: str, deadline_s: float = 15) -> dict[str, object]:
        """The audit event ``action`` whose detail reason is ``reason`` (written just after
        the client's connection ends, so tests wait for it rather than race it)."""
        end = time.monotonic() + deadline_s
        while True:
            for event in self.audit():
                detail = event["detail"]
                assert isinstance(detail, dict)
                if event["action"] == action and detail.get("reason") == reason:
                    return event
            if time.monotonic() > end:
                raise AssertionError(f"no {action} with reason {reason}")
            time.sleep(0.2)


async def _populate(data: Path, sshd: SSHDTarget, secrets: dict[str, str], work: Path) -> None:
    settings = load_settings(None, Overrides(data_dir=data), environ={})
    keys = load_keyring(settings)
    services = Services.build(settings, keys)
    try:
        async with services.sessions() as db, db.begin():
            for user, secret in secrets.items():
                row = await create_user(
                    db, username=user, roles=["vendor"], now=services.clock(),
                    master_key=keys.master_key, password=PASSWORD, totp_secret=secret,
                    status="active", organisation="acme",
                )  # fmt: skip
                keygen(work / f"{user}_ed25519")
                line = (work / f"{user}_ed25519.pub").read_text()
                await ssh_access.add_public_key(db, row.id, line, services.clock())
        await services.authz.add_asset("target", "127.0.0.1", sshd.port, "ssh", actor="test")
        async with services.sessions() as db, db.begin():
            await set_credential(
                db, keys.master_key, asset="target", username="root",
                private_key=sshd.client_key.read_bytes(), now=services.clock(),
            )  # fmt: skip
            await hostkeys.pin(
                db, "target", hostkeys.parse_key_line(sshd.host_public_key),
                actor="test", now=services.clock(),
            )  # fmt: skip
        await services.authz.add_grant(
            subject_kind="org", subject="acme", object_kind="asset", obj="target",
            action="ssh", actor="test",
        )  # fmt: skip
    finally:
        await services.close()


@pytest.fixture(scope="module")
def gateway(sshd: SSHDTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway for the module; each test uses its own user so they do not interfere."""
    root = tmp_path_factory.mktemp("gw")
    data, work = root / "data", root / "client"
    work.mkdir()
    init_data_dir(data)
    secrets = {name: pyotp.random_base32() for name in USERS}
    asyncio.run(_populate(data, sshd, secrets, work))
    portal, ssh_port = free_port(), free_port()
    server = Served(
        ["serve", "--data-dir", str(data), "--portal-listen", f"127.0.0.1:{portal}",
         "--ssh-listen", f"127.0.0.1:{ssh_port}"],
        f"127.0.0.1:{portal}",
    )  # fmt: skip
    try:
        server.wait_healthy()
        yield Gateway(data, server, ssh_port, secrets, work, {})
    finally:
        if server.proc.poll() is None:
            server.terminate()
        else:
            server.finish()


def _sign(ca: Path, key: Path, validity: str, principal: str = "alice") -> Path:
    """A certificate for ``key`` made with ssh-keygen, not by the gateway."""
    subprocess.run(["ssh-keygen", "-q", "-s", str(ca), "-I", "made-by-test", "-n", principal,
                    "-V", validity, f"{key}.pub"], check=True, capture_output=True)  # fmt: skip
    return Path(f"{key}-cert.pub")


# -- real peers ---------------------------------------------------------------------------


def test_certificate_from_this_gateway_logs_in_to_the_target(gateway: Gateway) -> None:
    issued = gateway.issue("alice")
    assert issued.returncode == 0, issued.stderr
    cert = Path(f"{gateway.key('alice')}-cert.pub")
    assert f"written to {cert}" in issued.stdout and "valid until" in issued.stdout
    assert stat.S_IMODE(cert.stat().st_mode) == 0o644
    shown = subprocess.run(["ssh-keygen", "-L", "-f", str(cert)], capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    assert 'Key ID: "conduit:alice:' in shown
    principals = shown.split("Principals:")[1].split("Critical Options:")[0].split()
    assert principals == ["alice"]
    extensions = shown.split("Extensions:")[1].split()
    assert sorted(extensions) == ["permit-port-forwarding", "permit-pty"]

    result = gateway.ssh("alice+target", gateway.key("alice"), cert)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hi\n"

    events = gateway.audit()
    logins = [e for e in events if e["action"] == "login.success" and e["actor"] == "alice"]
    [issue] = [e for e in events if e["action"] == "ssh.certificate.issued"]
    serial = issue["detail"]["serial"]  # type: ignore[index]
    assert [e["detail"] for e in logins] == [
        {"channel": "cli", "factor": "totp"},  # conduit ssh-cert
        {"channel": "ssh", "factor": "certificate", "serial": serial},
    ]
    success = logins[1]
    assert success["target"] == "target"
    # A plain certificate login refused nothing (its own CA match is no refusal).
    assert not [e for e in events if e["action"] in ("ssh.key.refused", "login.failure")]
    assert any(e["action"] == "session.start" and e["actor"] == "alice" for e in events)
    assert issue["actor"] == "alice" and issue["detail"]["via"] == "cli"  # type: ignore[index]
    listing = conduit("ssh-cert", "--list", "--user", "alice", "--data-dir", str(gateway.data))
    assert listing.returncode == 0, listing.stderr
    assert issue["detail"]["serial"] in listing.stdout  # type: ignore[index]


def test_bare_key_other_ca_expired_and_other_users_certificates_are_refused(
    gateway: Gateway,
) -> None:
    alice, bob = gateway.key("alice"), gateway.key("bob")
    work = gateway.work / "refusals"
    work.mkdir()

    # A copy of alice's registered key with no certificate beside it (OpenSSH would load
    # alice_ed25519-cert.pub by itself).
    (work / "alice_ed25519").write_bytes(alice.read_bytes())
    (work / "alice_ed25519").chmod(0o600)
    (work / "alice_ed25519.pub").write_bytes(Path(f"{alice}.pub").read_bytes())
    bare = gateway.ssh("alice+target", work / "alice_ed25519", None)
    assert bare.returncode == 255 and "Permission denied" in bare.stderr
    event = gateway.wait_for("login.failure", "public-key-without-certificate")
    assert event["actor"] == "alice"
    assert event["detail"]["factor"] == "certificate"  # type: ignore[index]
    assert event["detail"]["channel"] == "ssh"  # type: ignore[index]

    # The same key, certified by a CA this gateway does not know.
    keygen(work / "other_ca")
    other = _sign(work / "other_ca", work / "alice_ed25519", "-5m:+1h")
    refused = gateway.ssh("alice+target", work / "alice_ed25519", other)
    assert refused.returncode == 255 and "Permission denied" in refused.stderr
    gateway.wait_for("login.failure", "certificate-from-another-ca")

    # Signed by this gateway's own CA file, but its validity ended an hour ago.
    expired = _sign(gateway.data / "keys/ssh_user_ca", work / "alice_ed25519", "-2h:-1h")
    refused = gateway.ssh("alice+target", work / "alice_ed25519", expired)
    assert refused.returncode == 255 and "Permission denied" in refused.stderr
    gateway.wait_for("login.failure", "certificate-not-valid")

    # Bob's valid certificate, presented as alice.
    assert gateway.issue("bob").returncode == 0
    bob_cert = Path(f"{bob}-cert.pub")
    refused = gateway.ssh("alice+target", bob, bob_cert)
    assert refused.returncode == 255 and "Permission denied" in refused.stderr
    event = gateway.wait_for("login.failure", "certificate-for-another-user")
    assert event["actor"] == "alice"
    # ... while it does log bob in.
    assert gateway.ssh("bob+target", bob, bob_cert).stdout == "hi\n"
    assert gateway.server.proc.poll() is None


def test_removing_the_key_or_minting_outside_the_register_refuses_certificates(
    gateway: Gateway,
) -> None:
    """asyncssh only checks the CA's signature and the times: the gateway also wants the
    certificate in its register, for a key the user still has."""
    assert gateway.issue("erin").returncode == 0
    key, cert = gateway.key("erin"), Path(f"{gateway.key('erin')}-cert.pub")
    assert gateway.ssh("erin+target", key, cert).stdout == "hi\n"

    # Signed with this gateway's CA key file (someone who could read it), valid now, for
    # erin's registered key, but never issued through the gateway: not in the register.
    work = gateway.work / "minted"
    work.mkdir()
    for suffix in ("", ".pub"):
        (work / f"erin_ed25519{suffix}").write_bytes(Path(f"{key}{suffix}").read_bytes())
    (work / "erin_ed25519").chmod(0o600)
    minted = _sign(gateway.data / "keys/ssh_user_ca", work / "erin_ed25519", "-5m:+1h", "erin")
    refused = gateway.ssh("erin+target", work / "erin_ed25519", minted)
    assert refused.returncode == 255 and "Permission denied" in refused.stderr
    gateway.wait_for("login.failure", "certificate-not-in-register")
    # Our CA's signature on a certificate we never issued: the CA key is out. Someone is paged.
    alerts = gateway.server.metric("conduit_security_alerts_total", "kind",
                                   "certificate_outside_register")  # fmt: skip
    assert alerts == 1

    # Erin removes his key (what the portal's delete button calls): the certificate issued
    # for it, valid for hours more, no longer logs in.
    asyncio.run(_remove_keys(gateway.data, "erin"))
    refused = gateway.ssh("erin+target", key, cert)
    assert refused.returncode == 255 and "Permission denied" in refused.stderr
    event = gateway.wait_for("login.failure", "certificate-key-removed")
    assert event["actor"] == "erin"


async def _remove_keys(data: Path, username: str) -> None:
    settings = load_settings(None, Overrides(data_dir=data), environ={})
    services = Services.build(settings, load_keyring(settings))
    try:
        async with services.sessions() as db, db.begin():
            user_id = await db.scalar(select(User.id).where(User.username == username))
            assert user_id is not None
            for row in await ssh_access.list_public_keys(db, user_id):
                assert await ssh_access.remove_public_key(db, user_id, row.id) == row.fingerprint
    finally:
        await services.close()


def test_disabled_user_is_refused_with_a_valid_certificate(gateway: Gateway) -> None:
    assert gateway.issue("carol").returncode == 0
    key, cert = gateway.key("carol"), Path(f"{gateway.key('carol')}-cert.pub")
    assert gateway.ssh("carol+target", key, cert).returncode == 0
    disabled = conduit("user", "disable", "carol", "--data-dir", str(gateway.data))
    assert disabled.returncode == 0, disabled.stderr
    refused = gateway.ssh("carol+target", key, cert)
    assert refused.returncode == 255 and "Permission denied" in refused.stderr
    gateway.wait_for("login.failure", "certificate-refused-account-disabled")


def test_cli_refusals_count_toward_the_shared_lockout(gateway: Gateway) -> None:
    stranger = gateway.work / "stranger_ed25519"
    keygen(stranger)
    unregistered = conduit(
        "ssh-cert", "--user", "dave", "--key", f"{stranger}.pub", "--password-stdin",
        "--code-stdin", "--data-dir", str(gateway.data),
        stdin=f"{PASSWORD}\n{gateway.code('dave')}\n",
    )  # fmt: skip
    assert unregistered.returncode == 1
    assert "not registered" in unregistered.stderr
    assert not Path(f"{stranger}-cert.pub").exists()
    events = gateway.audit()
    assert any(e["action"] == "ssh.certificate.refused" and e["actor"] == "dave" for e in events)

    right = gateway.code("dave")
    wrong = "000000" if right != "000000" else "111111"
    for _ in range(5):  # lockout.max_failures
        failed = gateway.issue("dave", wrong)
        assert failed.returncode == 1
        assert "invalid username, password or code" in failed.stderr
    failures = [
        e for e in gateway.audit() if e["action"] == "login.failure" and e["actor"] == "dave"
    ]
    assert len(failures) == 5
    assert all(e["detail"] == {"channel": "cli", "reason": "bad-code"} for e in failures)
    assert any(e["action"] == "account.lock" and e["actor"] == "dave" for e in gateway.audit())
    # Locked: the right password and a fresh code no longer get a certificate.
    locked = gateway.issue("dave", right)
    assert locked.returncode == 1
    assert not Path(f"{gateway.key('dave')}-cert.pub").exists()


def test_cli_password_that_is_not_utf8_is_a_failed_login_not_a_crash(gateway: Gateway) -> None:
    """stdin is read with surrogateescape: undecodable bytes become lone surrogates, which
    no stored password can hold. A wrong password, audited and counted, not a traceback."""
    code = gateway.code("frank")
    refused = subprocess.run(
        [*CONDUIT, "ssh-cert", "--user", "frank", "--key", f"{gateway.key('frank')}.pub",
         "--password-stdin", "--code-stdin", "--data-dir", str(gateway.data)],
        input=PASSWORD.encode() + b"\xff\xfe\n" + code.encode() + b"\n",
        capture_output=True, env=clean_env(), timeout=60, check=False,
    )  # fmt: skip
    stderr = refused.stderr.decode("utf-8", "replace")
    assert refused.returncode == 1, stderr
    assert "invalid username, password or code" in stderr
    assert "Traceback" not in stderr
    assert not Path(f"{gateway.key('frank')}-cert.pub").exists()
    failures = [
        e for e in gateway.audit() if e["action"] == "login.failure" and e["actor"] == "frank"
    ]
    assert [e["detail"] for e in failures] == [{"channel": "cli", "reason": "bad-password"}]


def test_cli_refuses_a_code_in_argv(gateway: Gateway) -> None:
    """A code on the command line is readable by every local user (ps): refused before any
    check, so it neither issues a certificate nor counts toward the lockout."""
    failures_before = sum(
        1 for e in gateway.audit() if e["action"] == "login.failure" and e["actor"] == "bob"
    )
    cert = Path(f"{gateway.key('bob')}-cert.pub")
    cert.unlink(missing_ok=True)
    code = gateway.code("bob")
    refused = conduit(
        "ssh-cert", "--user", "bob", "--key", f"{gateway.key('bob')}.pub", "--password-stdin",
        "--code", code, "--data-dir", str(gateway.data), stdin=f"{PASSWORD}\n",
    )  # fmt: skip
    assert refused.returncode != 0
    assert "--code-stdin" in refused.stderr
    assert code not in refused.stderr + refused.stdout
    assert not cert.exists()
    failures_after = sum(
        1 for e in gateway.audit() if e["action"] == "login.failure" and e["actor"] == "bob"
    )
    assert failures_after == failures_before
    # The same code through stdin is still unspent and works.
    issued = gateway.issue("bob", code)
    assert issued.returncode == 0, issued.stderr
    assert cert.exists()


def test_keys_refused_before_another_login_are_audited_but_not_as_a_failed_login(
    gateway: Gateway,
) -> None:
    """An agent's keys go first; when keyboard-interactive then logs in, the refused key is
    still audited (ssh.key.refused), and no login.failure is written for the connection."""
    stranger = gateway.work / "agent_ed25519"
    keygen(stranger)
    fingerprint = asyncssh.read_private_key(stranger).get_fingerprint("sha256")

    async def connect() -> str:
        async with asyncssh.connect(
            "127.0.0.1", gateway.ssh_port, username="erin+target", known_hosts=None,
            client_keys=[str(stranger)], agent_path=None,
            client_factory=kbdint_client(PASSWORD, gateway.code("erin")),
            preferred_auth=("publickey", "keyboard-interactive"),
        ) as conn:  # fmt: skip
            result = await conn.run("echo in", check=True)
            return str(result.stdout)

    assert asyncio.run(connect()) == "in\n"
    event = gateway.wait_for("ssh.key.refused", "public-key-without-certificate")
    assert event["actor"] == "erin" and event["result"] == "failure"
    assert event["target"] == "target"
    detail = event["detail"]
    assert isinstance(detail, dict)
    assert detail["logged_in_by"] == "totp"
    assert detail["refused"] == [
        {"reason": "public-key-without-certificate", "fingerprint": fingerprint}
    ]
    failures = [
        e for e in gateway.audit()
        if e["action"] == "login.failure" and fingerprint in json.dumps(e["detail"])
    ]  # fmt: skip
    assert failures == []

    # The same agent key, then alice's certificate: the certificate's own match is no refusal.
    assert gateway.issue("alice").returncode == 0
    key = gateway.key("alice")
    pair = (asyncssh.read_private_key(key), asyncssh.read_certificate(f"{key}-cert.pub"))

    async def with_certificate() -> str:
        async with asyncssh.connect(
            "127.0.0.1", gateway.ssh_port, username="alice+target", known_hosts=None,
            client_keys=[asyncssh.read_private_key(stranger), pair], agent_path=None,
            preferred_auth=("publickey",),
        ) as conn:  # fmt: skip
            result = await conn.run("echo cert", check=True)
            return str(result.stdout)

    assert asyncio.run(with_certificate()) == "cert\n"
    end = time.monotonic() + 15
    while True:
        by_cert = [
            e["detail"] for e in gateway.audit()
            if e["action"] == "ssh.key.refused"
            and e["detail"]["logged_in_by"] == "certificate"  # type: ignore[index]
        ]  # fmt: skip
        if by_cert or time.monotonic() > end:
            break
        time.sleep(0.2)
    assert by_cert, "no ssh.key.refused for the certificate login"
    assert by_cert[0]["refused"] == [  # type: ignore[index]
        {"reason": "public-key-without-certificate", "fingerprint": fingerprint}
    ]


@pytest.mark.realpeer
def test_the_plain_key_openssh_offers_before_its_certificate_is_no_refusal(
    gateway: Gateway,
) -> None:
    """OpenSSH loads ``id_ed25519-cert.pub`` beside the key and offers the plain key first.
    The certificate for that very key then logs in, so that offer was no refusal: no
    ``ssh.key.refused`` for it. A plain key whose certificate does not log in (expired here)
    is still audited when another method logs in after it."""
    assert gateway.issue("grace").returncode == 0
    key = gateway.key("grace")
    fingerprint = asyncssh.read_private_key(key).get_fingerprint("sha256")
    result = gateway.ssh("grace+target", key, None)  # the certificate is found beside the key
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hi\n"

    def events_of(user: str, action: str) -> list[dict[str, object]]:
        return [e for e in gateway.audit() if e["actor"] == user and e["action"] == action]

    end = time.monotonic() + 15
    while not events_of("grace", "session.end") and time.monotonic() < end:
        time.sleep(0.2)
    [success] = events_of("grace", "login.success")[-1:]
    assert success["detail"]["factor"] == "certificate"  # type: ignore[index]
    assert events_of("grace", "ssh.key.refused") == []
    assert events_of("grace", "login.failure") == []

    # heidi's key offered bare, then with a certificate that expired, then her password
    # and code: both refusals of that key are audited.
    work = gateway.work / "expired"
    work.mkdir()
    for suffix in ("", ".pub"):
        (work / f"heidi_ed25519{suffix}").write_bytes(Path(f"{gateway.key('heidi')}{suffix}")
                                                      .read_bytes())  # fmt: skip
    (work / "heidi_ed25519").chmod(0o600)
    expired = _sign(gateway.data / "keys/ssh_user_ca", work / "heidi_ed25519", "-2h:-1h",
                    "heidi")  # fmt: skip
    bare = asyncssh.read_private_key(work / "heidi_ed25519")
    heidi_fp = bare.get_fingerprint("sha256")

    async def connect() -> str:
        async with asyncssh.connect(
            "127.0.0.1", gateway.ssh_port, username="heidi+target", known_hosts=None,
            client_keys=[bare, (bare, asyncssh.read_certificate(expired))], agent_path=None,
            client_factory=kbdint_client(PASSWORD, gateway.code("heidi")),
            preferred_auth=("publickey", "keyboard-interactive"),
        ) as conn:  # fmt: skip
            return str((await conn.run("echo in", check=True)).stdout)

    assert asyncio.run(connect()) == "in\n"
    event = gateway.wait_for("ssh.key.refused", "certificate-not-valid")
    assert event["actor"] == "heidi"
    detail = event["detail"]
    assert isinstance(detail, dict) and detail["logged_in_by"] == "totp"
    assert {"reason": "public-key-without-certificate", "fingerprint": heidi_fp} in detail[
        "refused"
    ]
    assert heidi_fp != fingerprint


# -- portal and API (in-process) ----------------------------------------------------------


async def _add_key(client: httpx.AsyncClient, line: str) -> None:
    csrf = await account_csrf(client)
    added = await client.post("/account/ssh-keys", data={"public_key": line, "csrf_token": csrf})
    assert added.status_code == 303


async def _key_rows(e: Env) -> dict[str, int]:
    async with e.services.sessions() as db:
        rows = await db.scalars(select(SSHPublicKey))
        return {row.fingerprint: row.id for row in rows}


@contextlib.asynccontextmanager
async def _alice_and_mallory(
    e: Env, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Portal clients for alice and mallory, logged in, each with a registered key
    (``alice_key`` and ``mallory_key`` in ``tmp_path``)."""
    keygen(tmp_path / "alice_key")
    keygen(tmp_path / "mallory_key")
    transport = httpx.ASGITransport(app=create_app(e.services))
    base = "https://testserver"
    async with (
        httpx.AsyncClient(transport=transport, base_url=base) as c,
        httpx.AsyncClient(transport=transport, base_url=base) as m,
    ):
        await login(c, "alice", PASSWORDS["alice"], e.code("alice"))
        await login(m, "mallory", PASSWORDS["mallory"], e.code("mallory"))
        await _add_key(c, (tmp_path / "alice_key.pub").read_text())
        await _add_key(m, (tmp_path / "mallory_key.pub").read_text())
        yield c, m


async def test_portal_download_and_api_need_recent_mfa_and_a_registered_key(
    env: Env, tmp_path: Path
) -> None:
    e = env
    ca = e.services.keys.ssh_user_ca
    assert ca is not None
    async with _alice_and_mallory(e, tmp_path) as (c, _):
        alice_line = (tmp_path / "alice_key.pub").read_text()
        ids = await _key_rows(e)
        alice_id = ids[asyncssh.import_public_key(alice_line).get_fingerprint()]
        mallory_id = next(i for i in ids.values() if i != alice_id)
        csrf = await account_csrf(c)

        page = await c.get("/account")
        assert f'action="/account/ssh-keys/{alice_id}/certificate"' in page.text
        no_csrf = await c.post(f"/account/ssh-keys/{alice_id}/certificate")
        assert no_csrf.status_code == 403
        download = await c.post(
            f"/account/ssh-keys/{alice_id}/certificate", data={"csrf_token": csrf}
        )
        assert download.status_code == 200, download.text
        assert 'filename="id_ed25519-cert.pub"' in download.headers["content-disposition"]
        cert = asyncssh.import_certificate(download.text)
        assert cert.principals == ["alice"]
        assert cert.signing_key.public_data == ca.public_data
        assert (
            cert.key.get_fingerprint() == asyncssh.import_public_key(alice_line).get_fingerprint()
        )
        # Options and extensions together: no force-command, source-address, agent or X11.
        assert cert.options == {"permit-port-forwarding": True, "permit-pty": True}

        # Another user's key is not this user's to certify.
        other = await c.post(
            f"/account/ssh-keys/{mallory_id}/certificate", data={"csrf_token": csrf}
        )
        assert other.status_code == 200 and "not registered" in other.text

        api = await c.post(
            "/api/v1/ssh/certificate", json={"public_key": alice_line},
            headers={"X-CSRF-Token": csrf},
        )  # fmt: skip
        assert api.status_code == 200, api.text
        body = api.json()
        assert body["certificate"].startswith("ssh-ed25519-cert-v01@openssh.com ")
        assert body["certificate_id"] == f"conduit:alice:{body['serial']}"
        after = dt.datetime.fromisoformat(body["valid_after"])
        before = dt.datetime.fromisoformat(body["valid_before"])
        assert after == e.clock.now - dt.timedelta(minutes=5)  # skew between nodes
        assert before == e.clock.now + dt.timedelta(hours=8)  # [ssh] certificate_hours
        assert (
            await c.post("/api/v1/ssh/certificate", json={"ssh_key_id": alice_id})
        ).status_code == 403
        both = await c.post(
            "/api/v1/ssh/certificate", json={"public_key": alice_line, "ssh_key_id": alice_id},
            headers={"X-CSRF-Token": csrf},
        )  # fmt: skip
        assert both.status_code == 422

        # Five minutes after the last second factor: step up first.
        e.clock.advance(6 * 60)
        stale = await c.post(
            "/api/v1/ssh/certificate", json={"ssh_key_id": alice_id},
            headers={"X-CSRF-Token": csrf},
        )  # fmt: skip
        assert stale.status_code == 403 and "step-up" in stale.json()["detail"]
        stale_page = await c.post(
            f"/account/ssh-keys/{alice_id}/certificate", data={"csrf_token": csrf}
        )
        assert "confirm a second factor" in stale_page.text
        stepped = await c.post(
            "/account/step-up", data={"csrf_token": csrf, "code": e.code("alice")}
        )
        assert stepped.status_code == 303
        again = await c.post(
            "/api/v1/ssh/certificate", json={"ssh_key_id": alice_id},
            headers={"X-CSRF-Token": csrf},
        )  # fmt: skip
        assert again.status_code == 200

    async with e.services.sessions() as db:
        rows = (await db.scalars(select(AuditEventRow).order_by(AuditEventRow.id))).all()
    issued = [json.loads(r.detail) for r in rows if r.action == "ssh.certificate.issued"]
    assert [d["via"] for d in issued] == ["portal", "api", "api"]
    refused = [json.loads(r.detail) for r in rows if r.action == "ssh.certificate.refused"]
    reasons = {d["reason"] for d in refused}
    assert "second factor older than step-up limit" in reasons
    assert any("not registered" in r for r in reasons)


async def test_portal_key_removal_is_audited_and_only_for_the_owner(
    env: Env, tmp_path: Path
) -> None:
    e = env
    async with _alice_and_mallory(e, tmp_path) as (c, m):
        ids = await _key_rows(e)
        alice_fp = asyncssh.read_public_key(tmp_path / "alice_key.pub").get_fingerprint()
        alice_id = ids[alice_fp]
        mallory_csrf = await account_csrf(m)
        # Mallory cannot remove alice's key by its id.
        theirs = await m.post(
            f"/account/ssh-keys/{alice_id}/delete", data={"csrf_token": mallory_csrf}
        )
        assert theirs.status_code == 303
        assert alice_fp in await _key_rows(e)
        gone = await c.post(
            f"/account/ssh-keys/{alice_id}/delete", data={"csrf_token": await account_csrf(c)}
        )
        assert gone.status_code == 303
        assert alice_fp not in await _key_rows(e)
    async with e.services.sessions() as db:
        rows = (await db.scalars(select(AuditEventRow).order_by(AuditEventRow.id))).all()
    removed = [(r.actor, json.loads(r.detail)) for r in rows if r.action == "sshkey.remove"]
    assert removed == [("alice", {"fingerprint": alice_fp})]
