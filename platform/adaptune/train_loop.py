"""What runs on each Ray Train worker: one DeepSpeed rank training a LoRA adapter on the prepared data,
evaluating every `eval_every` steps, and reporting metrics with an adapter-only checkpoint."""

from __future__ import annotations

import json
import math
import os
import resource
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from adaptune.config import ClusterProfile, SweepConfig, TrainConfig
from adaptune.data import IGNORE_INDEX
from adaptune.deepspeed_config import build_deepspeed_config

TRAINER_STATE = "trainer_state.json"
ADAPTER_DIR = "adapter"
PROBE_FILE = "probe.safetensors"
PROBE_TOKENS = 32  # the probe is the first validation example, cut to this many tokens
PROBE_POSITIONS = 4  # logits kept for its last positions: small even for a 128k vocabulary


# A step loss this many times the untouched base model's eval loss counts as diverged (an exploding run).
EXPLODING_FACTOR = 3.0


def divergence(nonfinite: bool, loss: float, base_eval_loss: float) -> str | None:
    """Why a training step counts as diverged (NaN/inf, or exploded far above the base model's loss), or None."""
    if nonfinite:
        return "NaN/inf loss"
    if loss > EXPLODING_FACTOR * base_eval_loss:
        return f"loss {loss:.3g} exploded (over {EXPLODING_FACTOR:g}x the base model's {base_eval_loss:.3g})"
    return None


