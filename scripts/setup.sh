#!/usr/bin/env bash
# Create ./.venv with adaptune and its stack. Idempotent: a second run only checks.
# CPU machines get the CPU build of torch (pip would otherwise pull a multi-GB CUDA build);
# GPU machines keep whatever CUDA torch they have, or get PyPI's default (CUDA) build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    .venv/bin/pip install --quiet torch
  else
    .venv/bin/pip install --quiet "torch==2.13.0"
  fi
fi
.venv/bin/pip install --quiet -e ".[test]"
.venv/bin/adaptune --help >/dev/null
echo "setup: ok ($(.venv/bin/python -c 'import torch, ray, deepspeed, peft, transformers; print(f"torch {torch.__version__}, ray {ray.__version__}, deepspeed {deepspeed.__version__}, peft {peft.__version__}, transformers {transformers.__version__}")' 2>/dev/null))"
