#!/usr/bin/env bash
# The test suite, in three tiers (docs/testing.md says what each needs and covers, and how long each takes):
#   unit         no Ray, no server, no training run: the package's functions and the CLI's refusals
#   integration  a real local Ray cluster, real DeepSpeed (CPU, gloo), real bitsandbytes 4-bit, a real MLflow
#                server on PostgreSQL
#   system       the quickstart script, `ray job submit` on a two-node cluster, faults, hostile input
#
#   bash scripts/test.sh                    the whole suite (what CI runs)
#   bash scripts/test.sh --fast             the unit tier only (pytest -m unit), a few minutes on 2 cores
#   bash scripts/test.sh -m integration     one tier; every other argument goes to pytest as it is
#   bash scripts/test.sh --fast -k merge -x
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
for arg in "$@"; do
  if [ "$arg" = --fast ]; then args+=(-m unit); else args+=("$arg"); fi
done
bash scripts/setup.sh
export TOKENIZERS_PARALLELISM=false
.venv/bin/python -m pytest tests ${args[@]+"${args[@]}"}
