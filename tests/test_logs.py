"""Log lines never carry a query string from a websocket URL (it can hold a one-time ticket)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from gateway.logs import setup_logging


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_websocket_query_strings_are_not_logged(
    fmt: str, restored_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("info", fmt)
    # What uvicorn's websocket protocol logs when a socket is accepted or refused.
    uvicorn = logging.getLogger("uvicorn.error")
    uvicorn.info('%s - "WebSocket %s" [accepted]', "127.0.0.1:5000",
                 "/ws/terminal?ticket=Tk-secret-123&cols=80&rows=24")  # fmt: skip
    uvicorn.info('%s - "WebSocket %s" %d', "127.0.0.1:5000", "/ws/watch/abc?x=Tk-2", 403)
    logging.getLogger("gateway.test").info("kept as is: %s", "/a?b=c")
    err = capsys.readouterr().err
    assert "Tk-secret-123" not in err and "Tk-2" not in err
    assert '"WebSocket /ws/terminal?..." [accepted]' in err.replace('\\"', '"')
    assert "/ws/watch/abc?..." in err
    assert "kept as is: /a?b=c" in err  # only uvicorn's lines are changed
