"""Set-up time on a fresh machine, side by side: the stack resolved by pip from pyproject.toml's floors (how
set-up worked before requirements.lock) against scripts/setup.sh itself (the exact versions of
requirements.lock installed by uv without resolving, then DeepSpeed's CPU op compiled), run in a scratch copy
of the project. Each in a new virtual environment with pip's and uv's caches off and an empty torch-extensions
folder, so nothing is reused from this machine but the package index and its local wheels (the CPU torch wheel
among them).

    .venv/bin/python bench/setup_time.py [--out results.md]

About 6 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
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


def fresh_env(scratch: Path, way: str) -> dict[str, str]:
    return {
        **os.environ,
        "PIP_NO_CACHE_DIR": "1",
        "UV_NO_CACHE": "1",
        "TORCH_EXTENSIONS_DIR": str(scratch / f"{way}-extensions"),
        "DS_ACCELERATOR": "cpu",
    }


def packages(python: Path) -> str:
    freeze = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True, check=True)
    return str(len(freeze.stdout.splitlines()))


def floors(scratch: Path) -> dict[str, float | str]:
    """The stack as pip resolves pyproject.toml's floors; the op build timed apart (the first trial paid it)."""
    venv, env = scratch / "floors", fresh_env(scratch, "floors")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([*pip, "--upgrade", "pip"], env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*pip, TORCH], env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*pip, "-e", ".[test]"], cwd=REPO, env=env, check=True)
    install_s = time.monotonic() - started
    op_s = timed([str(venv / "bin" / "python"), "-c", BUILD_OP], env)
    return {"install_s": install_s, "op_s": op_s, "packages": packages(venv / "bin" / "python")}


def setup_script(scratch: Path) -> dict[str, float | str]:
    """scripts/setup.sh, as a new user runs it, in a scratch copy of the project (its .venv made there)."""
    project = scratch / "project"
    project.mkdir()
    for name in ("pyproject.toml", "requirements.lock", "README.md"):
        shutil.copy2(REPO / name, project / name)
    for name in ("scripts", "platform"):
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = fresh_env(scratch, "lock")
    total_s = timed(["bash", str(project / "scripts" / "setup.sh")], env)
    # the op's build inside that total, measured apart in the same kind of fresh folder
    op_s = timed([str(project / ".venv" / "bin" / "python"), "-c", BUILD_OP], fresh_env(scratch, "op-again"))
    return {
        "install_s": total_s - op_s,
        "op_s": op_s,
        "total_s": total_s,
        "packages": packages(project / ".venv" / "bin" / "python"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the Markdown table here too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="adaptune-setup-") as tmp:
        before = floors(Path(tmp))
        after = setup_script(Path(tmp))
    rows = [
        ("pyproject floors, resolved by pip (before)", before, "inside the first trial", before["install_s"]),
        ("scripts/setup.sh: requirements.lock by uv, no resolving", after, "at set-up", after["total_s"]),
    ]
    lines = [
        "## Set-up time on a fresh machine",
        "",
        "| install | packages | venv + install (s) | DeepSpeed CPU op build (s) | op built | set-up (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r, where, total in rows:
        lines.append(f"| {name} | {r['packages']} | {r['install_s']:.0f} | {r['op_s']:.0f} | {where} | {total:.0f} |")
    lines += [
        "",
        "Fresh virtual environments, pip's and uv's caches off, empty torch-extensions folders; the same package "
        "index and local torch wheel. setup.sh's row is the script's whole run (its op build, shown apart, "
        "measured again after it); before the lock the first trial of the first sweep paid the op build.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
