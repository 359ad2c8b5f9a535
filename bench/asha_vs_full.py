"""ASHA against training every configuration to the full budget, on the same grid of configurations of the
demo model, side by side in one run; trial start-up (trial start to first optimizer step) by concurrency; and
what each sweep's driver costs per trial (MLflow calls, driver memory), for sizing. Prints Markdown tables.

    .venv/bin/python bench/asha_vs_full.py [--steps 40] [--eval-every 5]

Target: ASHA's best eval_loss within 2% of the full search's, using at most 40% of its training steps.
Runs on this machine's local Ray (one 2-worker trial at a time on 2 CPUs): about 30 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import collections
import functools
import inspect
import itertools
import json
import random
import sys
import tempfile
import threading
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# 12 configurations: 3 ranks x 2 target sets x 2 learning rates.
SPACE = {
    "lora.r": {"grid": [4, 8, 16]},
    "lora.target_modules": {"grid": ["attention", "all-linear"]},
    "train.learning_rate": {"grid": [1.0e-3, 4.0e-3]},
}

# The Markdown goes to stdout, or with --out to a file, which leaves stdout to library and Ray logs.
OUT = sys.stdout


def md(*lines: str) -> None:
    print(*lines, file=OUT, flush=True)


class DriverLoad:
    """What one sweep's driver process does per trial: MLflow tracking and registry store calls (against an
    `mlflow server` each is one REST request; here the embedded store takes them in-process) and artifact
    uploads, counted at the store classes; its resident memory, sampled every 0.2 s; and the peak resident memory
    of each kind of Ray actor process (a trial's Tune function, Train controller, placement-group cleaner,
    workers), sampled every second."""

    loads: list[tuple[str, int, DriverLoad]] = []

    def __enter__(self) -> DriverLoad:
        import psutil
        from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
        from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore

        self.calls: collections.Counter[str] = collections.Counter()
        self.actors: collections.Counter[str] = collections.Counter()  # Ray actor class -> peak RSS
        self._depth = threading.local()
        self._saved = []
        for kind, cls, names in (
            ("tracking", TrackingStore, None),
            ("registry", RegistryStore, None),
            ("upload", LocalArtifactRepository, ("log_artifact", "log_artifacts")),
        ):
            for name, fn in inspect.getmembers(cls, inspect.isfunction):
                if name.startswith("_") or (names and name not in names):
                    continue
                self._saved.append((cls, name, cls.__dict__.get(name)))
                setattr(cls, name, self._counted(kind, fn))
        self._proc = psutil.Process()
        self.rss_start = self.rss_peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self

    def _counted(self, kind: str, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            depth = getattr(self._depth, "n", 0)
            if depth == 0:  # a store method calling another is still one request
                self.calls[kind] += 1
            self._depth.n = depth + 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth.n = depth

        return wrapper

    def _sample(self) -> None:
        import psutil

        tick = 0
        while not self._stop.wait(0.2):
            self.rss_peak = max(self.rss_peak, self._proc.memory_info().rss)
            tick += 1
            if tick % 5:
                continue
            for proc in psutil.process_iter(["cmdline", "memory_info"]):
                title = (proc.info["cmdline"] or [""])[0]
                if title.startswith("ray::") and proc.info["memory_info"]:
                    kind = title.removeprefix("ray::").split(".")[0].split()[0]
                    self.actors[kind] = max(self.actors[kind], proc.info["memory_info"].rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._sampler.join()
        for cls, name, original in self._saved:
            if original is None:
                delattr(cls, name)
            else:
                setattr(cls, name, original)


def run(
    work: Path,
    name: str,
    model: Path,
    steps: int,
    eval_every: int,
    scheduler: str,
    space: dict = SPACE,
    concurrent: int | None = None,
    points: list[dict] | None = None,
):
    from adaptune.driver.run import run_sweep

    cfg = yaml.safe_load((REPO / "search_spaces" / "quickstart.yaml").read_text())
    cfg.update(name=name)
    cfg["model"]["path"] = str(model)
    cfg["data"]["path"] = str(REPO / "data" / "demo" / "company_faq.jsonl")
    cfg["train"].update(max_steps=steps, eval_every=eval_every)
    cfg["search"] = {
        # The configurations in a given order: each point once, drawn from the same values.
        "space": {k: {"choice": v["grid"]} for k, v in space.items()} if points else space,
        "algorithm": "random" if points else "grid",
        "num_samples": len(points) if points else 1,
        "points_to_evaluate": points or [],
        "scheduler": scheduler,
        "asha": {"grace_period": 1, "reduction_factor": 3},
        "max_concurrent_trials": concurrent,
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with DriverLoad() as load:
        _, outcome = run_sweep(str(path), None, [f"cluster.storage_path={work / 'runs'}"])
    DriverLoad.loads.append((name, len(outcome.rows), load))
    return outcome


def first_step_seconds(outcome) -> list[float]:
    """Per trial: seconds from the trial's launch to its first optimizer step (worker start + data + model +
    DeepSpeed init), read from each trial's trainer state."""
    out = []
    for row in outcome.rows:
        if not row["adapter"]:
            continue
        state = json.loads((Path(row["adapter"]).parent / "trainer_state.json").read_text())
        s = state["startup"][0]
        out.append(s["worker_start_s"] + s["data_load_s"] + s["model_load_s"] + s["deepspeed_init_s"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=45)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument(
        "--part",
        choices=["all", "asha", "startup"],
        default="all",
        help="asha: the search comparison (steps and losses, not times); startup: the timings, "
        "which need the machine to themselves",
    )
    parser.add_argument("--out", help="write the Markdown to this file instead of stdout")
    args = parser.parse_args()
    global OUT
    if args.out:
        OUT = open(args.out, "w", encoding="utf-8")  # noqa: SIM115 - open until the process ends

    from adaptune.demo.build import build_demo_model

    work = Path(tempfile.mkdtemp(prefix="adaptune-bench-asha-"))
    model = build_demo_model(work / "model")
    if args.part in ("all", "asha"):
        compare_searches(work, model, args.steps, args.eval_every)
    if args.part in ("all", "startup"):
        startup_by_concurrency(work, model)
    driver_load()


def driver_load() -> None:
    """Per sweep: MLflow calls and driver memory, overall and per trial."""
    mb = 2**20
    md("\n## The sweep driver's load per trial\n")
    md(
        "| sweep | trials | MLflow tracking calls (per trial) | registry calls | artifact uploads (per trial) | "
        "driver RSS at start, MB | peak, MB |"
    )
    md("|---|---|---|---|---|---|---|")
    for name, trials, load in DriverLoad.loads:
        c = load.calls
        md(
            f"| {name} | {trials} | {c['tracking']} ({c['tracking'] / trials:.0f}) | {c['registry']} | "
            f"{c['upload']} ({c['upload'] / trials:.1f}) | {load.rss_start / mb:.0f} | {load.rss_peak / mb:.0f} |"
        )
    peaks: collections.Counter[str] = collections.Counter()
    for _, _, load in DriverLoad.loads:
        for kind, rss in load.actors.items():
            peaks[kind] = max(peaks[kind], rss)
    md("\n| Ray actor process | peak RSS, MB |")
    md("|---|---|")
    for kind, rss in sorted(peaks.items(), key=lambda kv: -kv[1]):
        md(f"| {kind} | {rss / mb:.0f} |")


def compare_searches(work: Path, model: Path, steps: int, eval_every: int) -> None:
    """The full search, then ASHA over the same configurations twice: in grid order, and in a seeded shuffle.
    One trial runs at a time, so ASHA judges each trial only against those before it: the order matters."""
    grid = [dict(zip(SPACE, values, strict=True)) for values in itertools.product(*(v["grid"] for v in SPACE.values()))]
    shuffled = grid[:]
    random.Random(0).shuffle(shuffled)
    full = run(work, "full", model, steps, eval_every, "none")
    searches = {
        "ASHA, grid order": run(work, "asha", model, steps, eval_every, "asha"),
        "ASHA, shuffled order": run(work, "asha-shuffled", model, steps, eval_every, "asha", points=shuffled),
    }
    steps_full = sum(r["steps"] or 0 for r in full.rows)
    best_full = full.winner["eval_loss"]
    md(
        f"## ASHA vs full search ({len(full.rows)} configurations, {steps} steps each, evaluation every "
        f"{eval_every}; ASHA grace 1 round, reduction factor 3; one trial at a time)\n"
    )
    md("| search | trials | training steps | share of the full search's steps | best eval_loss | gap | winner |")
    md("|---|---|---|---|---|---|---|")
    md(
        f"| every configuration to the full budget | {len(full.rows)} | {steps_full} | 100% | {best_full:.4f} | | "
        f"{_config(full.winner)} |"
    )
    for name, outcome in searches.items():
        used = sum(r["steps"] or 0 for r in outcome.rows)
        best = outcome.winner["eval_loss"]
        md(
            f"| {name} | {len(outcome.rows)} | {used} | **{100 * used / steps_full:.0f}%** | {best:.4f} | "
            f"**{100 * (best - best_full) / best_full:+.2f}%** | {_config(outcome.winner)} |"
        )
    md("\nTarget: within 2% of the full search's best eval_loss with at most 40% of its steps.\n")


def _config(row: dict) -> str:
    return ", ".join(f"{k.split('.')[-1]}={row[k]}" for k in SPACE)


def startup_by_concurrency(work: Path, model: Path) -> None:
    """n trials at once on a local Ray with 2n logical CPUs: trial start to first optimizer step."""
    import ray

    from adaptune.driver.run import start_local_ray

    md("| trials at once | trials | trial start to first optimizer step, mean s | max s |")
    md("|---|---|---|---|")
    for n in (1, 2, 4):
        ray.shutdown()
        start_local_ray(num_cpus=2 * n, log_to_driver=False)
        outcome = run(
            work, f"startup-{n}", model, 5, 5, "none", space={"lora.r": {"grid": [4, 8, 16, 32]}}, concurrent=n
        )
        secs = first_step_seconds(outcome)
        md(f"| {n} | {len(secs)} | {sum(secs) / len(secs):.1f} | {max(secs):.1f} |")
    md(
        "\n(2 physical cores: at 2 and 4 trials at once the workers share the same two cores, so start-up "
        "time measures contention as much as Ray's scheduling.)"
    )


if __name__ == "__main__":
    main()
