"""Scoring adapters on a held-out set after training: each adapter loaded on its full-precision base model, one
after the other in one process, and scored by the same code on the same tokenized rows, so the numbers compare.
Two callers: a sweep's finalists on its test split (`score_split`), and a retrain's champion and challenger on
the frozen set (`retrain.scoring`). Heavy imports (torch, transformers, peft) stay inside the functions: the
driver imports this module, the work runs in a Ray task."""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from adaptune.config import SweepConfig
from adaptune.data import IGNORE_INDEX, open_split
from adaptune.evaluation import Answering, answer_and_score, load_answering
from adaptune.merge import check_adapter_dir, load_peft_model

Examples = list[tuple[list[int], list[int]]]  # (input ids, labels with IGNORE_INDEX on prompt tokens)


@dataclass(frozen=True)
class HeldOutScore:
    """An adapter's score on a held-out set: mean negative log-likelihood per response token, the same
    token-weighted loss as a trial's eval_loss."""

    eval_loss: float
    perplexity: float
    tokens: int  # response tokens scored
    examples: int
    scores: dict[str, float] = field(default_factory=dict)  # the generated answers' mean scores (eval), if any
    prompts: int = 0  # prompts answered for them


def score_adapter(
    adapter_dir: Path,
    base_model: str,
    examples: Examples | dict[str, Examples],
    pad_token_id: int,
    batch_size: int,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    device: str = "cpu",
    answering: Answering | None = None,
) -> Any:
    """Token-weighted mean NLL of the adapter's responses on `examples`, base model in fp32, eval mode; with
    `answering`, also its generated answers to those prompts, scored. `examples` may be several named sets
    (a retrain's frozen set and guard sets): the model is loaded once and a score returned per set."""
    trained_on = check_adapter_dir(adapter_dir).get("base_model_name_or_path")
    model = load_peft_model(adapter_dir, base_model, revision, trust_remote_code, trained_on).to(device)
    sets = examples if isinstance(examples, dict) else {"": examples}
    out = {}
    for name, rows in sets.items():
        total, tokens = _nll(model, rows, pad_token_id, batch_size, device)
        loss = total / tokens
        out[name] = HeldOutScore(loss, math.exp(min(loss, 50.0)), tokens, len(rows))
    if answering is not None and answering.prompts:
        scores = answer_and_score(model, answering, device).means
        out = {name: replace(score, scores=scores, prompts=len(answering.prompts)) for name, score in out.items()}
    del model
    gc.collect()
    return out if isinstance(examples, dict) else out[""]


def _nll(model: Any, examples: Examples, pad_token_id: int, batch_size: int, device: str) -> tuple[float, int]:
    """Summed negative log-likelihood of the response tokens of `examples`, and how many there are."""
    import torch
    import torch.nn.functional as F

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
    return total, tokens


def score_adapters(
    cfg: SweepConfig,
    examples: Examples | dict[str, Examples],
    pad_token_id: int,
    adapters: dict[str, str],
    batch_size: int,
    use_gpu: bool,
    answering: Answering | None = None,
) -> dict[str, Any]:
    """Score each named adapter directory on `examples` (or on each of several named sets: {adapter: {set:
    score}}) with the sweep's base model, one after the other in this one process, each loaded once. An adapter
    trained on another base model does not load (ConfigError naming it)."""
    device = "cuda" if use_gpu else "cpu"
    return {
        name: score_adapter(
            Path(adapter),
            cfg.model.path,
            examples,
            pad_token_id,
            batch_size,
            revision=cfg.model.revision,
            trust_remote_code=cfg.model.trust_remote_code,
            device=device,
            answering=answering,
        )
        for name, adapter in adapters.items()
    }


def split_examples(data_dir: str, split: str) -> Examples:
    """The rows of one split of a run's prepared (tokenized) data: what its trials trained and evaluated on."""
    rows: Any = open_split(data_dir, split)
    return [(list(r["input_ids"]), list(r["labels"])) for r in rows]


def score_split(
    cfg: SweepConfig,
    data_dir: str,
    split: str,
    pad_token_id: int,
    adapters: dict[str, str],
    use_gpu: bool,
    scorer_code: tuple[str, str] | None = None,
) -> dict[str, HeldOutScore]:
    """Score each named adapter on a split of the run's prepared data (the body of a Ray task): the finalists of
    a sweep on its test split, which took no part in choosing them; when the sweep's trials generate answers,
    also their answers to the split's first `eval.samples` prompts, scored as in training. `pad_token_id`: the
    run's, as prepared."""
    examples = split_examples(data_dir, split)
    answering = load_answering(cfg, data_dir, split, scorer_code)
    return score_adapters(cfg, examples, pad_token_id, adapters, cfg.train.eval_batch_size, use_gpu, answering)
