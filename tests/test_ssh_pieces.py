"""How the SFTP bridge cuts a client's request for the asset: within the asset's announced
limits, and never into more than MAX_PIECES requests, whatever a (hostile) asset announces."""

from __future__ import annotations

import pytest

from gateway.ssh.files import MAX_PIECES, _piece


@pytest.mark.parametrize(
    "announced,size,expected",
    [
        (261_120, 4 << 20, 261_120),  # OpenSSH's sftp-server, asyncssh's 4 MiB request
        (261_120, 1000, 261_120),
        (16_384, 256 << 10, 16_384),  # an asset that announces nothing: asyncssh's 16 KiB
        (1, 256 << 10, 4096),  # a hostile asset: 64 pieces, not 262,144
        (0, 100, 2),
        (0, 0, 1),
    ],
)
def test_pieces(announced: int, size: int, expected: int) -> None:
    step = _piece(announced, size)
    assert step == expected
    assert -(-size // step) <= MAX_PIECES
