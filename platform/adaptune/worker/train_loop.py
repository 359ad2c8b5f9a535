"""What runs on each Ray Train worker: one DeepSpeed rank training a LoRA adapter on the prepared data,
evaluating every `eval_every` steps, and reporting an `Evaluation` with an adapter-only checkpoint.

`train_fn_per_worker` reads top to bottom: join the group, load the data, build the model, resume, build the
engine, then step, evaluate and report until `train.max_steps`."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from adaptune.config import EarlyStopping, EvalConfig, TrainConfig, model_source, resolve_precision
from adaptune.data import IGNORE_INDEX, PACKED_LENGTHS, open_split
from adaptune.evaluation import Answering, ScoredAnswers, generate_ids, load_answering, score_ids
from adaptune.names import (
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    ADAPTER_WEIGHTS,
    ANSWERS_FILE,
    BASE_EVAL_DIR,
    PHASE_ANSWERS,
    PHASE_BASE_EVAL,
    PHASE_CHECKPOINT,
    PHASE_DATA,
    PHASE_ENGINE,
    PHASE_EVAL,
    PHASE_JOIN,
    PHASE_MODEL,
    PHASE_STEPS,
    PHASE_WORKER_IMPORTS,
    PHASE_WORKERS_START,
    PROBE_FILE,
    TRAINED_ADAPTER_FILE,
    TRAINER_STATE,
)
from adaptune.preflight.rules import DECOMPOSING_INITS
from adaptune.records import Evaluation, Phase, TrialSpec, converged_reason, diverged_report
from adaptune.worker.deepspeed_config import build_deepspeed_config
from adaptune.worker.model import (
    add_lora,
    build_optimizer,
    initialize_eva,
    load_adapter_weights,
    load_base_model,
    optimizer_state_mb,
    save_adapter,
    trainable_parameters,
)

log = logging.getLogger(__name__)

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


def plateau(history: list[dict[str, Any]], metric: str, mode: str, rule: EarlyStopping) -> int | None:
    """The step of the last evaluation that improved `metric` (in `mode`) by at least `rule.min_delta` when
    none of the `rule.patience` evaluations since did, else None (off, or still improving). Read from the
    whole history, so a trial resumed after a worker loss counts its rounds before the loss too."""
    if rule.patience is None:
        return None
    sign = 1.0 if mode == "min" else -1.0  # compare as "lower is better"
    best, best_at = math.inf, None
    for i, evaluation in enumerate(history):
        value = sign * float(evaluation[metric])
        if best_at is None or value < best - rule.min_delta:
            best, best_at = value, i
    if best_at is None or len(history) - 1 - best_at < rule.patience:
        return None
    return int(history[best_at]["step"])


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


GROUP_BATCHES = 50  # length-grouped batching sorts each group of this many batches by length (as transformers')


def train_batches(
    n: int, rank: int, world: int, batch_size: int, seed: int, start: int, lengths: list[int] | None = None
) -> Iterator[list[int]]:
    """Endless per-rank micro-batches of row indices, reshuffled each epoch, skipping the first `start`.

    Ranks get disjoint, equal-length slices of each epoch's permutation, so resuming from a step count
    lands on exactly the batches that come next without touching the data. With the rows' `lengths`
    (`data.group_by_length`), each group of GROUP_BATCHES batches holds rows of similar length, and the
    batches come in shuffled order.
    """
    per_epoch = (n // world) // batch_size
    epoch, offset = divmod(start, per_epoch)
    while True:
        g = torch.Generator().manual_seed(seed + epoch)
        mine = torch.randperm(n, generator=g)[rank::world][: per_epoch * batch_size].tolist()
        if lengths is not None:
            mine = _grouped_by_length(mine, lengths, batch_size, g)
        for b in range(offset, per_epoch):
            yield mine[b * batch_size : (b + 1) * batch_size]
        epoch, offset = epoch + 1, 0


def _grouped_by_length(rows: list[int], lengths: list[int], batch_size: int, g: torch.Generator) -> list[int]:
    """`rows` reordered so that each consecutive `batch_size` holds rows of similar length: sorted by length
    within each group of GROUP_BATCHES batches, then the batches shuffled."""
    group = batch_size * GROUP_BATCHES
    batches = []
    for start in range(0, len(rows), group):
        ordered = sorted(rows[start : start + group], key=lambda i: -lengths[i])
        batches += [ordered[b : b + batch_size] for b in range(0, len(ordered), batch_size)]
    return [i for b in torch.randperm(len(batches), generator=g).tolist() for i in batches[b]]


def row_lengths(ds: Any) -> list[int]:
    """The token count of every row of a prepared split, read from its Arrow column (no row is decoded)."""
    import pyarrow.compute as pc

    return pc.list_value_length(ds.column("input_ids")).to_pylist()


@dataclass(frozen=True)
class Batch:
    """A padded micro-batch: the model's inputs, and how many of its token slots hold real tokens."""

    inputs: dict[str, Any]
    tokens: int
    slots: int
    mask: torch.Tensor  # 1 on real tokens, 0 on padding


