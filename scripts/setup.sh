#!/usr/bin/env bash
# Shared set-up for the two quick-start commands (sourced, not run):
#   conduit_setup_python [EXTRAS]  creates .venv with Python >= 3.11 and installs Conduit and
#                                  exactly the pinned set (requirements[-EXTRAS].lock)
#   conduit_setup_npm              installs the portal's browser libraries (package-lock.json)
#   conduit_setup_debian FILE      installs the Debian packages listed in FILE (root only)
# Every step is idempotent and quick when there is nothing to do.

CONDUIT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$CONDUIT_ROOT/.venv"

say() { printf '==> %s\n' "$*" >&2; }

is_root() { [ "$(id -u)" = 0 ]; }

apt_install() {
  # Install only what is missing, so a prepared machine never touches the network.
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! is_root; then
    say "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"
    return 1
  fi
  say "installing Debian packages: ${missing[*]}"
  # Keep package scripts from starting daemons (e.g. sshd on port 22) while installing.
  local policy=/usr/sbin/policy-rc.d added_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && added_policy=1
  fi
  local rc=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } || rc=$?
  [ "$added_policy" = 1 ] && rm -f "$policy"
  return $rc
}

find_python() {
  local candidate
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  return 1
}

conduit_setup_python() {
  # Installs exactly the pinned set: requirements.lock, or requirements-dev.lock for "dev"
  # (refreshed only by scripts/lock.sh). Every file is checked against its sha256 in the lock,
  # and the venv is rebuilt whenever the lock it was made from changed, so it never holds
  # anything the lock does not list.
  local extras=${1:-}
  local lock="$CONDUIT_ROOT/requirements${extras:+-$extras}.lock"
  local stamp="$VENV/.conduit-lock" want py
  want="$(basename "$lock") $(sha256sum "$lock" | cut -d' ' -f1)"
  local have dev="$CONDUIT_ROOT/requirements-dev.lock"
  have=$(cat "$stamp" 2>/dev/null || true)
  if [ -x "$VENV/bin/python" ]; then
    [ "$have" = "$want" ] && return 0
    # The dev set holds the runtime set at the same versions: good enough for the demo.
    [ -z "$extras" ] && [ "$have" = "$(basename "$dev") $(sha256sum "$dev" | cut -d' ' -f1)" ] && return 0
  fi
  if ! py=$(find_python); then
    apt_install python3 python3-venv || { say "Conduit needs Python >= 3.11"; return 1; }
    py=$(find_python) || { say "Conduit needs Python >= 3.11"; return 1; }
  fi
  rm -rf "$VENV"
  if ! "$py" -m venv "$VENV" 2>/dev/null; then
    rm -rf "$VENV"
    apt_install python3-venv || return 1
    "$py" -m venv "$VENV"
  fi
  say "installing Python dependencies from $(basename "$lock") into $VENV"
  local pip=("$VENV/bin/python" -m pip -q --disable-pip-version-check)
  "${pip[@]}" install --require-hashes --no-deps -r "$lock"
  # Conduit itself, built by the locked setuptools (no build isolation: nothing unpinned).
  "${pip[@]}" install --no-deps --no-build-isolation -e "$CONDUIT_ROOT"
  "${pip[@]}" check >/dev/null
  printf '%s\n' "$want" > "$stamp"
}

conduit_setup_npm() {
  if ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm || return 1
  fi
  # node_modules is stamped with the lock's hash: unchanged lock, nothing to do.
  local stamp="$CONDUIT_ROOT/node_modules/.conduit-lock" want
  want=$(sha256sum "$CONDUIT_ROOT/package-lock.json" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  say "installing browser libraries (npm ci)"
  (cd "$CONDUIT_ROOT" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) || return 1
  printf '%s\n' "$want" > "$stamp"
}

conduit_setup_debian() {
  local list=$1 pkgs=()
  mapfile -t pkgs < <(grep -v '^[[:space:]]*\(#\|$\)' "$list")
  [ ${#pkgs[@]} -eq 0 ] || apt_install "${pkgs[@]}"
}
