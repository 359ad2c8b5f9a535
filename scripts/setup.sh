#!/usr/bin/env bash
# Create ./.venv with adaptune and its stack. Idempotent: a second run with the same pyproject.toml and Python
# only checks that the stack is there (a second or two); anything else reinstalls.
# CPU machines get the CPU build of torch (pip would otherwise pull a multi-GB CUDA build);
# GPU machines keep whatever CUDA torch they have, or get PyPI's default (CUDA) build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# What the installed environment was made from: the project's requirements and the interpreter.
stamp_file=.venv/.adaptune-setup
stamp="$(cat pyproject.toml; .venv/bin/python -VV)"
stamp=$(printf '%s' "$stamp" | sha256sum | cut -d' ' -f1)
versions='from importlib.metadata import version as v; print(", ".join(f"{p} {v(p)}" for p in ("torch", "ray", "deepspeed", "peft", "transformers", "mlflow")))'
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] && .venv/bin/python -c "import adaptune, torch" 2>/dev/null; then
  echo "setup: ok, unchanged ($(.venv/bin/python -c "$versions"))"
  exit 0
fi
rm -f "$stamp_file"
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
.venv/bin/python -c 'import torch, ray, deepspeed, peft, transformers, mlflow' 2>/dev/null
printf '%s' "$stamp" > "$stamp_file"
echo "setup: ok ($(.venv/bin/python -c "$versions"))"
