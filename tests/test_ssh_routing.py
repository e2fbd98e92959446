"""SSH username routing is strict: anything unexpected is no route at all."""

from __future__ import annotations

import pytest

from gateway.ssh.routing import Route, parse_route


@pytest.mark.parametrize(
    "username,route",
    [
        ("alice", Route("alice")),
        ("alice+plc-1", Route("alice", "plc-1")),
        ("alice+plc-1+maint", Route("alice", "plc-1", "maint")),
        ("a.b_c-d+x.y", Route("a.b_c-d", "x.y")),
        ("a+b+c+d", None),
        ("+x", None),
        ("u+", None),
        ("u++x", None),
        ("u+../x", None),
        ("u+..", None),
        ("u+a/b", None),
        ("Alice+plc-1", None),
        ("alice+plc-1\x00", None),
        ("al\x00ice", None),
        ("u" * 1025, None),
        ("alice+plc-1 ", None),
        ("ａlice", None),
        ("", None),
    ],
)
def test_routes(username: str, route: Route | None) -> None:
    assert parse_route(username) == route
