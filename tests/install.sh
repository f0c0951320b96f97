#!/usr/bin/env bash
# Installs the end-to-end test peers: a Python venv (tests/.venv) with requirements.txt and
# the Node packages from package-lock.json (tests/node_modules). Idempotent: each step is
# skipped while a stamp file records the hash of the input it was last done for.
# Needs python3 (with venv) and node/npm on PATH.
set -euo pipefail
tests="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$tests"

step() { printf 'install.sh: %s\n' "$*"; }
hash_of() { sha256sum "$1" | cut -d' ' -f1; }

venv="$tests/.venv"
if [ -x "$venv/bin/python" ]; then
  step "venv: $venv exists"
else
  step "venv: creating $venv"
  python3 -m venv "$venv"
fi

req_hash="$(hash_of requirements.txt)"
req_stamp="$venv/.requirements.sha256"
if [ -f "$req_stamp" ] && [ "$(cat "$req_stamp")" = "$req_hash" ]; then
  step "pip: requirements.txt unchanged, skipping"
else
  step "pip: installing requirements.txt"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt
  echo "$req_hash" > "$req_stamp"
fi

lock_hash="$(hash_of package-lock.json)"
lock_stamp="$tests/node_modules/.package-lock.sha256"
if [ -f "$lock_stamp" ] && [ "$(cat "$lock_stamp")" = "$lock_hash" ]; then
  step "npm: package-lock.json unchanged, skipping"
else
  step "npm: npm ci"
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
  echo "$lock_hash" > "$lock_stamp"
fi

step "done"
