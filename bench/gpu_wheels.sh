#!/usr/bin/env bash
# The packages bench/gpu_check.py needs on a GPU machine that has torch, transformers and peft but not the rest
# of adaptune's stack, as wheels in ./.whl (about 10 MB): pydantic (adaptune's schema), DeepSpeed (a pure-Python
# wheel built here; its ops compile on first use there) and bitsandbytes cut down to its CUDA 13 library (the
# full wheel carries one per CUDA version). Versions from requirements.lock; Python 3.12, x86_64 (the GPU image).
#   bash bench/gpu_wheels.sh            then, on the GPU machine, from the repository root:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site \
#     python3 bench/gpu_check.py
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA=${CUDA:-130}  # the bitsandbytes library kept: libbitsandbytes_cuda$CUDA.so
out=.whl
rm -rf "$out" && mkdir -p "$out"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
pin() { grep -i "^$1==" requirements.lock | head -1; }
pip=".venv/bin/python -m pip"
$pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64 \
  -d "$out" "$(pin pydantic)" "$(pin pydantic_core)" "$(pin annotated-types)" "$(pin typing-inspection)" \
  "$(pin hjson)" "$(pin bitsandbytes)"
DS_BUILD_OPS=0 $pip wheel -q --no-deps --no-build-isolation -w "$out" "$(pin deepspeed)"
# bitsandbytes: keep its CUDA $CUDA library and the CPU one, drop the others (and fix the wheel's RECORD)
bnb=$(ls "$out"/bitsandbytes-*.whl)
.venv/bin/python - "$bnb" "$CUDA" <<'EOF'
import sys, zipfile, re, os
path, cuda = sys.argv[1], sys.argv[2]
keep = lambda n: not re.search(r"libbitsandbytes_(cuda|rocm|xpu)\d*", n) or f"libbitsandbytes_cuda{cuda}." in n
tmp = path + ".tmp"
with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
    for item in src.infolist():
        if not keep(item.filename):
            continue
        data = src.read(item)
        if item.filename.endswith("RECORD"):
            data = "".join(l for l in data.decode().splitlines(True) if keep(l.split(",")[0])).encode()
        dst.writestr(item, data)
os.replace(tmp, path)
EOF
du -sh "$out"; ls "$out"