def collate(rows: dict[str, list[list[int]]], pad_id: int, device: torch.device) -> Batch:
    """Pad a batch of tokenized rows to its longest row. Rows packed from several examples (`data.packing`)
    carry their examples' lengths: they get position ids that restart at every example and no attention mask,
    from which transformers builds an attention in which no token sees another example (a block-diagonal
    causal mask; flash attention's variable-length kernel on GPUs). The padding after them is a segment of its
    own, which no real token sees."""
    longest = max(len(x) for x in rows["input_ids"])
    ids = torch.full((len(rows["input_ids"]), longest), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE_INDEX)
    mask = torch.zeros_like(ids)
    for i, (x, y) in enumerate(zip(rows["input_ids"], rows["labels"], strict=True)):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    tokens = int(mask.sum())
    inputs: dict[str, Any] = {"input_ids": ids.to(device), "labels": labels.to(device)}
    if PACKED_LENGTHS in rows:
        positions = torch.zeros_like(ids)
        for i, lengths in enumerate(rows[PACKED_LENGTHS]):
            segments = [*lengths, longest - sum(lengths)]
            positions[i] = torch.cat([torch.arange(n) for n in segments])
        inputs.update(position_ids=positions.to(device), use_cache=False)
    else:
        inputs["attention_mask"] = mask.to(device)
    return Batch(inputs, tokens, ids.numel(), mask.to(device))


PACKED_TOLERANCE = {"fp32": 1e-3, "bf16": 3e-2, "fp16": 3e-2}  # relative, for check_packing's logits


def check_packing(engine: Any, train_ds: Any, me: Rank, precision: str) -> None:
    """Before training on packed rows: the model must give a packed example the logits it gives that example
    alone (its positions restarted, nothing attended across). transformers builds that attention from the
    position ids for the models that use its masking code; a model that does not (remote code, say) would
    silently train across examples, so this refuses it. Every rank runs the same forward passes."""
    probe = next((i for i in range(min(len(train_ds), 64)) if len(train_ds[i][PACKED_LENGTHS]) > 1), None)
    if probe is None:
        return  # no row holds two examples (every example nearly max_seq_length long): nothing crosses
    row = train_ds[[probe]]
    first, second = row[PACKED_LENGTHS][0][:2]
    alone = {"input_ids": [row["input_ids"][0][first : first + second]], "labels": [[]]}
    engine.eval()
    with torch.no_grad():
        got = _logits(engine, row, me)[first : first + second]
        want = _logits(engine, alone, me)
    engine.train()
    err = (got - want).abs().max().item()
    if err > PACKED_TOLERANCE[precision] * (1.0 + want.abs().max().item()):
        raise ValueError(
            f"data.packing: this model's attention lets a packed example see the one before it (its logits move "
            f"by {err:.3g} against the example alone), so training would cross examples. Set data.packing=false "
            "(data.group_by_length cuts padding without packing)"
        )


