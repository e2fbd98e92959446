"""Fixtures for the recordings tests: every recording test runs for format 1 and format 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from recording_helpers import Env, make_env


@pytest.fixture(params=[1, 2], ids=["v1", "v2"])
def format_version(request: pytest.FixtureRequest) -> int:
    """The container format a test writes (1: the previous release's, still read; 2: new)."""
    return int(request.param)


@pytest.fixture
def env(tmp_path: Path, format_version: int) -> Env:
    return make_env(tmp_path, format_version)
