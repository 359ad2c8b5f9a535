"""The Tune trainable's checks on a sampled combination, which run before any worker starts."""

from __future__ import annotations

import pytest

from adaptune.config import ClusterProfile, SweepConfig
from adaptune.driver.trial import TrialSkipped, launch_training
from adaptune.records import PreparedRun

pytestmark = pytest.mark.unit

BASE = SweepConfig.model_validate({"name": "t", "model": {"path": "m"}, "data": {"path": "d"}})


def _launch(sampled, zero_stage=3):
    cluster = ClusterProfile.model_validate({"deepspeed": {"zero_stage": zero_stage}})
    launch_training(
        sampled,
        sweep=BASE,
        cluster=cluster,
        prepared=PreparedRun("d", 0, {}),
        trials_path="unused",
    )


def test_incompatible_samples_are_skipped_with_the_reason():
    with pytest.raises(TrialSkipped, match=r"quantization.mode: 8-bit quantization cannot be sharded by ZeRO-3"):
        _launch({"quantization.mode": "8bit"})
    with pytest.raises(TrialSkipped, match=r"train.precision: fp16 training needs GPUs"):
        _launch({"train.precision": "fp16"}, zero_stage=2)
    with pytest.raises(TrialSkipped, match=r"lora.r: Input should be greater than 0"):
        _launch({"lora.r": 0})


@pytest.mark.parametrize(("metric", "mode", "best_step"), [("eval_loss", "min", 20), ("perplexity", "max", 10)])
def test_the_adapter_a_trial_returns_follows_the_search_metric_and_mode(tmp_path, metric, mode, best_step):
    """`read_outcome` on Ray's own Result of a finished run with two kept checkpoints: the best evaluation and
    its adapter are the best by `search.metric` in `search.mode`, not by a fixed eval_loss/min."""
    import json

    from ray.train import Checkpoint, Result

    from adaptune.driver.trial import read_outcome
    from adaptune.names import ADAPTER_DIR, TRAINER_STATE

    history = [
        {"step": 10, "eval_loss": 2.0, "perplexity": 9.0},
        {"step": 20, "eval_loss": 1.5, "perplexity": 4.0},
        {"step": 30, "eval_loss": 1.7, "perplexity": 6.0},
    ]
    checkpoints = []
    for h in history:
        d = tmp_path / f"checkpoint_{h['step']}"
        (d / ADAPTER_DIR).mkdir(parents=True)
        state = {"step": h["step"], "history": history[: history.index(h) + 1], "restarts": [], "quantized_layers": 0}
        (d / TRAINER_STATE).write_text(json.dumps(state), encoding="utf-8")
        checkpoints.append((Checkpoint.from_directory(str(d)), h))
    result = Result(
        metrics=history[-1], checkpoint=checkpoints[-1][0], error=None, path=str(tmp_path), best_checkpoints=checkpoints
    )
    search = BASE.model_copy(update={"search": BASE.search.model_copy(update={"metric": metric, "mode": mode})}).search
    outcome = read_outcome(result, search)
    assert outcome.best["step"] == best_step
    assert outcome.adapter_path == str(tmp_path / f"checkpoint_{best_step}" / ADAPTER_DIR)


def test_trial_slots_hand_out_at_most_their_number_and_nothing_to_an_ended_trial():
    """The sweep's worker slots (driver.trial.TrialSlots, a Ray actor in a sweep; its methods as they are here)."""
    import asyncio

    from adaptune.driver.trial import TrialSlots

    async def scenario() -> None:
        slots = TrialSlots(1)
        await slots.acquire("a")
        b = asyncio.create_task(slots.acquire("b"))  # on deck: waits for a's slot
        await asyncio.sleep(0.05)
        assert not b.done()
        await slots.release("a")
        await asyncio.wait_for(b, 1)
        assert slots.holders == {"b"} and slots.free == 0
        c = asyncio.create_task(slots.acquire("c"))  # waits, then its process dies: the driver releases it
        await asyncio.sleep(0.05)
        await slots.release("c")
        await asyncio.wait_for(c, 1)
        assert slots.holders == {"b"}  # c took nothing
        await slots.release("b")
        await slots.release("b")  # the trial's own release and the driver's: one slot back, not two
        assert slots.free == 1 and not slots.holders
        await slots.acquire("c")  # a late acquire of a trial that ended takes nothing
        assert slots.free == 1

    asyncio.run(scenario())
