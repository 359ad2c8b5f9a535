"""Search spaces: checking before Ray starts (messages asserted) and translation into Ray Tune objects."""

from __future__ import annotations

import pytest

from adaptune.config import SweepConfig
from adaptune.preflight.search_space import (
    build_param_space,
    check_search,
    check_space,
    resolve_alpha,
    searchable_keys,
)

pytestmark = pytest.mark.unit

BASE = SweepConfig.model_validate({"name": "t", "model": {"path": "m"}, "data": {"path": "d"}})


def _check(space):
    return [str(p) for p in check_space(BASE, space, "s.yaml")]


def test_a_realistic_space_is_accepted():
    space = {
        "lora.r": {"choice": [8, 16, 32]},
        "lora.alpha": {"multiple_of_rank": {"choice": [1, 2]}},
        "lora.target_modules": {"choice": ["attention", "all-linear", ["q_proj", "v_proj"]]},
        "lora.dropout": {"uniform": [0.0, 0.1]},
        "train.learning_rate": {"loguniform": [1e-5, 1e-3]},
        "train.gradient_accumulation_steps": {"randint": [1, 5]},
        "train.micro_batch_size": {"qrandint": [4, 16, 4]},
        "quantization.mode": {"grid": ["none", "4bit"]},
    }
    assert _check(space) == []


def test_bad_paths_get_suggestions():
    assert _check(
        {
            "lora.rank": {"choice": [8]},
            "train.lr": {"choice": [1e-4]},
            "data.max_seq_length": {"choice": [128]},
            "adam.beta1": {"choice": [0.9]},
        }
    ) == [
        "s.yaml: search.space.lora.rank: unknown key. Did you mean `lora.r`?",
        "s.yaml: search.space.train.lr: unknown key. Did you mean `train.learning_rate`?",
        "s.yaml: search.space.data.max_seq_length: data settings cannot be searched. The data is prepared once "
        "per sweep; run one sweep per model/data choice",
        "s.yaml: search.space.adam.beta1: unknown key. Searchable keys start with lora, quantization, train",
    ]


def test_bad_distributions_and_ranges():
    assert _check(
        {
            "train.learning_rate": {"loguniform": [1e-3, 1e-5]},
            "lora.dropout": {"uniform": [0.1]},
            "lora.r": {"chioce": [8, 16]},
            "train.warmup_ratio": {"loguniform": [0.0, 0.1]},
            "train.max_steps": {"randint": [10, 20.5]},
            "train.seed": [1, 2],
        }
    ) == [
        "s.yaml: search.space.train.learning_rate: loguniform range is empty or reversed (got low=0.001, "
        "high=1e-05). Put the lower bound first",
        "s.yaml: search.space.lora.dropout: uniform needs [low, high] numbers (got [0.1]). Write uniform: [low, high]",
        "s.yaml: search.space.lora.r: unknown distribution 'chioce'. Did you mean `choice`?",
        "s.yaml: search.space.train.warmup_ratio: loguniform needs a positive lower bound (got 0.0). Use uniform, "
        "or a lower bound > 0",
        "s.yaml: search.space.train.max_steps: randint needs whole numbers (got [10, 20.5]). Use uniform for "
        "real numbers",
        "s.yaml: search.space.train.seed: expected one distribution like {choice: [...]} (got [1, 2]). Use one "
        "of choice, grid, uniform, loguniform, randint, qrandint",
    ]


def test_values_the_schema_refuses_are_caught_before_ray():
    assert _check(
        {
            "lora.r": {"choice": [8, 0]},
            "quantization.mode": {"choice": ["4bit", "2bit"]},
            "lora.target_modules": {"choice": ["attention", "attn"]},
            "lora.alpha": {"multiple_of_rank": {"choice": [1, -2]}},
        }
    ) == [
        "s.yaml: search.space.lora.r: value 0 is not allowed: Input should be greater than 0. Change the "
        "distribution's values or bounds",
        "s.yaml: search.space.quantization.mode: value '2bit' is not allowed: Input should be 'none', '4bit' or "
        "'8bit'. Change the distribution's values or bounds",
        "s.yaml: search.space.lora.target_modules: value 'attn' is not allowed: target_modules 'attn' is not a "
        "named set. Change the distribution's values or bounds",
        "s.yaml: search.space.lora.alpha: multiple_of_rank factors must be positive numbers (got [1, -2]). Use "
        "factors like [1, 2, 4]",
    ]


def test_every_distribution_becomes_a_tune_object():
    from ray.tune.search.sample import Categorical, Float, Integer

    params = build_param_space(
        {
            "lora.r": {"choice": [8, 16]},
            "quantization.mode": {"grid": ["none", "4bit"]},
            "lora.dropout": {"uniform": [0.0, 0.1]},
            "train.learning_rate": {"loguniform": [1e-5, 1e-3]},
            "train.gradient_accumulation_steps": {"randint": [1, 5]},
            "train.micro_batch_size": {"qrandint": [4, 16, 4]},
            "lora.alpha": {"multiple_of_rank": {"choice": [1, 2]}},
        }
    )
    assert isinstance(params["lora.r"], Categorical) and params["lora.r"].categories == [8, 16]
    assert params["quantization.mode"] == {"grid_search": ["none", "4bit"]}
    assert isinstance(params["lora.dropout"], Float) and (
        params["lora.dropout"].lower,
        params["lora.dropout"].upper,
    ) == (0.0, 0.1)
    lr = params["train.learning_rate"]
    assert isinstance(lr, Float) and "LogUniform" in type(lr.sampler).__name__
    assert isinstance(params["train.gradient_accumulation_steps"], Integer)
    q = params["train.micro_batch_size"]
    assert isinstance(q, Integer) and "Quantized" in type(q.sampler).__name__ and q.sampler.q == 4
    assert isinstance(params["lora.alpha_per_rank"], Categorical)
    samples = {q.sample() for _ in range(50)}
    assert samples <= {4, 8, 12, 16}