def _logits(engine: Any, rows: dict[str, list], me: Rank) -> torch.Tensor:
    return engine(**{**collate(rows, me.pad_id, me.device).inputs, "labels": None}).logits[0].float()


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
            batch = collate(val[chunk or [0]], pad_id, device).inputs
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


def base_eval_key(spec: TrialSpec) -> str:
    """What the untouched base model's eval_loss on a prepared validation split depends on besides the data: the
    model (its weight files as they are on disk, or its hub revision), how it is loaded (precision,
    quantization, attention) and an initialisation that rewrites the base weights (pissa, olora, loftq: their
    base plus adapter equals the base only approximately). Not the LoRA settings: a freshly initialised adapter
    adds nothing (B = 0), so every other trial's model starts as the same function."""
    sweep, cluster = spec.sweep, spec.cluster
    source = Path(model_source(sweep.model.path))
    weights = sorted(f for f in source.rglob("*") if f.suffix in (".safetensors", ".bin")) if source.is_dir() else []
    rewrites = sweep.lora.init in (*DECOMPOSING_INITS, "loftq")
    payload = {
        "model": str(source),
        "revision": sweep.model.revision,
        "weights": [[str(f.relative_to(source)), f.stat().st_size, f.stat().st_mtime_ns] for f in weights],
        "precision": resolve_precision(sweep, cluster),
        "quantization": sweep.quantization.model_dump(),
        "attention": sweep.train.attention,
        # an initialisation that rewrites the base does so by the adapter's shape: rank, scale, layers
        "init": [sweep.lora.init, sweep.lora.r, sweep.lora.alpha, sorted(spec.target_modules)]
        if rewrites
        else "default",
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def base_eval_loss(spec: TrialSpec, me: Rank, evaluate: Any) -> tuple[float, str]:
    """The untouched base model's eval_loss, and whether it was "computed" here or "read" from storage.

    Every trial of a sweep (and of later sweeps on the same prepared data) would evaluate the same model on the
    same rows: the first computes it and keeps it beside the prepared data (`base_eval/<base_eval_key>.json`);
    the others read it. Rank 0 decides for all ranks (the evaluation is collective, so every rank must take the
    same branch)."""
    path = Path(spec.data_dir) / BASE_EVAL_DIR / f"{base_eval_key(spec)}.json"
    known: list[Any] = [None]
    if me.rank == 0 and path.is_file():
        try:
            known = [float(json.loads(path.read_text(encoding="utf-8"))["eval_loss"])]
        except (OSError, ValueError, KeyError):
            known = [None]  # unreadable (written by something else): evaluate again
    dist.broadcast_object_list(known, src=0)
    if known[0] is not None:
        return known[0], "read"
    loss = evaluate()
    if me.rank == 0:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps({"eval_loss": loss, "model": spec.sweep.model.path}), encoding="utf-8")
            os.replace(tmp, path)  # whole or not at all: another trial may be reading it
        except OSError as e:  # read-only or full storage: the next trial evaluates again, training goes on
            log.warning("base eval: could not keep the base model's eval_loss at %s (%s)", path, e)
    return loss, "computed"


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
    model: Model,
    state: dict[str, Any],
    probe: dict[str, torch.Tensor],
    rank: int,
    zero3: bool,
    answers: ScoredAnswers | None = None,
) -> None:
    """ray.train.report from every rank; rank 0 attaches the adapter-only checkpoint (with the evaluation's
    generated answers, when there are some; and a pissa/olora adapter as trained, to resume from)."""
    import ray.train
    from ray.train import Checkpoint
    from safetensors.torch import save_file

    state_dict = _adapter_state_dict(model.peft, zero3, rank)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            save_adapter(model.peft, Path(tmp) / ADAPTER_DIR, state_dict, model.initial)
            if model.initial is not None:
                save_file(state_dict, str(Path(tmp) / TRAINED_ADAPTER_FILE))
            save_file(probe, str(Path(tmp) / PROBE_FILE))
            (Path(tmp) / TRAINER_STATE).write_text(json.dumps(state, indent=1), encoding="utf-8")
            if answers is not None:
                record = {"step": metrics["step"], "rows": answers.rows, "failures": answers.failures}
                (Path(tmp) / ANSWERS_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def _report_divergence(state: dict[str, Any], search: Any, rank: int) -> None:
    """The last report of a diverged trial: the worst possible score (of eval_loss and of `search.metric`) and
    a state-only checkpoint saying why."""
    import ray.train
    from ray.train import Checkpoint

    metrics = diverged_report(state["diverged"]["step"], search.metric, search.mode)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            (Path(tmp) / TRAINER_STATE).write_text(json.dumps(state, indent=1), encoding="utf-8")
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


@dataclass(frozen=True)
class Rank:
    """This worker's place in the group."""

    rank: int
    world: int
    device: torch.device
    zero3: bool
    pad_id: int


@dataclass
class Model:
    """The frozen base with its LoRA adapter, and what the trainer state records about it."""

    peft: Any
    trainable: int
    total: int
    quantized_layers: int
    hf_ds_config: Any  # transformers' ZeRO-3 hook: must stay alive while the model lives
    initial: dict[str, torch.Tensor] | None = None  # a pissa/olora adapter's initial weights (`save_adapter`)


def generate_answers(model: Any, prompts: list[dict[str, Any]], me: Rank, ev: EvalConfig, eos_id: int | None):
    """Each prompt's answer as token ids (up to EOS), in prompt order, on every rank. Each rank answers its share
    (rank::world), every rank making the same number of generate calls; under ZeRO-3, whose parameters are
    sharded, `synced_gpus` keeps every rank stepping until the longest answer is done. The model is handed back
    in training mode."""
    mine = list(range(me.rank, len(prompts), me.world))
    ids = generate_ids(
        model,
        [prompts[i]["prompt_ids"] for i in mine],
        me.pad_id,
        eos_id,
        ev,
        me.device,
        batches=math.ceil(math.ceil(len(prompts) / me.world) / ev.batch_size),
        synced_gpus=me.zero3 and me.world > 1,
    )
    model.train()
    gathered: list[Any] = [None] * me.world
    dist.all_gather_object(gathered, dict(zip(mine, ids, strict=True)))
    merged = {i: a for part in gathered for i, a in part.items()}
    return [merged[i] for i in range(len(prompts))]


def answer_on_ranks(model: Any, answering: Answering, me: Rank) -> tuple[ScoredAnswers, float]:
    """This evaluation's answers, scored on rank 0 and the scores shared with every rank (each rank decides
    early stopping on them), and the seconds spent generating."""
    started = time.perf_counter()
    ids = generate_answers(model, answering.prompts, me, answering.settings, answering.tokenizer.eos_token_id)
    seconds = time.perf_counter() - started
    scored = [None]
    if me.rank == 0:
        scored = [score_ids(answering, ids)]
        for failure in scored[0].failures:
            log.warning("eval: %s; that score is missing for that answer", failure)
    dist.broadcast_object_list(scored, src=0)
    return scored[0], seconds


class Timeline:
    """Where this worker's time goes, phase by phase (records.Phase): kept in the trainer state's `timeline`
    from the point the state exists (`attach`), so every checkpoint holds the phases before it."""

    def __init__(self) -> None:
        self.phases: list[list[Any]] = []

    def add(self, name: str, start: float, seconds: float) -> None:
        self.phases.append([name, round(start, 3), round(max(seconds, 0.0), 4)])

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.time()
        try:
            yield
        finally:
            self.add(name, start, time.time() - start)

    def attach(self, state: dict[str, Any]) -> None:
        """From now on the phases are the state's: a resumed state's earlier phases, then this start's."""
        state["timeline"] = [*state.get("timeline", []), *self.phases]
        self.phases = state["timeline"]


def _log_to_stderr() -> None:
    """adaptune's own lines from this worker (a user's scorer failing on an answer, say) on its stderr, which Ray
    forwards to the driver's log file: Ray Train sets up the worker's logging for its own records, under which
    a warning of ours would show nowhere."""
    logger = logging.getLogger("adaptune")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("adaptune: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _start_phases(spec: TrialSpec, entered: float, first_start: bool) -> list[Phase]:
    """The phases before this worker's train function ran: the trial process's (first start only), the Train
    controller starting the worker group from `fit()` (first start only: a restart's is not measured from
    there), and this worker process's own start with its imports."""
    import psutil

    started = psutil.Process().create_time()
    phases: list[Phase] = [(PHASE_WORKER_IMPORTS, started, entered - started)]
    if first_start:
        phases = [*spec.timeline, (PHASE_WORKERS_START, spec.launched_at, started - spec.launched_at), *phases]
    return phases


def train_fn_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker entrypoint; `config["spec"]` is the trial's `TrialSpec`."""
    import ray.train

    spec: TrialSpec = config["spec"]
    entered = time.time()
    _log_to_stderr()
    startup = {"worker_start_s": entered - spec.launched_at}  # trainer.fit() to this process running
    timeline = Timeline()
    for phase in _start_phases(spec, entered, ray.train.get_checkpoint() is None):
        timeline.add(*phase)
    with timeline.phase(PHASE_JOIN):
        me = join_group(spec)
    with timeline.phase(PHASE_DATA):
        train_ds, val_ds = load_data(spec, startup)
        answering = load_answering(spec.sweep, spec.data_dir, "validation", spec.scorer_code)
    ds_config = build_deepspeed_config(spec.sweep, spec.cluster, me.world)
    with timeline.phase(PHASE_MODEL):
        model = build_model(spec, me, ds_config, train_ds, startup)
        state = resume(spec, model)
    timeline.attach(state)
    with timeline.phase(PHASE_ENGINE):
        engine = build_engine(spec, me, model, ds_config, state, startup)
    state["nodes"] = _nodes(me)
    train(spec, me, engine, model, state, train_ds, val_ds, answering, timeline)


def _nodes(me: Rank) -> list[Any]:
    """The Ray node of each rank, in rank order (recorded at each start: where the trial ran)."""
    import ray

    nodes: list[Any] = [None] * me.world
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    return nodes


def join_group(spec: TrialSpec) -> Rank:
    """This worker's rank; DeepSpeed adopts the process group Ray Train set up (ZeRO-3 model loading needs it)."""
    # DeepSpeed picks its accelerator on first import: CPU workers must say so before that.
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if spec.cluster.trial.use_gpu else "cpu")
    _import_only_what_it_uses(spec)
    import deepspeed
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    deepspeed.init_distributed(dist_backend="nccl" if spec.cluster.trial.use_gpu else "gloo")
    return Rank(
        ctx.get_world_rank(),
        ctx.get_world_size(),
        ray.train.torch.get_device(),
        spec.cluster.deepspeed.zero_stage == 3,
        int(spec.pad_token_id),
    )


def _import_only_what_it_uses(spec: TrialSpec) -> None:
    """Keep libraries the trial does not use out of this worker process: every trial pays each worker's imports
    at its start (bench/goodput.py measures them). Workers never talk to MLflow (only the driver does), but
    DeepSpeed's autotuner imports it whenever it can (about 2 s); peft imports bitsandbytes whenever it can
    (about 0.8 s), which only QLoRA/8-bit trials and bitsandbytes' optimizers use. Such a module is made
    unimportable in this process: `import` raises ImportError and availability checks say it is absent."""
    unused = ["mlflow"]
    if spec.sweep.quantization.mode == "none" and spec.sweep.train.optimizer == "adamw":
        unused.append("bitsandbytes")
    for name in unused:
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]


