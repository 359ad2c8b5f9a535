"""ASHA against training every configuration to the full budget, on the same grid of configurations of the
demo model, side by side in one run; and trial start-up (trial start to first optimizer step) by concurrency.
Prints Markdown tables.

    .venv/bin/python bench/asha_vs_full.py [--steps 40] [--eval-every 5]

Target: ASHA's best eval_loss within 2% of the full search's, using at most 40% of its training steps.
Runs on this machine's local Ray (one 2-worker trial at a time on 2 CPUs); about 25 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# 12 configurations: 3 ranks x 2 target sets x 2 learning rates.
SPACE = {
    "lora.r": {"grid": [4, 8, 16]},
    "lora.target_modules": {"grid": ["attention", "all-linear"]},
    "train.learning_rate": {"grid": [1.0e-3, 4.0e-3]},
}


def run(
    work: Path,
    name: str,
    model: Path,
    steps: int,
    eval_every: int,
    scheduler: str,
    space: dict = SPACE,
    concurrent: int | None = None,
):
    from adaptune.driver import run_sweep

    cfg = yaml.safe_load((REPO / "search_spaces" / "quickstart.yaml").read_text())
    cfg.update(name=name)
    cfg["model"]["path"] = str(model)
    cfg["data"]["path"] = str(REPO / "data" / "demo" / "company_faq.jsonl")
    cfg["train"].update(max_steps=steps, eval_every=eval_every)
    cfg["search"] = {
        "space": space,
        "algorithm": "grid",
        "num_samples": 1,
        "scheduler": scheduler,
        "asha": {"grace_period": 1, "reduction_factor": 3},
        "max_concurrent_trials": concurrent,
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    _, outcome = run_sweep(str(path), None, [f"cluster.storage_path={work / 'runs'}"])
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
    args = parser.parse_args()

    from adaptune.demo import build_demo_model

    work = Path(tempfile.mkdtemp(prefix="adaptune-bench-asha-"))
    model = build_demo_model(work / "model")
    if args.part in ("all", "asha"):
        compare_searches(work, model, args.steps, args.eval_every)
    if args.part in ("all", "startup"):
        startup_by_concurrency(work, model)


def compare_searches(work: Path, model: Path, steps: int, eval_every: int) -> None:
    full = run(work, "full", model, steps, eval_every, "none")
    asha = run(work, "asha", model, steps, eval_every, "asha")
    steps_full = sum(r["steps"] or 0 for r in full.rows)
    steps_asha = sum(r["steps"] or 0 for r in asha.rows)
    best_full, best_asha = full.winner["eval_loss"], asha.winner["eval_loss"]
    gap = (best_asha - best_full) / best_full
    print(
        f"## ASHA vs full search ({len(full.rows)} configurations, {steps} steps each, evaluation every "
        f"{eval_every}; ASHA grace 1 round, reduction factor 3)\n"
    )
    print("| search | trials | training steps | best eval_loss | winner |")
    print("|---|---|---|---|---|")
    print(
        f"| every configuration to the full budget | {len(full.rows)} | {steps_full} | {best_full:.4f} | "
        f"{full.winner['trial']} |"
    )
    print(f"| ASHA | {len(asha.rows)} | {steps_asha} | {best_asha:.4f} | {asha.winner['trial']} |")
    print(
        f"\nASHA used **{100 * steps_asha / steps_full:.0f}%** of the steps (target <= 40%); its best eval_loss "
        f"is **{100 * gap:+.2f}%** from the full search's (target within 2%).\n"
    )


def startup_by_concurrency(work: Path, model: Path) -> None:
    """n trials at once on a local Ray with 2n logical CPUs: trial start to first optimizer step."""
    import ray

    print("| trials at once | trials | trial start to first optimizer step, mean s | max s |")
    print("|---|---|---|---|")
    for n in (1, 2, 4):
        ray.shutdown()
        ray.init(address="local", num_cpus=2 * n, log_to_driver=False)
        outcome = run(
            work, f"startup-{n}", model, 5, 5, "none", space={"lora.r": {"grid": [4, 8, 16, 32]}}, concurrent=n
        )
        secs = first_step_seconds(outcome)
        print(f"| {n} | {len(secs)} | {sum(secs) / len(secs):.1f} | {max(secs):.1f} |")
    print(
        "\n(2 physical cores: at 2 and 4 trials at once the workers share the same two cores, so start-up "
        "time measures contention as much as Ray's scheduling.)"
    )


if __name__ == "__main__":
    main()
