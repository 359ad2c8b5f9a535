"""The one typed schema for sweep files and cluster profiles, and loading them with overrides.

Importable without torch, transformers or Ray: `adaptune validate` and `--help` stand on it.
"""

from __future__ import annotations

import difflib
import os
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from adaptune.errors import ConfigError, Problem, short_repr

# --------------------------------------------------------------------------------------------------
# Sweep file: what to train (model, data, LoRA, quantization, training)
# --------------------------------------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


NAMED_TARGET_SETS = ("attention", "mlp", "all-linear")
# Names that become directories under storage_path: no separators, no leading dot, so never `..`.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class ModelConfig(_Section):
    """The base model the adapters are trained on."""

    path: str = Field(
        description="Local directory of a Hugging Face causal LM (config.json, safetensors weights and a "
        "tokenizer), or a hub id such as `meta-llama/Meta-Llama-3-8B`. Relative paths resolve against the "
        "working directory, the same way on the driver and on every worker."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) when `path` is a hub id.")
    trust_remote_code: bool = Field(
        False,
        description="Run Python code shipped with the model. Off unless you trust this named model's authors.",
    )


class DataColumns(_Section):
    """Column names in the company data, per format."""

    instruction: str = Field("instruction", description="`instruction` format: the request.")
    input: str = Field("input", description="`instruction` format: optional context; the column may be absent.")
    output: str = Field("output", description="`instruction` format: the response the model should learn.")
    messages: str = Field(
        "messages", description="`chat` format: a list of {role, content} messages (system, user, assistant)."
    )
    text: str = Field("text", description="`text` format: plain text, all of it trained on.")


PROMPT_FIELDS = ("instruction", "input_block", "input_clause")
DEFAULT_PROMPT_TEMPLATE = (
    "Below is an instruction that describes a task{input_clause}. Write a response that completes the request."
    "\n\n### Instruction:\n{instruction}\n{input_block}\n### Response:\n"
)


class DataConfig(_Section):
    """The company data: where it is, its format, how it is split and tokenized."""

    path: str = Field(
        description="JSONL, CSV or Parquet data: one file, a glob (`drops/*.jsonl`) or a directory (every "
        "data file inside it, recursively, in sorted order)."
    )
    format: Literal["instruction", "chat", "text"] = Field(
        "instruction",
        description="`instruction`: instruction / optional input / output rows. `chat`: a list of role/content "
        "messages rendered with the tokenizer's chat template (a built-in template when it has none). "
        "`text`: plain completion text.",
    )
    columns: DataColumns = Field(default_factory=DataColumns, description="Column names for each format.")
    eval_path: str | None = Field(
        None, description="Validation data (same format). When set, `val_fraction` is not used."
    )
    test_path: str | None = Field(None, description="Held-out test data. When set, `test_fraction` is not used.")
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of rows held out for validation when `eval_path` is not set."
    )
    test_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="Share of rows held out for testing when `test_path` is not set."
    )
    split_seed: int = Field(0, description="Seed of the deterministic train/validation/test split.")
    max_seq_length: int = Field(512, ge=8, description="Tokens per example; longer examples are truncated and counted.")
    mask_prompt: bool = Field(
        True,
        description="Train only on response tokens (assistant messages for `chat`, `output` for `instruction`). "
        "Ignored for `text`.",
    )
    packing: bool = Field(
        False,
        description="Train on rows packed with whole examples up to `max_seq_length` tokens (far fewer pad "
        "tokens). Each example keeps its own positions and attends only to itself; validation and test are "
        "never packed.",
    )
    group_by_length: bool = Field(
        False,
        description="Batch training examples of similar length together (shuffled within groups of 50 "
        "batches): the cheaper way to cut padding, without packing. Not with `packing`.",
    )
    prompt_template: str = Field(
        DEFAULT_PROMPT_TEMPLATE,
        description="`instruction` format: the prompt, with `{instruction}`, `{input_block}` (the input and a "
        "blank line, or nothing) and `{input_clause}` placeholders. The response follows it.",
    )

    @field_validator("prompt_template")
    @classmethod
    def _prompt_template_fields_known(cls, template: str) -> str:

        try:
            parts = list(string.Formatter().parse(template))
        except ValueError as e:  # a lone brace
            raise ValueError(f"not a format string ({e}). Write literal braces as {{{{ and }}}}") from None
        for _, name, spec, conversion in parts:
            # Only bare placeholders: a format spec like {instruction:>999999999} would pad every row to a GB.
            if name is not None and (name not in PROMPT_FIELDS or spec or conversion):
                shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                raise ValueError(
                    f"unknown placeholder {shown}. Use only {', '.join('{' + f + '}' for f in PROMPT_FIELDS)}, "
                    "and write literal braces as {{ and }}"
                )
        return template

    @model_validator(mode="after")
    def _one_way_to_cut_padding(self) -> DataConfig:
        if self.packing and self.group_by_length:
            raise ValueError(
                "packing and group_by_length are both on; packed rows have no padding to group away. Set one"
            )
        return self

    @model_validator(mode="after")
    def _fractions_leave_training_rows(self) -> DataConfig:
        used = (0.0 if self.eval_path else self.val_fraction) + (0.0 if self.test_path else self.test_fraction)
        if used >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction is {used:g}, leaving no training rows. Keep their sum below 1"
            )
        return self