def load_data(spec: TrialSpec, startup: dict[str, float]) -> tuple[Any, Any]:
    """The train and validation splits of the tokenized copy the driver prepared once, memory-mapped."""
    mark = time.perf_counter()
    train_ds, val_ds = open_split(spec.data_dir, "train"), open_split(spec.data_dir, "validation")
    startup["data_load_s"] = time.perf_counter() - mark
    return train_ds, val_ds


def build_model(
    spec: TrialSpec, me: Rank, ds_config: dict[str, Any], train_ds: Any, startup: dict[str, float]
) -> Model:
    """The frozen base (quantized when asked) with a LoRA adapter on the resolved target modules, initialised
    as `lora.init` says (eva on this trial's first training batches; on resume, from the checkpoint instead)."""
    from peft import get_peft_model_state_dict

    sweep, cluster = spec.sweep, spec.cluster
    hf_ds_config = None
    if me.zero3:
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds_config = HfDeepSpeedConfig(ds_config)
    torch.manual_seed(sweep.train.seed)
    mark = time.perf_counter()
    base = load_base_model(sweep, cluster, me.device)
    if sweep.quantization.mode == "none" and not me.zero3:
        base.to(me.device)
    eva_patterns = _resumed_eva_patterns() if sweep.lora.init == "eva" else None
    peft_model = add_lora(base, sweep, spec.target_modules, eva_patterns)
    if sweep.lora.init == "eva" and eva_patterns is None:
        initialize_eva(peft_model, _eva_batches(train_ds, me, sweep.train))
    initial = None
    if sweep.lora.init in DECOMPOSING_INITS:  # never under ZeRO-3 (rules): every rank holds the whole adapter
        initial = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
    trainable, total = trainable_parameters(peft_model)
    startup["model_load_s"] = time.perf_counter() - mark
    quantized = sum(type(m).__module__.startswith("bitsandbytes") for m in peft_model.modules())  # not peft's wrappers
    return Model(peft_model, trainable, total, quantized, hf_ds_config, initial)


