"""Site-wide role capabilities: the one table front ends ask instead of comparing role names."""

from __future__ import annotations

import pytest

from rbac.roles import SiteAction, role_allows

S = SiteAction


@pytest.mark.parametrize(
    "roles,action,allowed",
    [
        (["admin"], S.SEE_ALL_REQUESTS, True),
        (["admin"], S.SEE_ALL_SESSIONS, True),
        (["admin"], S.ANY_ASSET, True),
        (["admin"], S.MANAGE_GRANTS, True),
        (["admin"], S.MANAGE_USERS, True),
        (["approver"], S.MANAGE_USERS, False),
        (["auditor"], S.MANAGE_USERS, False),
        (["approver"], S.SEE_ALL_REQUESTS, True),
        (["approver"], S.SEE_ALL_SESSIONS, False),
        (["approver"], S.ANY_ASSET, False),
        (["approver"], S.MANAGE_GRANTS, False),
        (["auditor"], S.SEE_ALL_REQUESTS, True),
        (["auditor"], S.SEE_ALL_SESSIONS, True),
        (["auditor"], S.ANY_ASSET, False),
        (["auditor"], S.MANAGE_GRANTS, False),
        (["vendor"], S.SEE_ALL_REQUESTS, False),
        (["vendor"], S.SEE_ALL_SESSIONS, False),
        ([], S.SEE_ALL_REQUESTS, False),
        (["Admin"], S.MANAGE_GRANTS, False),  # names are exact
        (["superuser"], S.ANY_ASSET, False),  # an unknown role carries nothing
        (["vendor", "auditor"], S.SEE_ALL_SESSIONS, True),
        # What the portal offers each role (home page, menu).
        (["vendor"], S.USE_ASSETS, True),
        (["vendor"], S.DECIDE_REQUESTS, False),
        (["vendor"], S.READ_EVIDENCE, False),
        (["approver"], S.DECIDE_REQUESTS, True),
        (["approver"], S.USE_ASSETS, False),
        (["approver"], S.READ_EVIDENCE, False),
        (["auditor"], S.READ_EVIDENCE, True),
        (["auditor"], S.DECIDE_REQUESTS, False),
        (["auditor"], S.USE_ASSETS, False),
        (["admin"], S.DECIDE_REQUESTS, True),
        (["admin"], S.READ_EVIDENCE, True),
        (["admin"], S.USE_ASSETS, True),
    ],
)
def test_role_capabilities(roles: list[str], action: SiteAction, allowed: bool) -> None:
    assert role_allows(roles, action) is allowed
