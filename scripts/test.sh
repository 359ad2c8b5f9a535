#!/usr/bin/env bash
# The whole test suite: unit tests, then integration tests on a real local Ray cluster with real DeepSpeed
# (CPU, gloo) and real bitsandbytes 4-bit. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TOKENIZERS_PARALLELISM=false
.venv/bin/python -m pytest tests "$@"