class LoraConfig(_Section):
    """The LoRA adapter (peft)."""

    r: int = Field(8, gt=0, le=4096, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: str | list[str] = Field(
        "attention",
        description="Layers that get adapters: a named set resolved per architecture (`attention`, `mlp`, "
        "`all-linear`) or an explicit list of module names (`[q_proj, v_proj]`).",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases are trained.")
    use_dora: bool = Field(
        False,
        description="DoRA: learn each adapted weight's magnitude apart from its direction (a magnitude vector "
        "per layer on top of LoRA's A and B; slower steps).",
    )
    use_rslora: bool = Field(
        False,
        description="rsLoRA: scale the update by alpha / sqrt(r) instead of alpha / r, so that higher ranks keep "
        "learning. With `lora.alpha: {multiple_of_rank: k}` the scale is then k * sqrt(r).",
    )
    init: Literal["default", "gaussian", "pissa", "olora", "loftq", "eva"] = Field(
        "default",
        description="How A and B start: `default` (A Kaiming-uniform, B zero: the update starts at 0), "
        "`gaussian` (A Gaussian), `pissa` (A and B from the weight's top singular vectors, the rest left in "
        "the base), `olora` (from a QR decomposition of the weight), `loftq` (QLoRA: A and B that cancel "
        "the 4-bit quantization error; needs `quantization.mode: 4bit`), `eva` (data-driven: the top "
        "singular vectors of each layer's inputs on training batches, ranks redistributed across layers). "
        "pissa and olora change the base weights they train on: their adapter is saved converted to a plain "
        "LoRA of rank 2r on the unchanged base, so it loads, merges and serves like any other.",
    )

    @model_validator(mode="after")
    def _target_modules_well_formed(self) -> LoraConfig:
        t = self.target_modules
        if isinstance(t, str) and t not in NAMED_TARGET_SETS:
            raise ValueError(
                f"target_modules {t!r} is not a named set. Use one of {', '.join(NAMED_TARGET_SETS)}, "
                "or a list of module names"
            )
        if isinstance(t, list) and (not t or any(not m.strip() for m in t)):
            raise ValueError("target_modules list is empty or has an empty name. Give module names like q_proj")
        return self


Dtype = Literal["auto", "bf16", "fp16", "fp32"]


class QuantizationConfig(_Section):
    """Quantization of the frozen base model (QLoRA)."""

    mode: Literal["none", "4bit", "8bit"] = Field(
        "none", description="`4bit`: QLoRA (bitsandbytes NF4/FP4). `8bit`: LLM.int8. `none`: plain LoRA."
    )
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    double_quant: bool = Field(True, description="Quantize the 4-bit quantization constants too.")
    compute_dtype: Dtype = Field("auto", description="dtype of 4-bit matmuls; `auto` follows the training precision.")
    quant_storage: Literal["auto", "uint8", "bf16", "fp16", "fp32"] = Field(
        "auto",
        description="Storage dtype of packed 4-bit weights. ZeRO-3 needs it equal to the compute dtype, which "
        "`auto` picks under ZeRO-3 (uint8 otherwise).",
    )


class EarlyStopping(_Section):
    """Within one trial: end it once `search.metric` has stopped improving, keeping the adapter of its best
    evaluation. Counted in evaluation rounds (one round = `train.eval_every` steps), like ASHA."""

    patience: int | None = Field(
        None,
        gt=0,
        description="Evaluation rounds without an improvement after which the trial ends, as `converged` "
        "(e.g. 3). Empty: off; every trial that is not stopped otherwise trains to `train.max_steps`.",
    )
    min_delta: float = Field(
        0.0,
        ge=0.0,
        description="The least change of `search.metric`, in `search.mode`'s direction, that counts as an improvement.",
    )


class TrainConfig(_Section):
    """The training loop on each worker."""

    learning_rate: float = Field(
        2e-4, gt=0, description="Peak learning rate (AdamW). A trial whose loss then diverges stops at once."
    )
    max_steps: int = Field(100, gt=0, description="Optimizer steps per trial.")
    micro_batch_size: int = Field(4, gt=0, description="Examples per worker per forward pass.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0, description="Share of `max_steps` spent warming up.")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warmup.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0.0, description="Gradient clipping norm; 0 turns clipping off.")
    eval_every: int = Field(
        20, gt=0, description="Evaluate, report and checkpoint every this many optimizer steps (and at the end)."
    )
    eval_batch_size: int = Field(8, gt=0, description="Examples per worker per evaluation forward pass.")
    seed: int = Field(0, description="Seed for model init of the adapter and data order.")
    precision: Dtype = Field("auto", description="`auto`: bf16 on GPU, fp32 on CPU.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw", "paged_adamw_8bit"] = Field(
        "adamw",
        description="`adamw` (DeepSpeed's, fused on GPUs), `adamw_8bit` (bitsandbytes: optimizer state in 8 "
        "bits for tensors of at least 4096 elements), `paged_adamw` and `paged_adamw_8bit` (QLoRA's paged "
        "optimizers: state in CUDA unified memory, paged out under memory pressure; GPU workers only).",
    )
    loraplus_lr_ratio: float | None = Field(
        None,
        gt=0,
        description="LoRA+: the B matrices learn at this many times `learning_rate` (the paper suggests 16); "
        "empty: one learning rate for all.",
    )
    attention: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa",
        description="The attention implementation: `sdpa` (torch's scaled dot-product attention), `eager` "
        "(transformers' reference code) or `flash_attention_2` (GPU workers with the flash-attn package).",
    )
    early_stopping: EarlyStopping = Field(
        default_factory=EarlyStopping, description="End a trial whose `search.metric` has stopped improving."
    )

    @model_validator(mode="after")
    def _eval_within_budget(self) -> TrainConfig:
        if self.eval_every > self.max_steps:
            raise ValueError(
                f"eval_every ({self.eval_every}) is larger than max_steps ({self.max_steps}), so no evaluation "
                "would run before the end. Set eval_every to at most max_steps"
            )
        return self


BUILTIN_SCORERS = ("exact_match", "token_f1", "rouge_l")  # adaptune.evaluation computes these
MAX_EVAL_SAMPLES = 256  # prompts prepared per split for generation (data preparation keeps this many)


class EvalConfig(_Section):
    """Generated answers, scored: at every evaluation round each trial answers the same fixed validation prompts
    (instruction rows through the prompt template, chat rows through the chat template, up to their last
    assistant turn) and its answers are scored against the reference answers. Every score is reported like a
    metric, so `search.metric` may name one (higher is better: `search.mode: max`). Text data has no reference
    answers: nothing is generated for it."""

    samples: int = Field(
        8,
        ge=0,
        le=MAX_EVAL_SAMPLES,
        description="Validation prompts answered at every evaluation round: the first this many rows of the "
        "validation split, the same for every trial (and of the test split for the finalists). 0: no generation.",
    )
    max_new_tokens: int = Field(48, gt=0, description="Most tokens generated per answer (an answer ends at EOS).")
    temperature: float = Field(
        0.0, ge=0.0, description="0: greedy decoding (deterministic, comparable across trials); above 0: sampling."
    )
    batch_size: int = Field(8, gt=0, description="Prompts per worker per generate call.")
    scorers: list[str] = Field(
        default_factory=lambda: list(BUILTIN_SCORERS),
        min_length=1,
        description="Scores of each answer against its reference, each reported as the mean over the prompts: "
        "`exact_match`, `token_f1` (SQuAD normalisation) and `rouge_l` (ROUGE-L F-measure), from torchmetrics, "
        "plus the names of functions defined in `scorers_file`.",
    )
    scorers_file: str | None = Field(
        None,
        description="A Python file of your own scorers: each name in `scorers` that is not built in is a "
        "function there, `def NAME(prompt: str, reference: str, answer: str) -> float`, higher is better "
        "(e.g. 0..1). One that raises on an answer leaves that answer's score missing (named in the trial's log).",
    )

    @field_validator("scorers")
    @classmethod
    def _distinct_scorers(cls, v: list[str]) -> list[str]:
        repeated = sorted({n for n in v if v.count(n) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repeated)} named more than once. Name each scorer once")
        bad = [n for n in v if not n.isidentifier()]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a Python function name. Name scorers like `exact_match`")
        return v

    def generates(self, data_format: str) -> bool:
        """Whether trials generate answers: some samples asked for, and data with reference answers."""
        return self.samples > 0 and data_format != "text"


class AshaConfig(_Section):
    """ASHA early stopping, counted in evaluation rounds (one round = `train.eval_every` steps)."""

    grace_period: int = Field(1, gt=0, description="Evaluation rounds every trial runs before it may be stopped.")
    reduction_factor: float = Field(
        2.0, gt=1.0, description="Only the best 1/reduction_factor of trials go on at each rung."
    )


class SearchConfig(_Section):
    """The hyperparameter search: the space, how it is sampled, and when trials stop early."""

    space: dict[str, Any] = Field(
        default_factory=dict,
        description="Dotted keys into this schema (`lora.r`, `lora.target_modules`, `train.learning_rate`, "
        "`quantization.mode`, ...) mapped to one distribution: `choice`, `grid`, `uniform`, `loguniform`, "
        "`randint` or `qrandint`, e.g. `lora.r: {choice: [8, 16, 32]}`. `lora.alpha: {multiple_of_rank: k}` "
        "searches alpha as k * r (k a number or a distribution).",
    )
    algorithm: Literal["random", "grid", "optuna"] = Field(
        "random", description="`random` sampling, exhaustive `grid`, or Optuna TPE (`optuna`)."
    )
    num_samples: int | None = Field(
        None,
        gt=0,
        description="Trials to run; with `grid`, how many times the whole grid runs. Empty: 8, or 1 with `grid`.",
    )
    points_to_evaluate: list[dict[str, Any]] = Field(
        default_factory=list, description="Known-good starting points, each a mapping of dotted keys to values."
    )
    scheduler: Literal["asha", "none"] = Field("asha", description="`asha` stops bad trials early; `none` runs all.")
    asha: AshaConfig = Field(default_factory=AshaConfig, description="ASHA settings.")
    metric: str = Field(
        "eval_loss",
        description="The reported metric the search optimises (and early stopping watches): `eval_loss`, another "
        "reported metric, or a score of the generated answers (a name in `eval.scorers`, with `mode: max`).",
    )
    finalists: int = Field(
        3,
        ge=0,
        description="After the search, this many best trials (by `metric`) are scored on the test split "
        "(`data.test_fraction` or `data.test_path`), which took no part in choosing them; the winner is still "
        "chosen on validation. 0: none.",
    )
    mode: Literal["min", "max"] = Field("min", description="Whether lower or higher `metric` is better.")
    max_concurrent_trials: int | None = Field(
        None, gt=0, description="Trials at once. Empty: as many as the cluster holds."
    )
    trials_on_deck: int = Field(
        1,
        ge=0,
        description="Trials started ahead of free workers: their processes start (and import the training stack) "
        "while earlier trials train, and their workers start the moment workers free up, instead of each trial "
        "starting only after the last one ended. Their settings are sampled that much earlier (Optuna sees one "
        "result fewer). 0: a trial starts only when its workers can.",
    )
    seed: int = Field(0, description="Seed of the search algorithm.")


class MlflowTracking(_Section):
    """Where the sweep shows up in MLflow and which registered model its winner becomes a version of."""

    experiment: str | None = Field(None, description="MLflow experiment of the sweep's runs. Empty: the sweep's name.")
    registered_model: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description="Registered model the winning adapter becomes a new version of (alias `challenger`; also "
        "`champion` when the model has none yet). Empty: the sweep's name. Its retraining state is kept under "
        "`<storage_path>/retrain/<registered model>/`, hence the same characters as `name`.",
    )
    register_winner: bool = Field(True, description="Register the winner; false only tracks the runs.")


class RetrainConfig(_Section):
    """Scheduled retraining (`adaptune retrain`): how a new data drop is trained on, judged and promoted."""

    frozen_eval_path: str | None = Field(
        None,
        description="The frozen evaluation set: held-out data (same format) the champion and every challenger "
        "are scored on, never trained on. Required by `adaptune retrain`; validate refuses it when any of its "
        "prompts is also in the training data.",
    )
    data_mode: Literal["combine", "replace"] = Field(
        "combine",
        description="`combine`: train on the champion's data snapshots plus the new drop. `replace`: train on "
        "the new drop alone.",
    )
    margin: float = Field(
        0.01,
        ge=0.0,
        description="Promote the challenger only if its frozen-set eval_loss is lower than the champion's by at "
        "least this much (absolute, in nats per response token).",
    )
    guard_eval_paths: list[str] = Field(
        default_factory=list,
        description="Guard sets (same format): older evaluation sets (earlier drops, general tasks) the challenger "
        "must not forget. It is scored on each beside the champion and kept out when worse than the champion on "
        "any by more than `guard_tolerance`, however much it gains on the frozen set. Never trained on: validate "
        "refuses one whose prompts are in the training data.",
    )
    guard_tolerance: float = Field(
        0.02,
        ge=0.0,
        description="How much higher than the champion's a challenger's eval_loss on a guard set may be (absolute, "
        "in nats per response token) before it counts as forgetting that set.",
    )
    num_samples: int | None = Field(
        4,
        gt=0,
        description="Trials per retrain (a smaller budget than a fresh sweep; the champion's values go first). "
        "Empty: `search.num_samples`.",
    )
    max_steps: int | None = Field(None, gt=0, description="Steps per retrain trial. Empty: `train.max_steps`.")
    eval_batch_size: int = Field(8, gt=0, description="Examples per forward pass when scoring on the frozen set.")
    merge_dir: str | None = Field(
        None,
        description="When set, a newly promoted champion is merged into its base model here (`adaptune merge`), "
        "replacing what is there, and registered as `<registered model>-merged`.",
    )
    lock_ttl_minutes: float = Field(
        15.0,
        gt=0,
        description="A running retrain renews its lock every few minutes; a lock not renewed for this long "
        "(its retrain crashed) is taken over by the next retrain.",
    )


class SweepConfig(_Section):
    """A sweep file: what to train. `adaptune train` runs its base values as one trial."""

    name: str = Field(
        pattern=NAME_PATTERN,
        description="Name of the sweep; runs are stored under `<storage_path>/<name>/`.",
    )
    model: ModelConfig = Field(description="The base model.")
    data: DataConfig = Field(description="The company data.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="The LoRA adapter.")
    quantization: QuantizationConfig = Field(
        default_factory=QuantizationConfig, description="Base-model quantization (QLoRA)."
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="The training loop.")
    eval: EvalConfig = Field(
        default_factory=EvalConfig, description="Generated answers to validation prompts, scored at every evaluation."
    )
    search: SearchConfig = Field(default_factory=SearchConfig, description="The hyperparameter search.")
    mlflow: MlflowTracking = Field(default_factory=MlflowTracking, description="MLflow experiment and registry.")
    retrain: RetrainConfig = Field(default_factory=RetrainConfig, description="Scheduled retraining on new data.")

    @property
    def experiment_name(self) -> str:
        return self.mlflow.experiment or self.name

    @property
    def registered_model_name(self) -> str:
        return self.mlflow.registered_model or self.name


# --------------------------------------------------------------------------------------------------
# Cluster profile: where it runs (Ray, resources, DeepSpeed, storage)
# --------------------------------------------------------------------------------------------------


class RayConfig(_Section):
    """The Ray cluster."""

    address: str | None = Field(
        None,
        description="Address of a running Ray cluster (`auto`, `ray://host:10001`, `host:6379`). Empty: the "
        "`RAY_ADDRESS` environment variable if set, else a local Ray started in-process on this machine.",
    )


class ClusterCapacity(_Section):
    """What the cluster holds, used to check that trials fit before anything starts."""

    nodes: int = Field(
        1, gt=0, description="Nodes at full size, the head included. Above 1, storage_path must be shared storage."
    )
    cpus: float | None = Field(
        None,
        ge=0,
        description="CPUs trials may use at full size (autoscaled workers included); sets trials at once. "
        "Empty: this machine's CPUs (local use).",
    )
    gpus: float | None = Field(
        None,
        ge=0,
        description="GPUs at full size (autoscaled workers included); sets trials at once. "
        "Empty: this machine's GPUs (local use).",
    )


class TrialResources(_Section):
    """What one trial reserves: its Ray Train workers."""

    num_workers: int = Field(2, gt=0, description="Ray Train workers (DeepSpeed ranks) per trial.")
    use_gpu: bool = Field(False, description="One GPU per worker, NCCL; otherwise CPU workers over gloo.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs each worker reserves.")
    gpus_per_worker: float = Field(1.0, ge=0, description="GPUs each worker reserves when `use_gpu` is true.")
    max_failures: int = Field(
        2, ge=0, description="Worker losses a trial survives; it restarts from its last adapter checkpoint."
    )


class DeepSpeedConfig(_Section):
    """DeepSpeed settings shared by every trial."""

    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="ZeRO stage.")
    offload_optimizer: bool = Field(False, description="ZeRO-Offload: optimizer state in CPU memory.")
    offload_params: bool = Field(False, description="ZeRO-3 only: parameters in CPU memory.")

    @model_validator(mode="after")
    def _offload_params_needs_zero3(self) -> DeepSpeedConfig:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError(
                f"offload_params needs zero_stage 3 (got {self.zero_stage}). Set zero_stage: 3 or offload_params: false"
            )
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3 (got 0). Raise zero_stage")
        return self


class MlflowServer(_Section):
    """The MLflow tracking server (and model registry) this cluster reports to."""

    tracking_uri: str | None = Field(
        None,
        description="Tracking server URI, e.g. `http://mlflow.internal:5000` (an `mlflow server` with a "
        "PostgreSQL backend store). Empty: the `MLFLOW_TRACKING_URI` environment variable if set, else the "
        "embedded store `sqlite:///<storage_path>/mlflow.db` with artifacts under `<storage_path>/mlartifacts`.",
    )


class ClusterProfile(_Section):
    """A cluster profile: where trials run. Without one, the embedded default (this machine) is used."""

    ray: RayConfig = Field(default_factory=RayConfig, description="The Ray cluster.")
    capacity: ClusterCapacity = Field(default_factory=ClusterCapacity, description="What the cluster holds.")
    trial: TrialResources = Field(default_factory=TrialResources, description="Resources per trial.")
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig, description="DeepSpeed settings.")
    mlflow: MlflowServer = Field(default_factory=MlflowServer, description="The MLflow tracking server.")
    storage_path: str = Field(
        "./adaptune-runs",
        description="Where checkpoints, tokenized data and results go. Must be reachable from every node "
        "(a shared filesystem mounted at the same path on every node) when the cluster has more than one node.",
    )
    min_free_gb: float = Field(
        1.0,
        ge=0,
        description="Refuse to start when storage_path has less free space than this (GiB): checkpoints and the "
        "tokenized data would fill it mid-run. A run that fills it anyway stops with an error naming the path.",
    )

    @model_validator(mode="after")
    def _gpu_request_consistent(self) -> ClusterProfile:
        if self.trial.use_gpu and self.trial.gpus_per_worker == 0:
            raise ValueError(
                "trial.use_gpu is true but trial.gpus_per_worker is 0. Set gpus_per_worker > 0 or use_gpu: false"
            )
        return self


