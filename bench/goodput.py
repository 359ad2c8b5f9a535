"""Goodput of a quickstart-shaped sweep, and every fixed cost of its trials, before and after: this tree against
a git revision (checked out in a worktree), each sweep run the same way in its own process, side by side in one
run; prints Markdown tables.

    .venv/bin/python bench/goodput.py [--before REV|none] [--trials 6] [--out FILE]

The sweep is search_spaces/quickstart.yaml on the demo model (6 trials of 2 DeepSpeed ZeRO-2 workers, ASHA,
20-60 steps each, one trial at a time on 2 CPUs), on a fresh local Ray and a fresh embedded MLflow store per side.

- goodput: optimizer-step seconds / (sweep wall x trial slots). The sweep wall is the whole `adaptune sweep`
  as a user waits for it: plan, data, Ray, tracking, the trials, results, finalists, registry.
- fixed cost per trial: the wall time it adds to the sweep (from the end of the trial before it, or its own
  start if later, to Tune seeing it end) less its optimizer steps; "warm" trials are all but the first (the first
  also pays the host's first Ray workers). Start-up a trial did while the one before it trained is hidden.
- each fixed cost, per trial, from the trial's own timestamps (the trainer state's `timeline`, rank 0's; and the
  driver's Tune callback for the trial's end), and the driver's phases before the first trial and after the last.

Targets (issue 16): fixed cost per warm trial <= 15 s; goodput >= 0.45 on this sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "search_spaces" / "quickstart.yaml"
OUT = sys.stdout

# The commit that added the trials' timelines, before any of the levers that cut a trial's fixed cost: the
# default "before" side.
BASELINE = "b80c597"

# The driver's phases: functions of adaptune.driver.run timed where the sweep calls them.
DRIVER_PHASES = {
    "prepare_inputs": "data prepared (tokenized once), targets resolved",
    "connect_ray": "Ray started or joined",
    "open_tracking": "MLflow parent run opened",
    "fit": "Tune: the trials",
    "score_finalists": "finalists scored on the test split",
    "finish": "results, finalists, MLflow runs closed",
    "register": "winner registered",
}


def md(*lines: str) -> None:
    print("\n".join(lines), file=OUT, flush=True)


# --------------------------------------------------------------------------------------------------
# One side: a sweep in this process, timed (run with --side)
# --------------------------------------------------------------------------------------------------


def run_side(storage: Path, trials: int, out: Path) -> None:
    """Run the quickstart sweep in-process with the code on sys.path, recording the driver's phases and each
    trial's start and end as Tune sees them; write what was measured to `out` (JSON)."""
    started = time.time()
    import adaptune.driver.run as run

    driver: dict[str, float] = {}
    seen: dict[str, dict[str, float]] = {}

    def timed(name: str, fn):
        def wrapper(*args, **kwargs):
            t0 = time.time()
            try:
                return fn(*args, **kwargs)
            finally:
                driver[name] = driver.get(name, 0.0) + time.time() - t0

        return wrapper

    for name in DRIVER_PHASES:
        if hasattr(run, name):
            setattr(run, name, timed(name, getattr(run, name)))
    build_tuner = run.build_tuner

    def with_clock(*args, **kwargs):
        from ray import tune

        class Clock(tune.Callback):
            def on_trial_start(self, iteration, trials, trial, **info):
                seen.setdefault(trial.trial_id, {})["tune_start"] = time.time()

            def on_trial_complete(self, iteration, trials, trial, **info):
                seen.setdefault(trial.trial_id, {})["tune_end"] = time.time()

            on_trial_error = on_trial_complete

        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), Clock()]
        return build_tuner(*args, **kwargs)

    run.build_tuner = with_clock
    os.chdir(REPO)  # the sweep file's relative paths (demo-model, data/demo)
    overrides = [f"cluster.storage_path={storage}", f"search.num_samples={trials}"]
    outcome = run.sweep_plan(run.plan_run(str(SWEEP), None, overrides))
    wall = time.time() - started
    timelines = {}
    for row in outcome.rows:
        trial_dir = Path(outcome.path, "trials", row["trial"])
        states = [json.loads(p.read_text()) for p in trial_dir.glob("checkpoint_*/trainer_state.json")]
        # The checkpoint of its last recorded evaluation holds the timeline up to that report; a stopped trial's
        # workers may have checkpointed a step more after Tune ended it, which is not part of its record.
        recorded = [st for st in states if st["step"] <= (row["steps"] or 0)]
        if recorded:
            timelines[row["trial"]] = max(recorded, key=lambda st: st["step"]).get("timeline", [])
    result = {
        "wall_s": wall,
        "driver": driver,
        "trials": [
            {"trial": r["trial"], "status": r["status"], "steps": r["steps"], **seen.get(r["trial"], {})}
            for r in outcome.rows
        ],
        "timelines": timelines,
        "slots": 1,
    }
    out.write_text(json.dumps(result, indent=1), encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# What one side's measurements say
# --------------------------------------------------------------------------------------------------

PHASE_ORDER = (
    "trial process start",
    "trial set-up",
    "on deck",
    "Train controller and placement",
    "worker process and imports",
    "process group",
    "data open",
    "model load",
    "DeepSpeed init",
    "base-model evaluation",
    "evaluation",
    "generated answers",
    "checkpoint and report",
)
LAST = "last checkpoint, report and teardown"  # from the last recorded phase to Tune seeing the trial end
HIDDEN = "less: started while the trial before it trained (on deck)"
# What adaptune does about each phase (the levers this bench measures; docs/sweep.md, "What a trial costs")
LEVERS = {
    "trial process start": "started on deck (search.trials_on_deck), behind the trial before it",
    "on deck": "a trial on deck waits here for a worker slot, behind the trial before it",
    "Train controller and placement": "the controller polls its workers every 0.25 s (Ray's default: 2 s)",
    "worker process and imports": "workers import neither MLflow nor (unused) bitsandbytes; no `datasets`",
    "process group": "DeepSpeed imported without MLflow (its autotuner pulled it in: ~2 s)",
    "data open": "the prepared Arrow files memory-mapped with pyarrow (no `datasets` import)",
    "base-model evaluation": "computed by the first trial, read by the others (base_eval/)",
    LAST: "the controller's 0.25 s polls see the end sooner",
    HIDDEN: "trial on deck",
}
STEPS = "optimizer steps"


def summarize(side: dict) -> dict:
    """Per trial: its wall, its optimizer steps, its fixed cost by phase; and the sweep's goodput."""
    per_trial = []
    for t in side["trials"]:
        timeline = side["timelines"].get(t["trial"], [])
        if not timeline or "tune_end" not in t:
            continue
        phases: dict[str, float] = {}
        for name, _start, seconds in timeline:
            phases[name] = phases.get(name, 0.0) + seconds
        start = min(s for _, s, _ in timeline)
        last_end = max(s + d for _, s, d in timeline)
        phases[LAST] = t["tune_end"] - last_end
        steps = phases.pop(STEPS, 0.0)
        per_trial.append({"trial": t["trial"], "start": start, "end": t["tune_end"], "steps": steps, "phases": phases})
    # What each trial adds to the sweep's wall (one trial slot): from the end of the trial before it (or its own
    # start, if later) to its end. A trial started while the one before it trained (a trial on deck) has part
    # of its start-up hidden behind that one: `hidden`.
    per_trial.sort(key=lambda p: p["end"])
    previous_end = None
    for p in per_trial:
        p["hidden"] = max(0.0, previous_end - p["start"]) if previous_end is not None else 0.0
        p["wall"] = p["end"] - max(p["start"], previous_end if previous_end is not None else p["start"])
        previous_end = p["end"]
    step_s = sum(p["steps"] for p in per_trial)
    warm = per_trial[1:] or per_trial
    if not warm:
        raise SystemExit("goodput: no trial left a timeline to measure (did every trial fail?)")
    return {
        "wall": side["wall_s"],
        "step_s": step_s,
        "goodput": step_s / (side["wall_s"] * side["slots"]),
        "trials": per_trial,
        "fixed_warm": statistics.mean(p["wall"] - p["steps"] for p in warm),
        "fixed_first": per_trial[0]["wall"] - per_trial[0]["steps"] if per_trial else float("nan"),
        "phase_warm": {
            name: statistics.mean(p["phases"].get(name, 0.0) for p in warm) for name in (*PHASE_ORDER, LAST)
        },
        "hidden_warm": statistics.mean(p["hidden"] for p in warm) if warm else 0.0,
        "driver": side["driver"],
        "between": _between_trials(side, per_trial),
    }


def _between_trials(side: dict, per_trial: list[dict]) -> float:
    """Seconds of Tune's fit() in which no trial process was alive (Tune between one trial and the next)."""
    if not per_trial:
        return 0.0
    covered, end = 0.0, float("-inf")
    for p in sorted(per_trial, key=lambda p: p["start"]):
        lo, hi = max(p["start"], end), p["end"]
        covered += max(0.0, hi - lo)
        end = max(end, hi)
    return max(0.0, side["driver"].get("fit", 0.0) - covered)


def report(sides: dict[str, dict], labels: dict[str, str]) -> None:
    names = list(sides)
    head = "| | " + " | ".join(labels[n] for n in names) + " |"
    rule = "|---|" + "---:|" * len(names)
    s = {n: summarize(sides[n]) for n in names}
    md("## Goodput of the quickstart sweep", "", head, rule)
    rows = [
        ("sweep wall (s)", lambda x: f"{x['wall']:.1f}"),
        ("trials measured", lambda x: f"{len(x['trials'])}"),
        ("optimizer-step seconds", lambda x: f"{x['step_s']:.1f}"),
        ("trial slots", lambda x: "1"),
        ("**goodput** (target >= 0.45)", lambda x: f"**{x['goodput']:.2f}**"),
        ("fixed cost, first trial (s)", lambda x: f"{x['fixed_first']:.1f}"),
        ("**fixed cost per warm trial** (s, target <= 15)", lambda x: f"**{x['fixed_warm']:.1f}**"),
    ]
    for label, fn in rows:
        md(f"| {label} | " + " | ".join(fn(s[n]) for n in names) + " |")
    md("", "## Fixed cost per warm trial, by phase (seconds, mean over all trials but the first)", "")
    md(head + " lever |", rule + "---|")
    for phase in (*PHASE_ORDER, LAST):
        cells = " | ".join(f"{s[n]['phase_warm'][phase]:.2f}" for n in names)
        md(f"| {phase} | {cells} | {LEVERS.get(phase, '')} |")
    md(f"| {HIDDEN} | " + " | ".join(f"-{s[n]['hidden_warm']:.2f}" for n in names) + f" | {LEVERS[HIDDEN]} |")
    md(
        "| optimizer steps (not a fixed cost) | "
        + " | ".join(f"{statistics.mean(p['steps'] for p in s[n]['trials'][1:] or s[n]['trials']):.2f}" for n in names)
        + " | |"
    )
    md("", "## The driver (seconds, whole sweep)", "", head, rule)
    for key, label in DRIVER_PHASES.items():
        md(f"| {label} | " + " | ".join(f"{s[n]['driver'].get(key, 0.0):.1f}" for n in names) + " |")
    md("| Tune between trials (no trial process alive) | " + " | ".join(f"{s[n]['between']:.1f}" for n in names) + " |")


# --------------------------------------------------------------------------------------------------
# Both sides
# --------------------------------------------------------------------------------------------------


def side_process(source: Path, work: Path, trials: int) -> dict:
    """One side in a fresh process whose adaptune comes from `source` (a worktree's platform/), so its Ray
    workers (which inherit PYTHONPATH) run that code too."""
    out = work / "measured.json"
    env = {**os.environ, "PYTHONPATH": str(source), "TOKENIZERS_PARALLELISM": "false"}
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", str(work), "--trials", str(trials)]
    with (work / "side.log").open("w") as log:
        subprocess.run(cmd, env=env, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    return json.loads(out.read_text())


def main() -> None:
    global OUT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--before",
        default=BASELINE,
        help=f"git revision to compare against (default {BASELINE}: the trial timelines, before any lever); "
        "'none': this tree only",
    )
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--out", help="write the Markdown here instead of stdout")
    parser.add_argument("--side", help=argparse.SUPPRESS)  # internal: run one side into this directory
    args = parser.parse_args()
    if args.side:
        work = Path(args.side)
        run_side(work / "runs", args.trials, work / "measured.json")
        return
    if args.out:
        OUT = open(args.out, "w", encoding="utf-8")  # noqa: SIM115 - closed at exit
    if not (REPO / "demo-model" / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "adaptune", "demo-model"], cwd=REPO, check=True)
    sides, labels = {}, {}
    with tempfile.TemporaryDirectory(prefix="adaptune-goodput-") as tmp:
        if args.before and args.before != "none":
            tree = Path(tmp) / "before-tree"
            subprocess.run(
                ["git", "worktree", "add", "--detach", str(tree), args.before],
                cwd=REPO,
                check=True,
                capture_output=True,
            )
            try:
                (Path(tmp) / "before").mkdir()
                sides["before"] = side_process(tree / "platform", Path(tmp) / "before", args.trials)
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=False)
            rev = subprocess.run(
                ["git", "rev-parse", "--short", args.before], cwd=REPO, capture_output=True, text=True
            ).stdout.strip()
            labels["before"] = f"before ({rev})"
        (Path(tmp) / "after").mkdir()
        sides["after"] = side_process(REPO / "platform", Path(tmp) / "after", args.trials)
        labels["after"] = "this tree" if "before" in sides else "measured"
    md(
        f"Quickstart sweep, {args.trials} trials, each side in its own process on a fresh local Ray; "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
    )
    report(sides, labels)


if __name__ == "__main__":
    main()