EVA_BATCHES = 16  # training micro-batches per rank whose layer inputs eva decomposes


def _eva_batches(train_ds: Any, me: Rank, t: TrainConfig) -> list[dict[str, Any]]:
    """The inputs eva reads: this rank's first training micro-batches, each with the attention mask eva uses
    to leave padding out (on packed rows all real tokens, so eva's statistics, not the training, see across
    examples)."""
    batches = train_batches(len(train_ds), me.rank, me.world, t.micro_batch_size, t.seed, 0)
    out = []
    for _ in range(EVA_BATCHES):
        batch = collate(train_ds[next(batches)], me.pad_id, me.device)
        out.append({"input_ids": batch.inputs["input_ids"], "attention_mask": batch.mask})
    return out


def _resumed_eva_patterns() -> dict[str, dict] | None:
    """The per-layer ranks and scales (`rank_pattern`, `alpha_pattern`) of the eva adapter in the checkpoint
    being resumed, or None when starting fresh."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        config = json.loads((Path(d) / ADAPTER_DIR / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    return {key: dict(config.get(key) or {}) for key in ("rank_pattern", "alpha_pattern")}


def resume(spec: TrialSpec, model: Model) -> dict[str, Any]:
    """The trainer state to continue from: the last adapter checkpoint after a worker loss, else a fresh one."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {
            "step": 0,
            "history": [],
            "restarts": [],
            "target_modules": spec.target_modules,
            "quantized_layers": model.quantized_layers,
            "base_eval_loss": None,
            "tokens_trained": 0,
        }
    with checkpoint.as_directory() as d:
        trained = Path(d) / TRAINED_ADAPTER_FILE  # a pissa/olora adapter as trained; adapter/ holds it converted
        load_adapter_weights(model.peft, trained if trained.is_file() else Path(d) / ADAPTER_DIR / ADAPTER_WEIGHTS)
        state = json.loads((Path(d) / TRAINER_STATE).read_text(encoding="utf-8"))
    state["restarts"].append(state["step"])
    return state


