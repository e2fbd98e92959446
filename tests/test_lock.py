"""The environment the tests run in is exactly the pinned set in requirements-dev.lock.

scripts/setup.sh installs only from the lock files; this catches a venv that drifted (a
package installed by hand, an upgrade) and a lock that no longer satisfies pyproject.toml.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", re.MULTILINE)


def _pins(name: str) -> dict[str, str]:
    text = (ROOT / name).read_text()
    return {canonicalize_name(m[1]): m[2] for m in PIN.finditer(text)}


def _installed() -> dict[str, str]:
    found = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    # pip comes with the venv; Conduit itself is the editable project, not a dependency.
    found.pop("pip", None)
    found.pop("conduit-gateway", None)
    return found


def test_installed_set_is_the_dev_lock() -> None:
    assert _installed() == _pins("requirements-dev.lock")


def test_every_lock_line_carries_hashes() -> None:
    for name in ("requirements.lock", "requirements-dev.lock"):
        blocks = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / name).read_text())
        pinned = [b for b in blocks if PIN.match(b)]
        assert pinned, name
        for block in pinned:
            assert "--hash=sha256:" in block, f"{name}: {block.splitlines()[0]} has no hash"


def test_runtime_lock_is_the_dev_lock_without_dev_tools() -> None:
    runtime, dev = _pins("requirements.lock"), _pins("requirements-dev.lock")
    assert runtime.items() <= dev.items()
    for tool in ("pytest", "mypy", "ruff", "hypothesis"):
        assert tool in dev and tool not in runtime


def test_locks_satisfy_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime, dev = _pins("requirements.lock"), _pins("requirements-dev.lock")
    wanted = [(runtime, r) for r in project["dependencies"]]
    wanted += [(dev, r) for r in project["optional-dependencies"]["dev"]]
    for pins, line in wanted:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, f"{name} missing from a lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]}"
