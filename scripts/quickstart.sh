#!/usr/bin/env bash
# The main job end-to-end on the embedded default (local Ray, this machine's CPUs/GPUs, local MLflow store,
# the offline demo model and demo company data): set up, build the demo model if absent, run the quickstart
# sweep (every trial tracked in MLflow, the winner registered as `quickstart`), then merge the registry's
# @champion into a standalone model. Extra key=value arguments override the sweep (and cluster.* the profile).
# MERGED_DIR (default: merged-model) is where the merged model goes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/adaptune demo-model
.venv/bin/adaptune validate search_spaces/quickstart.yaml "$@"
.venv/bin/adaptune sweep search_spaces/quickstart.yaml "$@"
cluster_overrides=()
for arg in "$@"; do
  case "$arg" in cluster.*) cluster_overrides+=("$arg") ;; esac
done
.venv/bin/adaptune merge quickstart@champion --out "${MERGED_DIR:-merged-model}" --overwrite \
  ${cluster_overrides[@]+"${cluster_overrides[@]}"}