# --------------------------------------------------------------------------------------------------
# Loading: YAML -> overrides -> schema, every problem reported at once
# --------------------------------------------------------------------------------------------------

CLUSTER_PREFIX = "cluster."
# Names people bring from other tools, for "did you mean" where spelling alone would not find ours.
SYNONYMS = {
    "rank": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "lr": "learning_rate",
    "batch_size": "micro_batch_size",
    "steps": "max_steps",
    "num_gpus": "use_gpu",
    "stage": "zero_stage",
}


MAX_YAML_BYTES = 256 * 1024  # a sweep file or profile is a few KB; a bigger one is the wrong file
MAX_YAML_DEPTH = 32  # the schema nests about 6 deep
MAX_YAML_VALUES = 100_000  # after aliases are expanded; a sweep file holds a few hundred


class _YamlShapeError(ValueError):
    """A YAML document too big, too deep or self-referencing to read safely, at `line`."""

    def __init__(self, message: str, line: int):
        super().__init__(message)
        self.line = line


def _check_yaml_shape(root: yaml.Node) -> None:
    """Refuse a composed document whose expansion is huge ("billion laughs": aliases of aliases are shared
    nodes until constructed, then every consumer walks each copy), deep, or cyclic, before anything builds it."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        line = node.start_mark.line + 1
        if depth > MAX_YAML_DEPTH:
            raise _YamlShapeError(f"YAML nested more than {MAX_YAML_DEPTH} levels deep", line)
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise _YamlShapeError("YAML alias refers to a node that contains it (a cycle)", line)
        open_nodes.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        total = 1
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_YAML_VALUES:
                raise _YamlShapeError(
                    f"YAML expands to more than {MAX_YAML_VALUES} values (each use of an alias counts its values)",
                    line,
                )
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    size(root, 0)


def load_yaml(text: str) -> Any:
    """`yaml.safe_load`, refusing documents that would expand past MAX_YAML_VALUES through anchors and
    aliases, nest deeper than MAX_YAML_DEPTH, or contain themselves.

    Raises:
        yaml.YAMLError: invalid YAML. _YamlShapeError: see above. RecursionError: nesting too deep to parse.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_shape(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _read_yaml(path: str | Path, what: str) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        listing = sorted(x.name for x in p.parent.glob("*.yaml")) if p.parent.is_dir() else []
        close = difflib.get_close_matches(p.name, listing, n=1)
        hint = (f"Did you mean {p.parent / close[0]}? " if close else "") + (
            f"Files there: {', '.join(listing[:12])}" if listing else "Check the path"
        )
        broken = " (a symlink that does not resolve)" if p.is_symlink() else ""
        raise ConfigError(Problem(str(path), "", f"{what} not found{broken}", hint))
    if p.is_dir():
        listing = sorted(x.name for x in p.glob("*.yaml"))
        hint = f"Give one of the files in it: {', '.join(listing[:12])}" if listing else "Give a YAML file"
        raise ConfigError(Problem(str(path), "", f"{what} is a directory, not a file", hint))
    if not p.is_file():
        raise ConfigError(
            Problem(str(path), "", f"{what} is not a regular file (a device, pipe or socket)", "Give a YAML file")
        )
    with p.open("rb") as f:
        raw = f.read(MAX_YAML_BYTES + 1)
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(
            Problem(
                str(path),
                "",
                f"{what} is larger than {MAX_YAML_BYTES // 1024} KiB",
                f"A {what} is a few KB of YAML: check that this is the right file",
            )
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            Problem(str(path), f"line {line}", f"not UTF-8 text (byte {e.start})", "Save it as UTF-8 text")
        ) from None
    try:
        data = load_yaml(text)
    except _YamlShapeError as e:
        raise ConfigError(
            Problem(str(path), f"line {e.line}", str(e), "Write the values out plainly, a few levels deep")
        ) from None
    except RecursionError:
        raise ConfigError(
            Problem(str(path), "", "YAML nested too deeply to read", "Write the values out, a few levels deep")
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        reason = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(Problem(str(path), where, f"invalid YAML: {reason}", "Fix the YAML syntax")) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            Problem(
                str(path),
                "",
                f"expected a mapping of keys at the top, got {type(data).__name__}",
                "Write the file as `key: value` lines",
            )
        )
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `lora.r=16` into (["lora", "r"], 16); the value is parsed as YAML (numbers, lists, null)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(
            Problem("command line", text, "override is not `dotted.key=value`", "Write it like lora.r=16")
        )
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    except (_YamlShapeError, RecursionError):
        raise ConfigError(
            Problem("command line", key.strip(), "override value nests or repeats too much", "Give a plain value")
        ) from None
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 as text
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip().split("."), value


def _set_dotted(data: dict[str, Any], keys: list[str], value: Any) -> None:
    node = data
    for k in keys[:-1]:
        child = node.get(k)
        if not isinstance(child, dict):
            child = {}
            node[k] = child
        node = child
    node[keys[-1]] = value


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names valid at `loc` (the parent of a bad key), for "did you mean" suggestions."""
    current: Any = model
    for part in loc:
        field = current.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return []
    return list(current.model_fields)


def _problems_from_validation(
    err: ValidationError, model: type[BaseModel], source: str, overridden: dict[str, str], prefix: str = ""
) -> list[Problem]:
    problems = []
    for e in err.errors(include_url=False):
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # Drop union/literal branch names pydantic appends (e.g. 'list[str]', 'str').
        loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in ("str", "int", "float"))))
        key = ".".join(str(p) for p in loc)
        shown_key = f"{prefix}{key}" if key else prefix.rstrip(".")
        src = f"{source} (override {overridden[key]})" if key in overridden else source
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            known = _field_names(model, loc[:-1])
            synonym = SYNONYMS.get(str(loc[-1]))
            close = [synonym] if synonym in known else difflib.get_close_matches(str(loc[-1]), known, n=1)
            fix = (
                f"Did you mean `{prefix}{'.'.join(map(str, loc[:-1] + (close[0],)))}`?"
                if close
                else (f"Known keys here: {', '.join(known)}" if known else "Remove it")
            )
            problems.append(Problem(src, shown_key, "unknown key", fix))
        elif e["type"] == "missing":
            problems.append(Problem(src, shown_key, "required key is missing", "Add it"))
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = "" if isinstance(value, dict) else f" (got {short_repr(value)})"
            fix = ""
            if ". " in msg and e["type"] == "value_error":
                msg, _, fix = msg.partition(". ")
            problems.append(Problem(src, shown_key, f"{msg}{got}", fix or _generic_fix(e)))
    return problems


def _generic_fix(e: dict[str, Any]) -> str:
    ctx = e.get("ctx") or {}
    if e["type"] == "finite_number":
        return "Use a finite number"
    if "expected" in ctx:
        return f"Use one of {ctx['expected']}"
    for bound, word in (("gt", "greater than"), ("ge", "at least"), ("lt", "less than"), ("le", "at most")):
        if bound in ctx:
            return f"Use a value {word} {ctx[bound]}"
    if "pattern" in ctx:
        return "Use letters, digits, '.', '_' or '-' (at most 64 characters)"
    if e["type"].endswith("_type") or e["type"].endswith("_parsing"):
        return "Fix the value's type"
    return ""


def _validate(model: type[BaseModel], data: dict[str, Any], source: str, overridden: dict[str, str], prefix: str = ""):
    try:
        return model.model_validate(data), []
    except ValidationError as err:
        return None, _problems_from_validation(err, model, source, overridden, prefix)


def read_configs(
    sweep_path: str | Path, cluster_path: str | Path | None = None, overrides: list[str] | None = None
) -> tuple[SweepConfig | None, ClusterProfile | None, list[Problem]]:
    """Load a sweep file and an optional cluster profile, apply `key=value` overrides, validate each.

    Overrides starting with `cluster.` go to the cluster profile; the rest to the sweep file. Returns
    whichever of the two validated (None for the other) and every problem found in both.
    """
    problems: list[Problem] = []
    raws: dict[str, dict[str, Any] | None] = {"sweep": None, "cluster": {}}
    for name, path, what in (("sweep", sweep_path, "sweep file"), ("cluster", cluster_path, "cluster profile")):
        if path is None:
            continue
        try:
            raws[name] = _read_yaml(path, what)
        except ConfigError as e:
            problems += e.problems
            raws[name] = None
    sweep_over: dict[str, str] = {}
    cluster_over: dict[str, str] = {}
    for text in overrides or []:
        try:
            keys, value = parse_override(text)
        except ConfigError as e:
            problems.extend(e.problems)
            continue
        if text.startswith(CLUSTER_PREFIX):
            if raws["cluster"] is not None:
                _set_dotted(raws["cluster"], keys[1:], value)
            cluster_over[".".join(keys[1:])] = text
        else:
            if raws["sweep"] is not None:
                _set_dotted(raws["sweep"], keys, value)
            sweep_over[".".join(keys)] = text
    sweep = cluster = None
    if raws["sweep"] is not None:
        sweep, found = _validate(SweepConfig, raws["sweep"], str(sweep_path), sweep_over)
        problems += found
    if raws["cluster"] is not None:
        cluster_src = str(cluster_path) if cluster_path else "embedded default cluster"
        cluster, found = _validate(
            ClusterProfile, raws["cluster"], cluster_src, cluster_over, prefix="" if cluster_path else CLUSTER_PREFIX
        )
        problems += found
    return sweep, cluster, problems


def load_config(
    sweep_path: str | Path, cluster_path: str | Path | None = None, overrides: list[str] | None = None
) -> tuple[SweepConfig, ClusterProfile]:
    """`read_configs`, raising unless both files are valid.

    Raises:
        ConfigError: with every problem in both files and the overrides, one line each.
    """
    sweep, cluster, problems = read_configs(sweep_path, cluster_path, overrides)
    if problems or sweep is None or cluster is None:
        raise ConfigError(problems)
    return sweep, cluster


# --------------------------------------------------------------------------------------------------
# Derived values used on both sides of the process boundary
# --------------------------------------------------------------------------------------------------


def resolve_precision(sweep: SweepConfig, cluster: ClusterProfile) -> str:
    """Training precision: bf16 on GPU and fp32 on CPU unless configured."""
    if sweep.train.precision != "auto":
        return sweep.train.precision
    return "bf16" if cluster.trial.use_gpu else "fp32"


def resolve_quant_storage(sweep: SweepConfig, cluster: ClusterProfile) -> str:
    """Packed 4-bit storage dtype: the compute dtype under ZeRO-3 (DeepSpeed shards it), uint8 otherwise."""
    q = sweep.quantization
    if q.quant_storage != "auto":
        return q.quant_storage
    return resolve_compute_dtype(sweep, cluster) if cluster.deepspeed.zero_stage == 3 else "uint8"


def resolve_compute_dtype(sweep: SweepConfig, cluster: ClusterProfile) -> str:
    """dtype of quantized matmuls: follows the training precision unless configured."""
    q = sweep.quantization
    return resolve_precision(sweep, cluster) if q.compute_dtype == "auto" else q.compute_dtype


def resolve_path(path: str) -> Path:
    """Resolve a config path the same way on every process: `~` expanded, relative to the working directory."""
    return Path(os.path.expanduser(path))


def model_source(path: str) -> str:
    """A local model directory as an absolute path string; anything that does not exist locally is a hub id."""
    local = resolve_path(path)
    return str(local.resolve()) if local.exists() else path