def build_engine(
    spec: TrialSpec, me: Rank, model: Model, ds_config: dict[str, Any], state: dict[str, Any], startup: dict[str, float]
) -> Any:
    """The DeepSpeed engine over the adapter's parameters, its schedule continuing from the resumed step (no Ray:
    bench/gpu_check.py builds it on a machine without)."""
    import deepspeed

    mark = time.perf_counter()
    optimizer = build_optimizer(model.peft, spec.sweep.train)  # None: DeepSpeed's AdamW, from ds_config
    engine, _, _, _ = deepspeed.initialize(
        model=model.peft,
        model_parameters=None if optimizer else [p for p in model.peft.parameters() if p.requires_grad],
        optimizer=optimizer,
        config=ds_config,
        lr_scheduler=partial(_scheduler, t=spec.sweep.train, start=state["step"]),
    )
    state["optimizer"] = {
        "name": spec.sweep.train.optimizer,
        "learning_rates": sorted({g["initial_lr"] for g in engine.optimizer.param_groups}),  # LoRA+: two
    }
    engine.train()
    startup["deepspeed_init_s"] = time.perf_counter() - mark
    startup["torch_threads"] = torch.get_num_threads()
    state.setdefault("startup", []).append(startup)  # one entry per (re)start of the workers
    return engine


