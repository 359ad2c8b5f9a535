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


def frozen_examples(sweep: SweepConfig, tokenizer: Any) -> list[tuple[list[int], list[int]]]:
    """The frozen set tokenized exactly as training tokenizes evaluation data (prompt masking, truncation).

    Raises:
        DataError: a bad row, or no row with a response token left.
    """
    path = sweep.retrain.frozen_eval_path
    if not path:
        raise DataError(Problem("sweep file", FROZEN_KEY, "no frozen evaluation set", "Set retrain.frozen_eval_path"))
    records, problems = load_records(find_data_files(path, FROZEN_KEY), sweep.data)
    if problems:
        raise DataError(problems)
    examples = []
    for record in records:
        ids, labels = tokenize_record(record, tokenizer, sweep.data)
        ids, labels = ids[: sweep.data.max_seq_length], labels[: sweep.data.max_seq_length]
        if any(label != IGNORE_INDEX for label in labels):
            examples.append((ids, labels))
    if not examples:
        raise DataError(
            Problem(path, FROZEN_KEY, "no row keeps a response token within data.max_seq_length", "Add rows")
        )
    return examples


def score_frozen(cfg: SweepConfig, adapters: dict[str, str], use_gpu: bool) -> dict[str, HeldOutScore]:
    """Score each named adapter directory (`{"champion": dir, "challenger": dir}`) on the sweep's frozen set and
    base model, one after the other in this one process (the body of a Ray task). An adapter trained on another
    base model does not load (ConfigError naming it)."""
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code, cfg.model.revision)
    examples, pad_id = frozen_examples(cfg, tokenizer), int(tokenizer.pad_token_id)
    return score_adapters(cfg, examples, pad_id, adapters, cfg.retrain.eval_batch_size, use_gpu)
