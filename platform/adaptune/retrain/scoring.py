"""Scoring adapters on the frozen evaluation set: the champion and a challenger are loaded one after the other in
one process, each on its full-precision base model, and scored by the same code on the same tokenized rows, so
the two numbers compare. Imports torch, transformers and peft; nothing here talks to MLflow."""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptune.config import SweepConfig
from adaptune.data import IGNORE_INDEX, find_data_files, load_records, load_tokenizer, tokenize_record
from adaptune.errors import DataError, Problem
from adaptune.merge import check_adapter_dir, load_peft_model

FROZEN_KEY = "retrain.frozen_eval_path"


@dataclass(frozen=True)
class FrozenScore:
    """An adapter's score on the frozen set: mean negative log-likelihood per response token."""

    eval_loss: float
    perplexity: float
    tokens: int  # response tokens scored
    examples: int


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


def score_adapter(
    adapter_dir: Path,
    base_model: str,
    examples: list[tuple[list[int], list[int]]],
    pad_token_id: int,
    batch_size: int,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    device: str = "cpu",
) -> FrozenScore:
    """Token-weighted mean NLL of the adapter's responses on `examples`, base model in fp32, eval mode."""
    import torch
    import torch.nn.functional as F

    trained_on = check_adapter_dir(adapter_dir).get("base_model_name_or_path")
    model = load_peft_model(adapter_dir, base_model, revision, trust_remote_code, trained_on).to(device)
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, (x, y) in enumerate(batch):
                ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            shifted = labels[:, 1:].to(device)
            flat = logits[:, :-1].reshape(-1, logits.size(-1))
            total += F.cross_entropy(flat, shifted.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum").item()
            tokens += int((shifted != IGNORE_INDEX).sum())
    del model
    gc.collect()
    loss = total / tokens
    return FrozenScore(eval_loss=loss, perplexity=math.exp(min(loss, 50.0)), tokens=tokens, examples=len(examples))


def score_adapters(cfg: SweepConfig, adapters: dict[str, str], use_gpu: bool) -> dict[str, FrozenScore]:
    """Score each named adapter directory (`{"champion": dir, "challenger": dir}`) on the sweep's frozen set and
    base model, one after the other in this one process (the body of a Ray task). An adapter trained on another
    base model does not load (ConfigError naming it)."""
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code, cfg.model.revision)
    examples = frozen_examples(cfg, tokenizer)
    device = "cuda" if use_gpu else "cpu"
    return {
        name: score_adapter(
            Path(adapter),
            cfg.model.path,
            examples,
            int(tokenizer.pad_token_id),
            cfg.retrain.eval_batch_size,
            revision=cfg.model.revision,
            trust_remote_code=cfg.model.trust_remote_code,
            device=device,
        )
        for name, adapter in adapters.items()
    }
