"""Names shared across adaptune's processes and stores: trial statuses, file names on storage, MLflow tags and
aliases, retrain decisions, and the key of a LoRA target setting.

A leaf: imports nothing of adaptune (a test holds it to that), so every module can use it. A name written by
one process and read by another (a worker's checkpoint file read by the driver, a tag set by a sweep and read by
`merge`) is defined here once.
"""

from __future__ import annotations

import json

# --------------------------------------------------------------------------------------------------
# Trial statuses: the `status` column of results, the `adaptune.status` tag of a trial's run
# --------------------------------------------------------------------------------------------------

FINISHED = "finished"  # trained to train.max_steps
STOPPED_EARLY = "stopped early"  # ended by ASHA before max_steps
CONVERGED = "converged"  # ended itself: search.metric stopped improving (train.early_stopping)
DIVERGED = "diverged"  # loss became NaN/inf or exploded; stopped at once
FAILED = "failed"  # its workers failed more often than trial.max_failures allows
SKIPPED = "skipped"  # the sampled combination cannot train; recorded, not run
INTERRUPTED = "interrupted"  # the sweep was stopped (Ctrl-C, `ray job stop`) before this trial ended
TRAINED = (FINISHED, STOPPED_EARLY, CONVERGED)  # statuses whose adapter can win
TEST_METRIC = "test_eval_loss"  # a finalist's eval_loss on the test split: a results column, a run metric

# --------------------------------------------------------------------------------------------------
# The phases of a trial's wall time (records.Phase, its trainer state's `timeline`), in the order they come
# --------------------------------------------------------------------------------------------------

PHASE_TRIAL_START = "trial process start"  # Tune starts the trial's process: to adaptune's trial function
PHASE_TRIAL_SETUP = "trial set-up"  # sampled values applied and checked
PHASE_ON_DECK = "on deck"  # a trial started ahead of free workers, waiting for room (search.trials_on_deck)
PHASE_WORKERS_START = "Train controller and placement"  # fit() to a worker process existing
PHASE_WORKER_IMPORTS = "worker process and imports"  # a worker process's start to its train function
PHASE_JOIN = "process group"  # DeepSpeed imported, the process group joined
PHASE_DATA = "data open"
PHASE_MODEL = "model load"  # the base model (quantized when asked) with its adapter
PHASE_ENGINE = "DeepSpeed init"
PHASE_BASE_EVAL = "base-model evaluation"  # the untouched base model's eval_loss, the bar every trial must clear
PHASE_STEPS = "optimizer steps"  # training between two evaluations: the work a sweep pays for
PHASE_EVAL = "evaluation"  # eval_loss on the validation split
PHASE_ANSWERS = "generated answers"  # answering and scoring the evaluation prompts (eval)
PHASE_CHECKPOINT = "checkpoint and report"  # the adapter saved, persisted to storage, the result reported

# --------------------------------------------------------------------------------------------------
# Files on storage
# --------------------------------------------------------------------------------------------------

RESULTS_CSV = "results.csv"  # one row per trial, beside a sweep's Tune state
RESULTS_JSON = "results.json"
TRIALS_DIR = "trials"  # <sweep>/trials/<trial id>/checkpoint_*: each trial's Ray Train run
# <sweep>/trials/<trial id>/stop_requested: written by the sweep's driver once Tune has ended the trial (ASHA
# stopped it); its workers end at their next step. Ray Tune alone leaves them training to max_steps.
STOP_REQUEST = "stop_requested"
DATA_DIR = "data"  # <storage>/<sweep name>/data: the data prepared once per run
BASE_EVAL_DIR = "base_eval"  # <prepared data>/base_eval/<key>.json: the untouched base model's eval_loss on it
TRAINER_STATE = "trainer_state.json"  # in each checkpoint: step, history of evaluations, restarts
ADAPTER_DIR = "adapter"  # in each checkpoint: the adapter alone
PROBE_FILE = "probe.safetensors"  # in each checkpoint: a few logits to check a reloaded adapter against
# In a pissa/olora trial's checkpoint: the adapter as trained (on the decomposed base), to resume from; its
# adapter/ holds it converted to a plain LoRA on the unchanged base.
TRAINED_ADAPTER_FILE = "trained_adapter.safetensors"
ANSWERS_FILE = "answers.json"  # in each checkpoint: that evaluation's generated answers and their scores
ANSWERS_TABLE = "eval/answers.json"  # a trial run's MLflow table of them (prompt, reference, answer, scores)
ADAPTER_CONFIG = "adapter_config.json"  # peft's files of an adapter (safetensors only, never pickles)
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MODEL_CONFIG = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
EMBEDDED_DB = "mlflow.db"  # the embedded MLflow store under storage_path, when no server is configured
EMBEDDED_ARTIFACTS = "mlartifacts"
LOGS_DIR = "logs"  # <storage>/<sweep name>/logs/<run id>.log: the libraries' output of each run (adaptune.console)
RETRAIN_DIR = "retrain"  # <storage>/retrain/<registered model>/: lock, history, snapshots of each drop
RETRAIN_HISTORY = "history.jsonl"
RETRAIN_LOCK = "lock"

# --------------------------------------------------------------------------------------------------
# MLflow: run tags
# --------------------------------------------------------------------------------------------------