def lr_multiplier(step: int, t: TrainConfig) -> float:
    """Learning-rate factor for optimizer step `step` (0-based): linear warmup, then the configured decay.

    The first step already gets a non-zero rate (1 / warmup_steps of the peak).
    """
    warmup = math.ceil(t.warmup_ratio * t.max_steps)
    if step < warmup:
        return (step + 1) / warmup
    if t.lr_scheduler == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, t.max_steps - warmup))
    if t.lr_scheduler == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def train_batches(n: int, rank: int, world: int, batch_size: int, seed: int, start: int) -> Iterator[list[int]]:
    """Endless per-rank micro-batches of row indices, reshuffled each epoch, skipping the first `start`.

    Ranks get disjoint, equal-length slices of each epoch's permutation, so resuming from a step count
    lands on exactly the batches that come next without touching the data.
    """
    per_epoch = (n // world) // batch_size
    epoch, offset = divmod(start, per_epoch)
    while True:
        g = torch.Generator().manual_seed(seed + epoch)
        mine = torch.randperm(n, generator=g)[rank::world][: per_epoch * batch_size].tolist()
        for b in range(offset, per_epoch):
            yield mine[b * batch_size : (b + 1) * batch_size]
        epoch, offset = epoch + 1, 0


def collate(rows: dict[str, list[list[int]]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Pad a batch of tokenized rows to its longest row."""
    longest = max(len(x) for x in rows["input_ids"])
    ids = torch.full((len(rows["input_ids"]), longest), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE_INDEX)
    mask = torch.zeros_like(ids)
    for i, (x, y) in enumerate(zip(rows["input_ids"], rows["labels"], strict=True)):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _evaluate(engine: Any, val: Any, rank: int, world: int, batch_size: int, pad_id: int, device: torch.device):
    """Token-weighted mean loss on the validation split. Every rank runs the same number of forward passes
    (ZeRO-3 gathers parameters collectively), padding its share with zero-weight batches."""
    engine.eval()
    mine = list(range(rank, len(val), world))
    n_batches = math.ceil(math.ceil(len(val) / world) / batch_size)
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.no_grad():
        for b in range(n_batches):
            chunk = mine[b * batch_size : (b + 1) * batch_size]
            weight = 1.0 if chunk else 0.0
            batch = collate(val[chunk or [0]], pad_id, device)
            logits = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"][:, 1:]
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.size(-1)),
                labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            totals += weight * torch.stack([loss.double(), (labels != IGNORE_INDEX).sum().double()])
    dist.all_reduce(totals)
    engine.train()
    return (totals[0] / totals[1]).item()


def _adapter_state_dict(peft_model: Any, zero3: bool, rank: int) -> dict[str, torch.Tensor]:
    """The adapter's weights on rank 0 (empty elsewhere). Under ZeRO-3 every rank takes part in gathering
    the LoRA shards, or rank 0 would save empty tensors."""
    from peft import get_peft_model_state_dict

    def take() -> dict[str, torch.Tensor]:
        if rank != 0:
            return {}
        return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(peft_model).items()}

    if not zero3:
        return take()
    import deepspeed

    lora_params = [p for p in peft_model.parameters() if p.requires_grad]
    with deepspeed.zero.GatheredParameters(lora_params, modifier_rank=None):
        return take()


def _probe(engine: Any, val: Any, device: torch.device) -> dict[str, torch.Tensor]:
    """Logits of the in-training model on a fixed input, saved with the checkpoint so anyone can check that
    the saved adapter, reloaded with plain peft, reproduces the model that was trained. All ranks run it."""
    ids = torch.tensor([val[0]["input_ids"][:PROBE_TOKENS]], device=device)
    engine.eval()
    with torch.no_grad():
        logits = engine(input_ids=ids).logits[:, -PROBE_POSITIONS:].float().cpu()
    engine.train()
    return {"input_ids": ids.cpu(), "logits": logits.contiguous()}


def _report(
    metrics: dict[str, Any],
    peft_model: Any,
    state: dict[str, Any],
    probe: dict[str, torch.Tensor],
    rank: int,
    zero3: bool,
) -> None:
    """ray.train.report from every rank; rank 0 attaches the adapter-only checkpoint."""
    import ray.train
    from ray.train import Checkpoint
    from safetensors.torch import save_file

    from adaptune.model import save_adapter

    state_dict = _adapter_state_dict(peft_model, zero3, rank)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            save_adapter(peft_model, Path(tmp) / ADAPTER_DIR, state_dict)
            save_file(probe, str(Path(tmp) / PROBE_FILE))
            (Path(tmp) / TRAINER_STATE).write_text(json.dumps(state, indent=1), encoding="utf-8")
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def _report_divergence(state: dict[str, Any], rank: int) -> None:
    """The last report of a diverged trial: the worst possible score and a state-only checkpoint saying why."""
    import ray.train
    from ray.train import Checkpoint

    metrics = {"step": state["diverged"]["step"], "eval_loss": float("inf"), "diverged": 1}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            (Path(tmp) / TRAINER_STATE).write_text(json.dumps(state, indent=1), encoding="utf-8")
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def train_fn_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker entrypoint. `config` holds the resolved sweep and cluster (as dicts), the prepared
    data directory, the resolved LoRA target modules and the pad token id."""
    startup = {"worker_start_s": time.time() - config["launched_at"]}  # trainer.fit() to this process running
    sweep = SweepConfig.model_validate(config["sweep"])
    cluster = ClusterProfile.model_validate(config["cluster"])
    t = sweep.train
    # DeepSpeed picks its accelerator on first import: CPU workers must say so before that.
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if cluster.trial.use_gpu else "cpu")
    import deepspeed
    import ray
    import ray.train
    import ray.train.torch
    from datasets import load_from_disk

    from adaptune.model import add_lora, load_adapter_weights, load_base_model, trainable_parameters

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # Ray Train set up torch.distributed; DeepSpeed adopts that process group (ZeRO-3 model loading needs it).
    deepspeed.init_distributed(dist_backend="nccl" if cluster.trial.use_gpu else "gloo")
    device = ray.train.torch.get_device()
    zero3 = cluster.deepspeed.zero_stage == 3
    pad_id = int(config["pad_token_id"])

    # ---- data: the tokenized copy prepared once by the driver, memory-mapped ----
    mark = time.perf_counter()
    data_dir = Path(config["data_dir"])
    train_ds = load_from_disk(str(data_dir / "train"))
    val_ds = load_from_disk(str(data_dir / "validation"))
    startup["data_load_s"] = time.perf_counter() - mark

    # ---- model: frozen base (+ quantization) with a LoRA adapter ----
    ds_config = build_deepspeed_config(sweep, cluster, world)
    hf_ds_config = None
    if zero3:
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds_config = HfDeepSpeedConfig(ds_config)  # noqa: F841 - must stay alive while the model loads
    torch.manual_seed(t.seed)
    mark = time.perf_counter()
    model = load_base_model(sweep, cluster, device)
    if sweep.quantization.mode == "none" and not zero3:
        model.to(device)
    peft_model = add_lora(model, sweep, config["target_modules"])
    trainable, total = trainable_parameters(peft_model)
    startup["model_load_s"] = time.perf_counter() - mark
    quantized = sum(type(m).__module__.startswith("bitsandbytes") for m in peft_model.modules())  # not peft's wrappers

    # ---- resume from the last adapter checkpoint after a worker loss ----
    state: dict[str, Any] = {
        "step": 0,
        "history": [],
        "restarts": [],
        "target_modules": config["target_modules"],
        "quantized_layers": quantized,
        "base_eval_loss": None,
    }
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            load_adapter_weights(peft_model, Path(d) / ADAPTER_DIR)
            state = json.loads((Path(d) / TRAINER_STATE).read_text(encoding="utf-8"))
        state["restarts"].append(state["step"])

    # ---- DeepSpeed engine; the schedule continues from the resumed step ----
    mark = time.perf_counter()
    engine, _, _, _ = deepspeed.initialize(
        model=peft_model,
        model_parameters=[p for p in peft_model.parameters() if p.requires_grad],
        config=ds_config,
        lr_scheduler=partial(_scheduler, t=t, start=state["step"]),
    )
    engine.train()
    startup["deepspeed_init_s"] = time.perf_counter() - mark
    startup["torch_threads"] = torch.get_num_threads()
    state.setdefault("startup", []).append(startup)  # one entry per (re)start of the workers
    nodes: list[Any] = [None] * world
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    state["nodes"] = nodes  # the Ray node of each rank, in rank order (latest start)
    if state["base_eval_loss"] is None:  # the untouched base model, the bar every trial must clear
        state["base_eval_loss"] = _evaluate(engine, val_ds, rank, world, t.eval_batch_size, pad_id, device)

    # ---- the loop ----
    gas = t.gradient_accumulation_steps
    step = state["step"]
    batches = train_batches(len(train_ds), rank, world, t.micro_batch_size, t.seed, start=step * gas)
    window = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, tokens, steps since report
    window_time = 0.0
    while step < t.max_steps:
        started = time.perf_counter()
        step_stats = torch.zeros(3, dtype=torch.float64, device=device)  # loss, tokens, non-finite
        for _ in range(gas):
            batch = collate(train_ds[next(batches)], pad_id, device)
            loss = engine(**batch).loss
            engine.backward(loss)
            engine.step()
            step_stats[0] += loss.detach().double() / gas
            step_stats[1] += batch["attention_mask"].sum()
        step_stats[2] = 0.0 if torch.isfinite(step_stats[0]) else 1.0
        step_stats[0] = torch.nan_to_num(step_stats[0], nan=0.0, posinf=0.0, neginf=0.0)
        dist.all_reduce(step_stats)
        step += 1
        reason = divergence(step_stats[2].item() > 0, (step_stats[0] / world).item(), state["base_eval_loss"])
        if reason:
            # Stop at once, without raising: Ray Train would retry a raised error, and diverge again.
            state["diverged"] = {
                "step": step,
                "reason": f"{reason} at step {step} (learning_rate="
                f"{t.learning_rate:g}); lower train.learning_rate or raise train.warmup_ratio",
            }
            _report_divergence(state, rank)
            return
        window += torch.stack(
            [step_stats[0] / world, step_stats[1], torch.ones((), dtype=torch.float64, device=device)]
        )
        window_time += time.perf_counter() - started
        if step % t.eval_every == 0 or step == t.max_steps:
            eval_loss = _evaluate(engine, val_ds, rank, world, t.eval_batch_size, pad_id, device)
            metrics = {
                "step": step,
                "train_loss": (window[0] / window[2]).item(),
                "eval_loss": eval_loss,
                "perplexity": math.exp(min(eval_loss, 50.0)),
                "base_eval_loss": state["base_eval_loss"],
                "tokens_per_s": (window[1] / window_time).item(),
                "step_time_s": window_time / window[2].item(),
                "learning_rate": t.learning_rate * lr_multiplier(step - 1, t),
                "peak_memory_mb": _peak_memory_mb(device),
                "trainable_params": trainable,
                "trainable_fraction": trainable / total,
                "epoch": step * gas * t.micro_batch_size * world / len(train_ds),
                "diverged": 0,
            }
            state["step"] = step
            state["history"].append(metrics)
            _report(metrics, peft_model, state, _probe(engine, val_ds, device), rank, zero3)
            window.zero_()
            window_time = 0.0


def _scheduler(optimizer: Any, t: TrainConfig, start: int) -> Any:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_multiplier(start + i, t))
