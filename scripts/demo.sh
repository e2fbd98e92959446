#!/usr/bin/env bash
# Quick start, command 1: set up Conduit and run the demo site on embedded defaults
# (SQLite, local recordings) at http://127.0.0.1:8080. Extra arguments go to `conduit demo`.
set -euo pipefail
. "$(dirname "$0")/setup.sh"
conduit_setup_python
# Browser libraries make the in-browser terminal and desktop work; the demo runs without them.
command -v npm >/dev/null 2>&1 && conduit_setup_npm || say "npm not found: in-browser terminal and desktop disabled"
exec "$VENV/bin/conduit" demo "$@"
