"""The approver's request page in process: a decision asked for a fresh code stays the
decision the approver chose (SQLite and PostgreSQL, ``api`` fixture of ``test_api_access``).
The real-browser flow is in ``test_portal_requests``."""

from __future__ import annotations

import re

from tests.test_api_access import Api, api, make_request
from tests.test_identity_helpers import env

__all__ = ["api", "env"]
FORM = re.compile(r'<form method="post" action="([^"]+)"')


async def test_deny_asked_for_a_code_stays_a_denial(api: Api) -> None:
    alice, bob = await api.login("alice"), await api.login("bob")
    rid = (await make_request(api, alice))["id"]
    api.env.clock.advance(6 * 60)  # bob's second factor is now older than the step-up limit
    asked = await bob.client.post(
        f"/requests/{rid}/deny", data={"comment": "not this week", "csrf_token": bob.csrf}
    )
    assert asked.status_code == 200 and 'name="code"' in asked.text
    # The form that takes the code can only deny: pressing Enter cannot approve.
    assert FORM.findall(asked.text) == [f"/requests/{rid}/deny"]
    assert "/approve" not in asked.text and "formaction" not in asked.text
    done = await bob.client.post(
        f"/requests/{rid}/deny",
        data={"comment": "not this week", "code": api.code("bob"), "csrf_token": bob.csrf},
    )
    assert done.status_code == 303
    shown = await bob.client.get(done.headers["location"])
    assert "Denied." in shown.text
    after = await alice.client.get(f"/api/v1/requests/{rid}")
    assert after.json()["state"] == "denied"


async def test_approve_needs_no_code_when_recent_and_says_so(api: Api) -> None:
    alice, bob = await api.login("alice"), await api.login("bob")
    rid = (await make_request(api, alice))["id"]
    page = await bob.client.get(f"/requests/{rid}")
    assert FORM.findall(page.text) == [f"/requests/{rid}/approve"]  # deny via formaction
    done = await bob.client.post(f"/requests/{rid}/approve", data={"csrf_token": bob.csrf})
    assert done.status_code == 303
    assert "Approved." in (await bob.client.get(done.headers["location"])).text
    # A crafted notice on another URL says nothing.
    assert "Approved." not in (await bob.client.get(f"/requests/{rid}?done=nonsense")).text
