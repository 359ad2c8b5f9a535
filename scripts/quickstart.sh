#!/usr/bin/env bash
# The main job end-to-end on the embedded default (local Ray, this machine's CPUs/GPUs, the offline demo
# model and demo company data): set up, build the demo model if absent, run the quickstart sweep.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/adaptune demo-model
.venv/bin/adaptune validate search_spaces/quickstart.yaml
.venv/bin/adaptune sweep search_spaces/quickstart.yaml "$@"
