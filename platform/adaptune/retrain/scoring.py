"""Scoring a retrain's champion and challenger on the frozen evaluation set, one after the other in one process
by the code that scores a sweep's finalists (`adaptune.scoring`), so the two numbers compare. Nothing here talks
to MLflow."""

from __future__ import annotations

from typing import Any

from adaptune.config import SweepConfig
from adaptune.data import IGNORE_INDEX, find_data_files, load_records, load_tokenizer, tokenize_record
from adaptune.errors import DataError, Problem
from adaptune.scoring import HeldOutScore, score_adapters

FROZEN_KEY = "retrain.frozen_eval_path"


def set_examples(
    sweep: SweepConfig, tokenizer: Any, path: str | None, key: str = FROZEN_KEY
) -> list[tuple[list[int], list[int]]]:
    """An evaluation set (the frozen set, or a guard set: `key` names it) tokenized exactly as training tokenizes
    evaluation data (prompt masking, truncation).

    Raises:
        DataError: no set, a bad row, or no row with a response token left.
    """
    if not path:
        raise DataError(Problem("sweep file", key, "no frozen evaluation set", "Set retrain.frozen_eval_path"))
    records, problems = load_records(find_data_files(path, key), sweep.data)
    if problems:
        raise DataError(problems)
    examples = []
    for record in records:
        ids, labels = tokenize_record(record, tokenizer, sweep.data)
        ids, labels = ids[: sweep.data.max_seq_length], labels[: sweep.data.max_seq_length]
        if any(label != IGNORE_INDEX for label in labels):
            examples.append((ids, labels))
    if not examples:
        raise DataError(Problem(path, key, "no row keeps a response token within data.max_seq_length", "Add rows"))
    return examples


def frozen_examples(sweep: SweepConfig, tokenizer: Any) -> list[tuple[list[int], list[int]]]:
    """The frozen set, tokenized (see `set_examples`)."""
    return set_examples(sweep, tokenizer, sweep.retrain.frozen_eval_path)


def score_frozen(cfg: SweepConfig, adapters: dict[str, str], use_gpu: bool) -> dict[str, dict[str, HeldOutScore]]:
    """Score each named adapter directory (`{"champion": dir, "challenger": dir}`) on the sweep's frozen set and
    on each of its guard sets (`retrain.guard_eval_paths`), with its base model, one after the other in this one
    process (the body of a Ray task). Returns {"frozen" or a guard set's path: {name: score}}. An adapter trained
    on another base model does not load (ConfigError naming it)."""
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code, cfg.model.revision)
    pad_id, batch = int(tokenizer.pad_token_id), cfg.retrain.eval_batch_size
    sets = {"frozen": frozen_examples(cfg, tokenizer)}
    for i, path in enumerate(cfg.retrain.guard_eval_paths):
        sets[path] = set_examples(cfg, tokenizer, path, f"retrain.guard_eval_paths[{i}]")
    by_adapter = score_adapters(cfg, sets, pad_id, adapters, batch, use_gpu)  # each adapter loaded once
    return {name: {adapter: by_adapter[adapter][name] for adapter in adapters} for name in sets}