TAG_PARENT = "mlflow.parentRunId"  # MLflow's own: nests a trial's run under its sweep's
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_GIT_DIRTY = "adaptune.git_dirty"
TAG_KIND = "adaptune.kind"  # KIND_* below
KIND_SWEEP, KIND_TRIAL, KIND_MERGE, KIND_RETRAIN, KIND_ROLLBACK = "sweep", "trial", "merge", "retrain", "rollback"
TAG_SWEEP = "adaptune.sweep_id"
TAG_TRIAL = "adaptune.trial_id"
TAG_STATUS = "adaptune.status"  # a trial status above
TAG_STOPPED_EARLY = "adaptune.stopped_early"
TAG_REASON = "adaptune.failure_reason"  # why a trial failed, diverged or was skipped
TAG_CONVERGED = "adaptune.converged"  # why early stopping ended a trial (train.early_stopping)
TAG_MODEL_ID = "adaptune.adapter_model_id"  # the logged adapter model of a trial's run
TAG_TRACKING_NOTE = "adaptune.tracking_outage"
TAG_PARETO = "adaptune.pareto"  # on a trial's run: "true" when in the sweep's Pareto set; on the parent: the trials
TAG_HELD_OUT = "adaptune.held_out"  # what the winner's figures mean: its test score, or that it has none
TAG_WINNER_TRIAL = "adaptune.winner_trial"
TAG_WINNER_RUN = "adaptune.winner_run_id"
# a retrain run
TAG_REGISTERED_MODEL = "adaptune.registered_model"
TAG_RETRAIN_ID = "adaptune.retrain_id"
TAG_DECISION = "adaptune.decision"  # DECISIONS below
TAG_DECISION_WHY = "adaptune.decision_reason"
TAG_CHALLENGER_VERSION = "adaptune.challenger_version"
TAG_CHAMPION_AFTER = "adaptune.champion_after"
TAG_MERGED_TO = "adaptune.merged_to"
TAG_GUARD_PREFIX = "adaptune.guard"  # adaptune.guard<i>: the path of guard set i (metrics guard<i>_<name>_eval_loss)
# a rollback run
TAG_ROLLED_BACK_VERSION = "adaptune.rolled_back_version"
TAG_RESTORED_VERSION = "adaptune.restored_version"
TAG_ROLLBACK_REASON = "adaptune.reason"

# --------------------------------------------------------------------------------------------------
# MLflow: the Model Registry (version tags and aliases)
# --------------------------------------------------------------------------------------------------

CHAMPION, CHALLENGER = "champion", "challenger"
PREVIOUS_CHAMPION, ROLLED_BACK = "previous-champion", "rolled-back"
MERGED_SUFFIX = "-merged"  # a merged model is registered as <adapter's registered model>-merged
ADAPTER_MODEL_NAME = "adapter"  # the name of a trial's logged adapter model
TAG_SWEEP_RUN = "adaptune.sweep_run_id"  # on a version: the sweep (parent run) that registered it
TAG_TRIAL_RUN = "adaptune.trial_run_id"
TAG_RETRAIN_RUN = "adaptune.retrain_run_id"  # also on a retrain's sweep run: the retrain it is nested under
TAG_DIGEST = "adaptune.dataset_digest"
TAG_BASE = "adaptune.base_model"  # hub:<id>@<revision> | storage:<path under storage_path> | path:<absolute path>
TAG_BASE_FINGERPRINT = "adaptune.base_model_fingerprint"  # preflight.architecture.model_fingerprint of a local base
TAG_LORA_INIT = "adaptune.lora_init"  # how the adapter started, and for pissa/olora the form it was saved in
TAG_METRIC = "adaptune.metric"
TAG_METRIC_VALUE = "adaptune.metric_value"
TAG_TEST_VALUE = "adaptune.test_eval_loss"  # the version's eval_loss on its sweep's test split (finalists only)
TAG_ADAPTER_VERSION = "adaptune.adapter_version"  # on a merged version: the adapter version it came from
TAG_ADAPTER_MODEL = "adaptune.adapter_model"
TAG_ADAPTER_REGISTERED_MODEL = "adaptune.adapter_registered_model"
TAG_MERGE_RUN = "adaptune.merge_run_id"
TAG_RETRAIN_DECISION = "adaptune.retrain.decision"  # on a challenger version: DECISIONS below
TAG_RETRAIN_REASON = "adaptune.retrain.reason"
TAG_FROZEN_LOSS = "adaptune.frozen_eval_loss"

# Retrain decisions: on the retrain run (TAG_DECISION), its history line and the challenger (TAG_RETRAIN_DECISION)
FIRST_CHAMPION, PROMOTED, KEPT_CHAMPION, NO_OP = "first-champion", "promoted", "kept-champion", "no-op"
DECISION_FAILED = "failed"  # the round registered a challenger, then failed before deciding


# --------------------------------------------------------------------------------------------------
# LoRA targets
# --------------------------------------------------------------------------------------------------


def target_key(target: str | list[str]) -> str:
    """The key of a `lora.target_modules` setting (a named set or a list of module names) in the table of
    resolved targets the driver hands every trial."""
    return target if isinstance(target, str) else json.dumps(sorted(target))
