#!/usr/bin/env bash
# Re-resolve requirements.lock: the newest versions pyproject.toml's floors allow, installed into a scratch
# environment, frozen. torch stays out of the lock (setup.sh installs the CPU or CUDA build that fits the
# machine first; everything else is resolved against the torch that is installed here).
#   bash scripts/lock.sh        then: bash scripts/test.sh, and commit requirements.lock if the suite passes
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$PY" -m venv "$scratch/venv"
"$scratch/venv/bin/pip" install --quiet --upgrade pip
torch=$(.venv/bin/python -c 'from importlib.metadata import version; print(version("torch"))' 2>/dev/null || echo 2.13.0)
"$scratch/venv/bin/pip" install --quiet "torch==$torch"
"$scratch/venv/bin/pip" install --quiet ".[test]"
{
  echo "# Exact versions of adaptune's stack, the ones the test suite passed with (torch excluded: see setup.sh)."
  echo "# Made by scripts/lock.sh on $(date -u +%Y-%m-%d) with $("$scratch/venv/bin/python" -V); pyproject.toml keeps the floors."
  "$scratch/venv/bin/pip" freeze --exclude-editable | grep -viE '^(adaptune|torch)(==| @)'
} > requirements.lock
echo "lock: requirements.lock, $(grep -vc '^#' requirements.lock) packages; now run bash scripts/test.sh"
