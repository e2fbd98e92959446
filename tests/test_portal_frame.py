"""The portal frame without a server: menus per role, npm files served by name, no inline code."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from gateway.web import assets
from gateway.web.layout import menu_for
from gateway.web.security import CSP, security_headers

TEMPLATES = Path(__file__).resolve().parents[1] / "gateway" / "web" / "templates"


@pytest.mark.parametrize(
    "roles,keys",
    [
        (("vendor",), ["home", "access", "connect", "sessions", "account"]),
        (("approver",), ["home", "requests", "live", "account"]),
        (("auditor",), ["home", "live", "evidence", "account"]),
        (
            ("admin",),
            [
                "home",
                "access",
                "connect",
                "sessions",
                "requests",
                "live",
                "evidence",
                "admin",
                "account",
            ],
        ),
        (
            ("vendor", "approver"),
            ["home", "access", "connect", "sessions", "requests", "live", "account"],
        ),
        ((), ["home", "account"]),
        (("superuser",), ["home", "account"]),  # an unknown role carries nothing
    ],
)
def test_menu_follows_role_capabilities(roles: tuple[str, ...], keys: list[str]) -> None:
    assert [entry.key for entry in menu_for(roles)] == keys


async def test_only_named_npm_files_are_served() -> None:
    app = FastAPI()
    app.include_router(assets.router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://portal") as client:
        for path in (
            "/assets/htmx.esm.js",
            "/assets/..%2F..%2Fpackage.json",
            "/assets/htmx.org%2Fdist%2Fhtmx.js",
            "/node_modules/htmx.org/dist/htmx.min.js",
        ):
            assert (await client.get(path)).status_code == 404, path
        if (assets.NODE_MODULES / assets.FILES["htmx.min.js"]).is_file():
            served = await client.get("/assets/htmx.min.js")
            assert served.status_code == 200
            assert served.headers["content-type"].startswith("text/javascript")


async def test_novnc_modules_are_served_from_their_two_trees_only() -> None:
    app = FastAPI()
    app.include_router(assets.router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://portal") as client:
        for path in (
            "/assets/novnc/package.json",
            "/assets/novnc/core/../package.json",
            "/assets/novnc/core/..%2F..%2F..%2Fhtmx.org/dist/htmx.min.js",
            "/assets/novnc/core%2F..%2Fpackage.json",
            "/assets/novnc/vendor/pako/README.md",
            "/assets/novnc/docs/API.md",
            "/assets/novnc/app/ui.js",
            "/assets/novnc/core/rfb.mjs",
        ):
            assert (await client.get(path)).status_code == 404, path
        for path in ("/assets/novnc/core/rfb.js", "/assets/novnc/vendor/pako/lib/zlib/inflate.js"):
            served = await client.get(path)
            assert served.status_code == 200, path
            assert served.headers["content-type"].startswith("text/javascript")


@pytest.mark.parametrize("template", sorted(p.name for p in TEMPLATES.glob("*.html")))
def test_templates_carry_no_inline_script_or_style(template: str) -> None:
    text = (TEMPLATES / template).read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), "inline <script>"
    assert "<style" not in text
    assert not re.search(r"\sstyle=", text)
    assert not re.search(r"\son[a-z]+=", text), "inline event handler"
    assert "hx-on" not in text and "javascript:" not in text


async def test_an_unhandled_error_still_carries_the_security_headers() -> None:
    app = FastAPI()
    app.middleware("http")(security_headers)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug, with a detail that must not reach the browser")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://portal") as client:
        answer = await client.get("/boom")
    assert answer.status_code == 500
    assert answer.headers["content-security-policy"] == CSP
    assert answer.headers["x-frame-options"] == "DENY"
    assert "detail" not in answer.text
