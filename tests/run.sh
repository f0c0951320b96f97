#!/usr/bin/env bash
# Runs the end-to-end test suite from the repository root; arguments go to pytest
# (test paths among them replace the default "tests"). Needs tests/install.sh to have run,
# and the exporter binary (target/debug/kinesis-exporter or $KINESIS_EXPORTER_BIN).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# tests/k8s needs a Kubernetes control plane and runs on its own (see tests/k8s/README.md).
paths=(tests --ignore=tests/k8s)
for arg in "$@"; do
  if [[ "$arg" != -* && -e "${arg%%::*}" ]]; then paths=(); break; fi
done
exec tests/.venv/bin/python -m pytest -q -p no:cacheprovider "${paths[@]}" "$@"