def test_alpha_as_a_multiple_of_rank():
    assert resolve_alpha({"lora.r": 16, "lora.alpha_per_rank": 2}, BASE) == {"lora.r": 16, "lora.alpha": 32.0}
    assert resolve_alpha({"lora.alpha_per_rank": 4}, BASE) == {"lora.alpha": 32.0}  # base r = 8


@pytest.mark.parametrize("key", ["lora.r", "lora.target_modules", "train.learning_rate", "quantization.mode"])
def test_issue_named_keys_are_searchable(key):
    assert key in searchable_keys()


def test_search_section_metric_points_and_algorithm():
    base = BASE.model_copy(
        update={
            "search": BASE.search.model_copy(
                update={
                    "space": {"lora.r": {"grid": [8, 16]}, "train.learning_rate": {"loguniform": [1e-5, 1e-3]}},
                    "metric": "eval_los",
                    "algorithm": "optuna",
                    "points_to_evaluate": [
                        {"lora.r": 16, "train.learning_rate": 2e-4},
                        {"lora.rr": 4},
                        {"lora.r": -1, "train.learning_rate": 1e-4},
                    ],
                }
            )
        }
    )
    assert [str(p) for p in check_search(base, "s.yaml")] == [
        "s.yaml: search.metric: the trainer does not report 'eval_los'. Did you mean `eval_loss`?",
        "s.yaml: search.algorithm: optuna cannot search grid entries (lora.r). Use choice for them, or algorithm: grid",
        "s.yaml: search.points_to_evaluate[1]: lora.rr not in search.space. Give values only for searched keys",
        "s.yaml: search.points_to_evaluate[2]: lora.r: Input should be greater than 0. Fix the starting point",
    ]


def test_optuna_tpe_suggests_within_the_space_and_learns_from_results():
    from adaptune.driver.sweep import build_search_alg

    search = BASE.search.model_copy(
        update={
            "algorithm": "optuna",
            "seed": 3,
            "points_to_evaluate": [{"lora.r": 16, "train.learning_rate": 2e-4}],
        }
    )
    space = {"lora.r": {"choice": [4, 8, 16]}, "train.learning_rate": {"loguniform": [1e-5, 1e-3]}}
    alg = build_search_alg(search, max_concurrent=2)
    assert alg.set_search_properties("eval_loss", "min", build_param_space(space))
    first = alg.suggest("t0")
    assert first == {"lora.r": 16, "train.learning_rate": 2e-4}  # the known-good starting point comes first
    alg.suggest("t1")
    assert alg.suggest("t2") is None  # two trials at once, no more
    for i in range(12):
        trial = f"t{i + 3}"
        if i == 0:
            alg.on_trial_complete("t0", {"eval_loss": 5.0, "training_iteration": 1})
            alg.on_trial_complete("t1", {"eval_loss": 6.0, "training_iteration": 1})
        config = alg.suggest(trial)
        assert config["lora.r"] in (4, 8, 16) and 1e-5 <= config["train.learning_rate"] <= 1e-3
        alg.on_trial_complete(
            trial, {"eval_loss": 1.0 / config["lora.r"] + config["train.learning_rate"], "training_iteration": 1}
        )


def test_concurrency_follows_the_profile_capacity_else_what_ray_reports():
    from adaptune.config import ClusterProfile, SearchConfig
    from adaptune.driver.sweep import concurrency

    gpu_trial = {"num_workers": 2, "use_gpu": True, "cpus_per_worker": 8, "gpus_per_worker": 1}
    # An autoscaling GPU cluster that has scaled to zero workers: the profile's capacity decides.
    k8s = ClusterProfile.model_validate({"capacity": {"nodes": 5, "cpus": 256, "gpus": 32}, "trial": gpu_trial})
    assert concurrency(SearchConfig(), k8s, {"CPU": 8.0}) == 16
    # CPUs can be the tighter limit.
    tight = ClusterProfile.model_validate({"capacity": {"nodes": 5, "cpus": 64, "gpus": 32}, "trial": gpu_trial})
    assert concurrency(SearchConfig(), tight, {}) == 4
    # No capacity given (the embedded default): what Ray reports, at least one trial.
    local = ClusterProfile()
    assert concurrency(SearchConfig(), local, {"CPU": 4.0}) == 2
    assert concurrency(SearchConfig(), local, {"CPU": 1.0}) == 1
    # An explicit limit wins.
    assert concurrency(SearchConfig(max_concurrent_trials=3), k8s, {}) == 3
