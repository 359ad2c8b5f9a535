"""Set-up time on a fresh machine, side by side: the stack resolved by pip from pyproject.toml's floors (how
set-up worked before requirements.lock) against scripts/setup.sh's way (the exact versions of
requirements.lock, installed without resolving, then DeepSpeed's CPU op compiled). Each in a new virtual
environment with pip's cache off and an empty torch-extensions folder, so nothing is reused from this machine
but the package index and its local wheels (the CPU torch wheel among them).

    .venv/bin/python bench/setup_time.py [--out results.md]

About 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"
BUILD_OP = (
    "from deepspeed.accelerator import get_accelerator\n"
    "b = get_accelerator().create_op_builder('ShareMemCommBuilder')\n"
    "b.load(verbose=False)\n"
)


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.monotonic() - started


def install(way: str, scratch: Path) -> dict[str, float | str]:
    """One fresh environment the given way: seconds for the venv and pip, for the op build, and packages."""
    venv = scratch / way
    env = {
        **os.environ,
        "PIP_NO_CACHE_DIR": "1",
        "TORCH_EXTENSIONS_DIR": str(scratch / f"{way}-extensions"),
        "DS_ACCELERATOR": "cpu",
    }
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([*pip, "--upgrade", "pip"], env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*pip, TORCH], env=env, check=True, stdout=subprocess.DEVNULL)
    if way == "lock":
        subprocess.run([*pip, "--no-deps", "-r", "requirements.lock"], cwd=REPO, env=env, check=True)
        subprocess.run([*pip, "--no-deps", "-e", ".[test]"], cwd=REPO, env=env, check=True)
    else:
        subprocess.run([*pip, "-e", ".[test]"], cwd=REPO, env=env, check=True)
    pip_s = time.monotonic() - started
    op_s = timed([str(venv / "bin" / "python"), "-c", BUILD_OP], env)
    freeze = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True, text=True)
    return {"pip_s": pip_s, "op_s": op_s, "packages": str(len(freeze.stdout.splitlines()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the Markdown table here too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="adaptune-setup-") as tmp:
        floors = install("floors", Path(tmp))
        lock = install("lock", Path(tmp))
    rows = [
        ("pyproject floors, resolved by pip (before)", floors, "inside the first trial", floors["pip_s"]),
        ("requirements.lock, no resolving (scripts/setup.sh)", lock, "at set-up", lock["pip_s"] + lock["op_s"]),
    ]
    lines = [
        "## Set-up time on a fresh machine",
        "",
        "| install | packages | venv + pip (s) | DeepSpeed CPU op build (s) | op built | set-up (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r, where, total in rows:
        lines.append(f"| {name} | {r['packages']} | {r['pip_s']:.0f} | {r['op_s']:.0f} | {where} | {total:.0f} |")
    lines += [
        "",
        "Fresh virtual environments, pip's cache off, an empty torch-extensions folder; the same package index. "
        "The op build is timed in both; before the lock the first trial of the first sweep paid it.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
