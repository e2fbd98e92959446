"""Every SSH password is first tried as a connect code: only an answer shaped like one may
reach the database (as a digest), so passwords of any other shape never do."""

from __future__ import annotations

import secrets

import pytest

from gateway.identity.ssh_access import _could_be_code


def test_every_issued_code_has_the_shape() -> None:
    for _ in range(200):  # what issue_connect_code makes
        assert _could_be_code(secrets.token_urlsafe(18))


@pytest.mark.parametrize(
    "answer",
    ["", "correct horse battery staple", "a" * 23, "a" * 25, "a" * 23 + "+", "a" * 23 + "é",
     "123456", "a" * 24 + "\n"],
)  # fmt: skip
def test_other_answers_are_never_looked_up(answer: str) -> None:
    assert not _could_be_code(answer)
