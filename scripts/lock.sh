#!/usr/bin/env bash
# Refresh the pinned dependency set from pyproject.toml (the one documented command):
#   ./scripts/lock.sh            newest versions pyproject.toml allows
#   ./scripts/lock.sh -P NAME    move one package only (pip-compile's --upgrade-package)
# Writes requirements-dev.lock (runtime + dev extras + build backend) and requirements.lock
# (runtime + build backend, at the same versions), each with the sha256 of every file PyPI
# has for that version. The setup scripts install only from these files, so every fresh
# machine and CI get the same versions; review the diff like code, then run scripts/test.sh.
set -euo pipefail
. "$(dirname "$0")/setup.sh"
cd "$CONDUIT_ROOT"
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
py=$(find_python) || { say "needs Python >= 3.11"; exit 1; }
"$py" -m venv "$tools"
"$tools/bin/python" -m pip install -q --disable-pip-version-check "pip-tools==7.7.0"
export CUSTOM_COMPILE_COMMAND="./scripts/lock.sh"
compile() {
  "$tools/bin/pip-compile" -q --generate-hashes --allow-unsafe --strip-extras --all-build-deps \
    --no-emit-index-url --no-emit-find-links "$@" pyproject.toml
}
upgrade=(--upgrade)
if [ "${1:-}" = "-P" ]; then upgrade=(--upgrade-package "$2"); fi
say "resolving requirements-dev.lock"
compile "${upgrade[@]}" --extra dev --output-file requirements-dev.lock
say "resolving requirements.lock (same versions, runtime only)"
rm -f requirements.lock
compile --constraint requirements-dev.lock --output-file requirements.lock
say "done: review 'git diff requirements*.lock', then run ./scripts/test.sh"
