"""Auditor pages as an auditor sees them: Debian's Chromium (Playwright) against a real
``conduit serve`` in front of a real OpenSSH sshd asset.

A vendor runs a native SSH session that an admin watches in the browser (``session.watched``
through the real watch page), another vendor uploads a file with OpenSSH ``sftp``; the
auditor then verifies the recording in the browser, downloads its evidence bundle, checks it
offline with the bundle's own script ("intact"; one flipped byte: "tampered"), reads
``session.watched`` and ``recording.viewed`` (the auditor replayed it in the player) with who
and when in the audit viewer, and the upload on the transfers page. Screenshots go to
``test-artifacts/portal/``.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser_support import ARTIFACTS, LAPTOP, TABLET, shot, watch_csp
from tests.sshd_target import SSHDTarget
from tests.support import init_data_dir, serving
from tests.test_portal_terminal import (
    Site,
    _cli,
    _context,
    _detail,
    _session_of,
    _sign_in,
    _wait_row,
    browser,
)
from tests.test_ssh_jump import PASSWORD, Gateway

__all__ = ["browser"]
pytestmark = pytest.mark.realpeer

ASSET = "plc-audit"
# Each login uses up a TOTP code (portal and SSH share them): one user per login here.
USERS = [
    ("vendor", "vendor"),
    ("tech", "vendor"),
    ("outsider", "vendor"),
    ("auditor", "auditor"),
    ("admin", "admin"),
]


@pytest.fixture(scope="module")
def site(sshd: SSHDTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    data_dir = tmp_path_factory.mktemp("audit") / "data"
    init_data_dir(data_dir)
    secrets: dict[str, str] = {}
    for user, role in USERS:
        secret_file = data_dir.parent / f"{user}.totp"
        org = ["--org", "acme"] if role == "vendor" else []
        _cli(data_dir, "user", "add", user, "--role", role, *org, "--password-stdin",
             "--totp-secret-file", str(secret_file), stdin=PASSWORD + "\n")  # fmt: skip
        secrets[user] = secret_file.read_text().strip()
    _cli(data_dir, "asset", "add", ASSET, "--host", "127.0.0.1", "--port", str(sshd.port),
         "--protocol", "ssh")  # fmt: skip
    _cli(data_dir, "asset", "credential", ASSET, "--username", "root",
         "--key-file", str(sshd.client_key))  # fmt: skip
    _cli(data_dir, "asset", "pin-hostkey", ASSET, "--key", sshd.host_public_key)
    for user, action in (
        ("vendor", "ssh"),
        ("tech", "ssh"),
        ("tech", "sftp-read"),
        ("tech", "sftp-write"),
    ):
        _cli(data_dir, "grant", "add", "--user", user, "--asset", ASSET, "--action", action)
    with serving(data_dir) as (server, ssh_port):
        work = data_dir.parent / "client"
        work.mkdir()
        yield Site(server, data_dir, secrets, Gateway(data_dir, server, ssh_port, secrets, work))


def _watched_session(browser: Browser, site: Site) -> str:
    """A native session the admin watches in the browser; returns its recording id."""
    gateway = site.gateway
    proc = gateway.background(f"vendor+{ASSET}", "echo evidence-marker-$((40+2)); sleep 60",
                              gateway.code("vendor"))  # fmt: skip
    context = _context(browser, site)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"evidence-marker-42"
        page = context.new_page()
        _sign_in(page, site, "admin")
        session_id = _session_of(page, "vendor", "ssh")
        page.goto(f"/sessions/{session_id}/watch")
        _wait_row(page, "evidence-marker-42")
        site.audit_until("session.watched", session_id)
    finally:
        context.close()
        proc.kill()
        proc.communicate(timeout=10)
    return str(_detail(site.audit_until("session.end", session_id))["recording_id"])


def _upload(site: Site) -> tuple[str, str, int]:
    """``tech`` puts a file with OpenSSH sftp; returns (remote path, sha256, size)."""
    gateway = site.gateway
    local = gateway.work / "firmware.bin"
    local.write_bytes(bytes(range(256)) * 64)
    remote = f"{gateway.work}/uploaded-firmware.bin"
    argv = ["sftp", "-q", "-P", str(gateway.ssh_port), "-o", "StrictHostKeyChecking=no",
            "-o", f"UserKnownHostsFile={gateway.work / 'known_hosts'}",
            "-o", "PreferredAuthentications=keyboard-interactive",
            "-o", "NumberOfPasswordPrompts=1", f"tech+{ASSET}@127.0.0.1"]  # fmt: skip
    done = subprocess.run(argv, input=f"put {local} {remote}\nbye\n", text=True,
                          env=gateway.askpass(f"tech+{ASSET}", gateway.code("tech")),
                          capture_output=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    end = time.monotonic() + 15
    while not any(e["action"] == "sftp.write" for e in site.audit()):
        assert time.monotonic() < end, "no sftp.write audited"
        time.sleep(0.2)
    data = local.read_bytes()
    return remote, hashlib.sha256(data).hexdigest(), len(data)


def _verify(path: Path) -> tuple[int, str]:
    with zipfile.ZipFile(path) as z:
        script = path.parent / "verify_bundle.py"
        script.write_bytes(z.read("verify_bundle.py"))
    done = subprocess.run([sys.executable, "-I", str(script), str(path)], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    return done.returncode, done.stdout.strip()


def _both_sizes(page: Page, name: str) -> None:
    shot(page, name)
    page.set_viewport_size(TABLET)
    shot(page, f"{name}-tablet")
    page.set_viewport_size(LAPTOP)


def test_auditor_verifies_downloads_and_reads_the_evidence(
    browser: Browser, site: Site, tmp_path: Path
) -> None:
    recording = _watched_session(browser, site)
    remote, digest, size = _upload(site)
    context = _context(browser, site)
    try:
        page = context.new_page()
        csp = watch_csp(page)
        _sign_in(page, site, "auditor")
        # Replayed in the player: the view the audit viewer must show later, with who.
        page.goto(f"/evidence/recordings/{recording}")
        expect(page.get_by_role("heading", level=1)).to_contain_text("Recording")

        # Verify now, in place (htmx), then the result page.
        page.goto(f"/evidence/recordings/{recording}/verify")
        page.get_by_role("button", name="Verify now").click()
        status = page.locator(f"#integrity-{recording}")
        expect(status).to_contain_text("intact")
        expect(status).to_contain_text("checked")
        _both_sizes(page, "auditor-verify-result")

        # The bundle, downloaded as a person would, checked offline.
        with page.expect_download() as waiting:
            page.get_by_role("link", name="Download evidence bundle").click()
        bundle = tmp_path / waiting.value.suggested_filename
        waiting.value.save_as(bundle)
        assert _verify(bundle) == (0, "intact")
        name = f"{recording}.rec"
        with zipfile.ZipFile(bundle) as z:
            members = {n: z.read(n) for n in z.namelist()}
        flipped = bytearray(members[name])
        flipped[len(flipped) // 2] ^= 0x01
        members[name] = bytes(flipped)
        tampered = tmp_path / "tampered.zip"
        with zipfile.ZipFile(tampered, "w") as z:
            for member, data in members.items():
                z.writestr(member, data)
        code, said = _verify(tampered)
        assert code == 1 and said.startswith("tampered"), said

        # The audit viewer: watches and views with who and when.
        page.goto("/evidence/audit?action=session.watched")
        row = page.locator("table.audit tbody tr").first
        expect(row).to_contain_text("admin")
        expect(row.locator("time")).to_have_count(1)
        page.goto("/evidence/audit?action=recording.viewed")
        row = page.locator("table.audit tbody tr").first
        expect(row).to_contain_text("auditor")
        expect(row).to_contain_text(recording)
        page.goto("/evidence/audit")
        expect(page.locator("table.audit tbody tr").first).to_be_visible()
        page.get_by_role("button", name="Verify the chain now").click()
        expect(page.locator("#chain")).to_contain_text("intact")
        page.goto("/evidence/audit")  # from the top: a full-page shot of a page scrolled to
        # its #chain anchor once came out wider than the viewport
        _both_sizes(page, "auditor-audit-log")
        downloads = page.locator("table.audit tbody tr", has_text="recording.download")
        expect(downloads.first).to_contain_text("auditor")

        # File transfers: the upload with its path, size and digest.
        page.goto("/evidence/transfers")
        upload = page.locator("table.transfers tbody tr", has_text=remote)
        expect(upload).to_have_count(1)
        expect(upload).to_contain_text(digest)
        expect(upload).to_contain_text(f"{size:,}")
        expect(upload).to_contain_text("tech")
        _both_sizes(page, "auditor-transfers")
        assert csp == []

        # A vendor gets 404 on every page here, including this recording's.
        vendor = _context(browser, site)
        try:
            vpage = vendor.new_page()
            _sign_in(vpage, site, "outsider")
            for path in ("/evidence/audit", "/evidence/transfers",
                         f"/evidence/recordings/{recording}/verify",
                         f"/evidence/recordings/{recording}/bundle"):  # fmt: skip
                answer = vpage.request.get(path)
                assert answer.status == 404, path
        finally:
            vendor.close()
    finally:
        context.close()
    assert ARTIFACTS.joinpath("auditor-transfers.png").exists()
