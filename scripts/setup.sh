#!/usr/bin/env bash
# Create ./.venv with adaptune and its stack. Idempotent: a second run with the same pyproject.toml,
# requirements.lock and Python only checks that the stack is there (a second or two); anything else reinstalls.
# CPU machines get the CPU build of torch (pip would otherwise pull a multi-GB CUDA build);
# GPU machines keep whatever CUDA torch they have, or get PyPI's default (CUDA) build.
# Everything else comes at the exact versions of requirements.lock, the ones the tests passed with
# (scripts/lock.sh updates it). On a CPU machine DeepSpeed's communication op is compiled here, once, not
# inside the first trial.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
UV_VERSION=0.13.9  # the installer of the locked stack (pinned too)
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# What the installed environment was made from: the project's requirements and the interpreter.
stamp_file=.venv/.adaptune-setup
stamp="$(cat pyproject.toml requirements.lock; echo "uv $UV_VERSION"; .venv/bin/python -VV)"
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
# pinned, so no resolving: the lock holds every dependency (pip check below says if one is missing).
# uv installs them (about 7x faster than pip here: parallel downloads and unpacking); pip if uv is not at hand.
.venv/bin/pip install --quiet "uv==$UV_VERSION" 2>/dev/null || true
if [ -x .venv/bin/uv ]; then
  .venv/bin/uv pip install --quiet --python .venv/bin/python --no-deps -r requirements.lock -e ".[test]"
else
  .venv/bin/pip install --quiet --no-deps -r requirements.lock
  .venv/bin/pip install --quiet --no-deps -e ".[test]"
fi
.venv/bin/pip check >/dev/null || { .venv/bin/pip check; echo "setup: the installed stack is inconsistent" >&2; exit 1; }
if ! command -v nvidia-smi >/dev/null 2>&1; then  # DeepSpeed's CPU accelerator: its shared-memory op
  DS_ACCELERATOR=cpu .venv/bin/python -c 'from deepspeed.accelerator import get_accelerator
b = get_accelerator().create_op_builder("ShareMemCommBuilder")
b is None or b.load(verbose=False)' >/dev/null 2>&1 || echo "setup: DeepSpeed's CPU op did not build here; the first trial builds it"
fi
.venv/bin/adaptune --help >/dev/null
.venv/bin/python -c 'import torch, ray, deepspeed, peft, transformers, mlflow' >/dev/null 2>&1
printf '%s' "$stamp" > "$stamp_file"
echo "setup: ok ($(.venv/bin/python -c "$versions"))"
