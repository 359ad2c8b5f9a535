"""Run every benchmark, keep each one's Markdown in bench/results/<name>.md (headed by when, at which commit and
on what machine it was measured), and regenerate the generated part of docs/benchmarks.md from those files.

    .venv/bin/python bench/run_all.py [--only memory,data_scale] [--no-docs | --docs-only]

A bench that fails keeps its previous results file; the docs section is rebuilt from every results file
present, so benches can be re-run one at a time. The benches that start Ray (overhead, asha_vs_full, memory)
need the host's Ray to themselves. All of them: about 1.7 hours on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DOCS = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

# The order docs/benchmarks.md shows them in; each is `bench/<name>.py`, run with its defaults.
BENCHES = ("overhead", "goodput", "asha_vs_full", "memory", "data_scale", "mlflow_load", "setup_time")


def machine() -> str:
    """Cores, memory and GPUs of this machine, in a few words."""
    import psutil

    gpus = "no GPU"
    if shutil.which("nvidia-smi"):
        r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        found = [line.split(" (")[0] for line in r.stdout.splitlines() if line.startswith("GPU")]
        gpus = ", ".join(found) or gpus
    ram = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} CPU cores ({platform.machine()}), {ram:.0f} GB RAM, {gpus}"


def commit() -> str:
    """The checked-out commit, and whether the code the benches run differs from it."""
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "platform", "bench"], cwd=REPO, capture_output=True, text=True
    )
    changed = [line for line in dirty.stdout.splitlines() if not line[3:].startswith("bench/results")]
    return sha.stdout.strip() + (" with uncommitted changes" if changed else "")


def run_bench(name: str) -> str | None:
    """Run `bench/<name>.py --out <file>`: its Markdown, or None when it failed. Its logs (and Ray's, and the
    libraries' it imports) go to our stdout and stderr; only what it writes to --out is kept."""
    started = time.monotonic()
    print(f"run_all: {name} ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{name}.md"
        r = subprocess.run([sys.executable, str(REPO / "bench" / f"{name}.py"), "--out", str(out)], cwd=REPO)
        markdown = out.read_text(encoding="utf-8") if out.is_file() else ""
    minutes = (time.monotonic() - started) / 60
    if r.returncode != 0 or not markdown.strip():
        print(f"run_all: {name} failed (exit {r.returncode}) after {minutes:.1f} min", file=sys.stderr)
        return None
    print(f"run_all: {name} done in {minutes:.1f} min", file=sys.stderr)
    return markdown


def results_file(name: str, markdown: str, header: str) -> Path:
    """Write one bench's Markdown under its header line."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(f"{header}\n\n{markdown.strip()}\n", encoding="utf-8")
    return path


def section() -> str:
    """docs/benchmarks.md's generated section: every results file present, in bench order (others after, by name)."""
    files = sorted(RESULTS.glob("*.md"), key=lambda p: (BENCHES.index(p.stem) if p.stem in BENCHES else 99, p.stem))
    text = "\n\n".join(p.read_text(encoding="utf-8").strip() for p in files)
    # Results files head their tables with `##`; under docs/benchmarks.md's `## Results` they are subsections.
    return "\n".join("#" + line if line.startswith("## ") else line for line in text.splitlines())


def rewrite_section(text: str, content: str) -> str:
    """`text` with everything between the benchmark markers replaced by `content`; the rest untouched.

    Raises:
        ValueError: the markers are missing, repeated or out of order, naming the file fix.
    """
    begin, end = text.count(BEGIN), text.count(END)
    if begin != 1 or end != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(
            f"docs/benchmarks.md must hold {BEGIN} once, followed by {END} once (found {begin} and {end}"
            f"{', in the wrong order' if begin == end == 1 else ''}). Put them around the generated part of "
            "its Results section"
        )
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{content.strip()}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated subset of: {','.join(BENCHES)}")
    docs = parser.add_mutually_exclusive_group()
    docs.add_argument("--no-docs", action="store_true", help="write results files only")
    docs.add_argument("--docs-only", action="store_true", help="run nothing; rebuild docs/benchmarks.md's section")
    args = parser.parse_args()
    names = [] if args.docs_only else args.only.split(",") if args.only else list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown bench {', '.join(unknown)}; choose from {', '.join(BENCHES)}")

    failed = []
    for name in names:
        header = (
            f"<!-- bench/results/{name}.md, kept by bench/run_all.py -->\n"
            f"*`bench/{name}.py`, measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} at commit "
            f"{commit()} on {machine()}.*"
        )
        markdown = run_bench(name)
        if markdown is None:
            failed.append(name)
        else:
            print(f"run_all: wrote {results_file(name, markdown, header).relative_to(REPO)}", file=sys.stderr)
    if not args.no_docs:
        DOCS.write_text(rewrite_section(DOCS.read_text(encoding="utf-8"), section()), encoding="utf-8")
        print(
            f"run_all: {DOCS.relative_to(REPO)} benchmark section rebuilt from {RESULTS.relative_to(REPO)}/",
            file=sys.stderr,
        )
    if failed:
        print(f"run_all: failed: {', '.join(failed)} (their previous results were kept)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