def micro_step(engine: Any, batch: Batch, gas: int) -> torch.Tensor:
    """One micro-batch forward and backward through the engine, which steps the optimizer every `gas` calls
    (DeepSpeed counts them); returns the loss's share of the step's (detached)."""
    loss = engine(**batch.inputs).loss
    engine.backward(loss)
    engine.step()
    return loss.detach().double() / gas


def train(
    spec: TrialSpec,
    me: Rank,
    engine: Any,
    model: Model,
    state: dict[str, Any],
    train_ds: Any,
    val_ds: Any,
    answering: Answering | None = None,
    timeline: Timeline | None = None,
) -> None:
    """Step until `train.max_steps`, evaluating (and answering the evaluation prompts) and reporting every
    `eval_every` steps and at the end; a diverged loss ends the trial at once. `timeline`: where the phases go."""
    t, search = spec.sweep.train, spec.sweep.search
    timeline = timeline or Timeline()
    if "converged" in state:  # resumed after its last report: it had already ended
        return
    if spec.sweep.data.packing:
        check_packing(engine, train_ds, me, resolve_precision(spec.sweep, spec.cluster))
    if state["base_eval_loss"] is None:  # the untouched base model, the bar every trial must clear
        with timeline.phase(PHASE_BASE_EVAL):
            state["base_eval_loss"], state["base_eval"] = base_eval_loss(
                spec, me, lambda: _evaluate(engine, val_ds, me.rank, me.world, t.eval_batch_size, me.pad_id, me.device)
            )
    gas = t.gradient_accumulation_steps
    step = state["step"]
    lengths = row_lengths(train_ds) if spec.sweep.data.group_by_length else None
    batches = train_batches(len(train_ds), me.rank, me.world, t.micro_batch_size, t.seed, step * gas, lengths)
    window = torch.zeros(3, dtype=torch.float64, device=me.device)  # loss sum, tokens, steps since report
    window_time, window_start = 0.0, time.time()
    while step < t.max_steps:
        started = time.perf_counter()
        # loss, tokens, non-finite, token slots, stop requested (summed over ranks: they all stop at one step)
        step_stats = torch.zeros(5, dtype=torch.float64, device=me.device)
        for _ in range(gas):
            batch = collate(train_ds[next(batches)], me.pad_id, me.device)
            step_stats[0] += micro_step(engine, batch, gas)
            step_stats[1] += batch.tokens
            step_stats[3] += batch.slots
        step_stats[2] = 0.0 if torch.isfinite(step_stats[0]) else 1.0
        step_stats[0] = torch.nan_to_num(step_stats[0], nan=0.0, posinf=0.0, neginf=0.0)
        step_stats[4] = 1.0 if spec.stop_file and os.path.exists(spec.stop_file) else 0.0
        dist.all_reduce(step_stats)
        step += 1
        if step_stats[4].item() > 0:  # the sweep ended this trial (ASHA) after its last report
            if me.rank == 0:
                log.info(
                    "trial ended by the sweep's scheduler after its report at step %d; stopped at step %d",
                    state["step"],
                    step,
                )
            return
        state["tokens_trained"] = state.get("tokens_trained", 0) + int(step_stats[1].item())
        state["token_slots"] = state.get("token_slots", 0) + int(step_stats[3].item())
        state["pad_slots"] = state.get("pad_slots", 0) + int((step_stats[3] - step_stats[1]).item())
        reason = divergence(step_stats[2].item() > 0, (step_stats[0] / me.world).item(), state["base_eval_loss"])
        if reason:
            # Stop at once, without raising: Ray Train would retry a raised error, and diverge again.
            state["diverged"] = {
                "step": step,
                "reason": f"{reason} at step {step} (learning_rate="
                f"{t.learning_rate:g}); lower train.learning_rate or raise train.warmup_ratio",
            }
            _report_divergence(state, spec.sweep.search, me.rank)
            return
        window += torch.stack(
            [step_stats[0] / me.world, step_stats[1], torch.ones((), dtype=torch.float64, device=me.device)]
        )
        window_time += time.perf_counter() - started
        if step % t.eval_every == 0 or step == t.max_steps:
            timeline.add(PHASE_STEPS, window_start, window_time)
            with timeline.phase(PHASE_EVAL):
                eval_loss = _evaluate(engine, val_ds, me.rank, me.world, t.eval_batch_size, me.pad_id, me.device)
            with timeline.phase(PHASE_ANSWERS):
                answers, generation_s = answer_on_ranks(model.peft, answering, me) if answering else (None, 0.0)
            opt_mb = torch.tensor(optimizer_state_mb(engine.optimizer), dtype=torch.float64, device=me.device)
            dist.all_reduce(opt_mb)
            evaluation = Evaluation(
                step=step,
                train_loss=(window[0] / window[2]).item(),
                eval_loss=eval_loss,
                perplexity=math.exp(min(eval_loss, 50.0)),
                base_eval_loss=state["base_eval_loss"],
                tokens_per_s=(window[1] / window_time).item(),
                step_time_s=window_time / window[2].item(),
                learning_rate=t.learning_rate * lr_multiplier(step - 1, t),
                peak_memory_mb=_peak_memory_mb(me.device),
                optimizer_state_mb=opt_mb.item(),
                generation_s=generation_s,
                trainable_params=model.trainable,
                tokens_trained=state["tokens_trained"],
                pad_share=state["pad_slots"] / state["token_slots"],
                trainable_fraction=model.trainable / model.total,
                epoch=step * gas * t.micro_batch_size * me.world / len(train_ds),
                diverged=0,
                converged=0,
            )
            metrics = {**evaluation.report(), **(answers.means if answers else {})}
            best_step = plateau([*state["history"], metrics], search.metric, search.mode, t.early_stopping)
            if best_step is not None and step < t.max_steps:
                metrics["converged"] = 1
                state["converged"] = {
                    "step": step,
                    "best_step": best_step,
                    "reason": converged_reason(spec.sweep, best_step),
                }
            state["step"] = step
            state["history"].append(metrics)
            with timeline.phase(PHASE_CHECKPOINT):  # recorded in the next checkpoint's state
                _report(metrics, model, state, _probe(engine, val_ds, me.device), me.rank, me.zero3, answers)
            if metrics["converged"]:
                return  # the best evaluation's checkpoint is kept (by search.metric); nothing more to learn
            window.zero_()
            window_time, window_start = 0.0, time.time()


def _scheduler(optimizer: Any, t: TrainConfig, start: int) -> Any:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_multiplier(start + i, t))
