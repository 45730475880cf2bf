#!/usr/bin/env bash
# End-to-end test on a throwaway kind cluster (needs Docker, kind, kubectl, helm and
# `make install`). `tools/e2e-kind.sh --help` lists the options; --keep leaves the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
if [[ ! -x "$python" ]]; then
  echo "tools/e2e-kind.sh: $python not found: run \`make install\` first" >&2
  exit 2
fi
exec "$python" tools/e2e_kind.py "$@"
