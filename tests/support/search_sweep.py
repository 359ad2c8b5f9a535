"""The suite's one search sweep, run once per session (conftest's `search_sweep`) and read by two modules:
`test_sweep_integration` (ASHA stopping trials early, a diverging starting point, the winner, two trials at a
time) and `test_mlflow_integration` (the runs on a real `mlflow server`, the held-out test scores, the
registry, merge, the UI). One sweep instead of two saves six trial start-ups and tests nothing less."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import cluster_config, run_cli, sweep_config, write_yaml

MODEL = "support-bot"
EXPERIMENT = "support-bot-sweeps"
NAME = "ml-sweep"
MAX_STEPS = 30
EVAL_EVERY = 5
EVAL_SAMPLES = 4  # validation prompts every trial answers at each evaluation (eval.samples)
# A user's scorer (eval.scorers_file) with a bug: it raises on the prompts whose digest is a multiple of FAILS_EVERY
# (two of the four validation prompts of the demo data's split; not validate's sample prompt, which it must score).
# Those answers' scores go missing, named in the trials' logs, and the sweep goes on. (A change to how the data is
# split changes the validation prompts: test_mlflow_integration then says no prompt failed, or every one did.)
FAILS_EVERY = 4
USER_SCORER = "answer_words"
SCORERS_PY = f"""import hashlib


def {USER_SCORER}(prompt, reference, answer):
    if int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % {FAILS_EVERY} == 0:
        raise ValueError("fails on this prompt")
    return float(len(answer.split()))
"""


def user_scorer_fails_on(prompt: str) -> bool:
    import hashlib

    return int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % FAILS_EVERY == 0


def run_search_sweep(work: Path, tiny_model: Path, tracking_uri: str) -> dict[str, Any]:
    """Six Optuna TPE trials under ASHA on the shared Ray cluster (two at a time), tracked by the server at
    `tracking_uri`: two good starting points first, then a learning rate far too high (on the tiny model the loss
    flat-lines near uniform or goes NaN, and ASHA or the divergence check stops it). A test split is held out,
    so the finalists are scored on it; every trial answers 4 validation prompts at each evaluation. Returns what
    the sweep printed and left behind."""
    cfg = sweep_config(
        tiny_model,
        train={"max_steps": MAX_STEPS, "eval_every": EVAL_EVERY},
        data={"test_fraction": 0.1},
        eval={
            "samples": EVAL_SAMPLES,
            "max_new_tokens": 12,
            "scorers": ["exact_match", "token_f1", "rouge_l", USER_SCORER],
            "scorers_file": str(work / "scorers.py"),
        },
    )
    (work / "scorers.py").write_text(SCORERS_PY, encoding="utf-8")
    cfg["name"] = NAME
    cfg["search"] = {
        "space": {
            "lora.r": {"choice": [4, 8, 16]},
            "lora.alpha": {"multiple_of_rank": {"choice": [1, 2]}},
            "lora.target_modules": {"choice": ["attention", "all-linear"]},
            "train.learning_rate": {"loguniform": [1e-3, 8e-3]},
        },
        "algorithm": "optuna",
        "num_samples": 6,
        "points_to_evaluate": [
            {"lora.r": 8, "lora.alpha_per_rank": 2, "lora.target_modules": "attention", "train.learning_rate": 7e-3},
            {"lora.r": 16, "lora.alpha_per_rank": 1, "lora.target_modules": "attention", "train.learning_rate": 5e-3},
            {"lora.r": 8, "lora.alpha_per_rank": 2, "lora.target_modules": "attention", "train.learning_rate": 10.0},
        ],
        "scheduler": "asha",
        "asha": {"grace_period": 1, "reduction_factor": 2},
        "seed": 1,
        # No trial on deck: the diverging starting point must start after the first two have reached ASHA's
        # rungs (on deck, it could take the first free workers and reach each rung first). The quickstart test
        # covers trials on deck.
        "trials_on_deck": 0,
    }
    cfg["mlflow"] = {"experiment": EXPERIMENT, "registered_model": MODEL}
    sweep = write_yaml(work / "sweep.yaml", cfg)
    cluster = write_yaml(
        work / "cluster.yaml", {**cluster_config(work / "runs"), "mlflow": {"tracking_uri": tracking_uri}}
    )
    r = run_cli("sweep", str(sweep), "--cluster", str(cluster), timeout=1500)
    assert r.returncode == 0, r.stderr[-4000:]
    (sweep_dir,) = (work / "runs" / NAME).glob("sweep-*")
    results = json.loads((sweep_dir / "results.json").read_text())
    from mlflow import MlflowClient

    mlc = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = mlc.get_experiment_by_name(EXPERIMENT)
    (parent,) = mlc.search_runs(
        [experiment.experiment_id], f"tags.`adaptune.sweep_id` = '{sweep_dir.name}' and tags.`adaptune.kind` = 'sweep'"
    )
    children = mlc.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return {
        "r": r,
        "results": results,
        "mlc": mlc,
        "experiment": experiment,
        "parent": parent,
        "children": children,
        "work": work,
        "sweep_dir": sweep_dir,
    }
