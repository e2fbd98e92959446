"""SSH username routing: ``user``, ``user+asset`` or ``user+asset+account``, parsed strictly.

Anything else (extra ``+``, empty parts, path characters, NUL, over-long names, upper case)
is not a route; the server then refuses authentication exactly as for a wrong password, so
a malformed name reveals nothing. Does not look anything up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_USERNAME = 200
_PART = r"[a-z0-9][a-z0-9._-]{0,63}"
_ROUTE = re.compile(rf"({_PART})(?:\+({_PART})(?:\+({_PART}))?)?")


@dataclass(frozen=True)
class Route:
    user: str
    asset: str | None = None
    account: str | None = None


def parse_route(username: str) -> Route | None:
    if len(username) > MAX_USERNAME or not username.isascii():
        return None
    match = _ROUTE.fullmatch(username)
    if match is None:
        return None
    user, asset, account = match.groups()
    if ".." in username:
        return None
    return Route(user, asset, account)
