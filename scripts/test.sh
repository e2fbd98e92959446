#!/usr/bin/env bash
# Quick start, command 2: set up everything the tests need and run them all:
# Python and npm dependencies, and (as root) the Debian packages for the real-peer tests;
# then ruff, mypy --strict on the three packages, and pytest. Extra arguments go to pytest.
# With CI=true a skipped test fails the run (tests/conftest.py).
set -euo pipefail
. "$(dirname "$0")/setup.sh"
conduit_setup_debian "$CONDUIT_ROOT/deploy/debian-packages.txt"
conduit_setup_python dev
conduit_setup_npm
cd "$CONDUIT_ROOT"
say "ruff"
"$VENV/bin/ruff" check gateway rbac recordings tests bench
say "mypy --strict"
"$VENV/bin/mypy" gateway rbac recordings
say "pytest"
exec "$VENV/bin/python" -m pytest "$@"
