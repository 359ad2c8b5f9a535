"""Generated answers, scored against reference answers: the built-in scorers (torchmetrics' SQuAD exact match
and token F1, ROUGE-L), a user's own from `eval.scorers_file`, the per-answer scores with their means, and the
checks `validate` runs on the scorers before Ray starts.

A user scorer is `def NAME(prompt: str, reference: str, answer: str) -> float`, higher is better. One that
raises on an answer leaves that answer's score missing; the failure is returned to be logged, and the sweep goes
on. Light at import: torchmetrics is imported where a built-in scorer first runs.
"""

from __future__ import annotations

import inspect
import math
import numbers
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from adaptune.config import BUILTIN_SCORERS, EvalConfig, SweepConfig, resolve_path
from adaptune.data import load_eval_prompts, load_tokenizer
from adaptune.errors import ConfigError, Problem, short_repr

Scorer = Callable[[str, str, str], float]  # (prompt, reference, answer) -> score, higher is better
SCORER_SIGNATURE = "def NAME(prompt: str, reference: str, answer: str) -> float"
MISSING = -math.inf  # the mean of a score no answer has: the worst, so no search prefers it


def _squad(reference: str, answer: str) -> dict[str, float]:
    from torchmetrics.functional.text import squad

    scores = squad(
        [{"prediction_text": answer, "id": "0"}], [{"answers": {"text": [reference], "answer_start": [0]}, "id": "0"}]
    )
    return {k: float(v) / 100.0 for k, v in scores.items()}  # torchmetrics reports percentages


def exact_match(prompt: str, reference: str, answer: str) -> float:
    """1 when the answer equals the reference after SQuAD normalisation (case, punctuation, articles, spaces)."""
    return _squad(reference, answer)["exact_match"]


def token_f1(prompt: str, reference: str, answer: str) -> float:
    """F1 of the answer's tokens against the reference's (SQuAD normalisation)."""
    return _squad(reference, answer)["f1"]


def rouge_l(prompt: str, reference: str, answer: str) -> float:
    """ROUGE-L F-measure: the longest common subsequence of words, as recall and precision combined."""
    from torchmetrics.functional.text import rouge_score

    return float(rouge_score(answer, reference, rouge_keys="rougeL")["rougeL_fmeasure"])


BUILTINS: dict[str, Scorer] = {"exact_match": exact_match, "token_f1": token_f1, "rouge_l": rouge_l}
assert tuple(BUILTINS) == BUILTIN_SCORERS


def scorer_code(cfg: EvalConfig) -> tuple[str, str] | None:
    """(file name, source) of `eval.scorers_file`, read once by the driver and handed to every worker (so the
    file need not be on every node), or None."""
    if cfg.scorers_file is None:
        return None
    path = resolve_path(cfg.scorers_file)
    return str(path), path.read_text(encoding="utf-8")


def load_scorers(cfg: EvalConfig, code: tuple[str, str] | None) -> dict[str, Scorer]:
    """Every scorer `eval.scorers` names, in order: a built-in, or a function of the scorers file's `code`.
    Raises ConfigError naming `eval.scorers` or `eval.scorers_file` and the fix."""
    user = [n for n in cfg.scorers if n not in BUILTINS]
    module: dict[str, Any] = {}
    if user and code is None:
        raise ConfigError(
            Problem(
                "eval",
                "eval.scorers",
                f"unknown scorer {user[0]!r}: not built in ({', '.join(BUILTINS)}) and no eval.scorers_file",
                f"Use a built-in scorer, or define `{SCORER_SIGNATURE.replace('NAME', user[0])}` in a Python file "
                "and set eval.scorers_file to it",
            )
        )
    if code is not None:
        filename, source = code
        namespace = types.ModuleType("adaptune_user_scorers").__dict__
        namespace["__file__"] = filename
        try:
            exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - the user's own scorers, as documented
        except Exception as e:  # noqa: BLE001 - whatever the file raises on import
            raise ConfigError(
                Problem(
                    filename,
                    "eval.scorers_file",
                    f"the scorers file fails to load ({type(e).__name__}: {short_repr(str(e))})",
                    "Fix the file so that `python FILE` runs",
                )
            ) from None
        module = namespace
    scorers: dict[str, Scorer] = {}
    for name in cfg.scorers:
        if name in BUILTINS:
            scorers[name] = BUILTINS[name]
            continue
        fn = module.get(name)
        if not callable(fn):
            found = sorted(k for k, v in module.items() if inspect.isfunction(v) and not k.startswith("_"))
            raise ConfigError(
                Problem(
                    code[0] if code else "eval",
                    "eval.scorers",
                    f"scorer {name!r} is not a function of the scorers file (it defines: {', '.join(found) or 'none'})",
                    f"Define `{SCORER_SIGNATURE.replace('NAME', name)}` there, or remove {name!r} from eval.scorers",
                )
            )
        try:
            inspect.signature(fn).bind("prompt", "reference", "answer")
        except (TypeError, ValueError):
            raise ConfigError(
                Problem(
                    code[0] if code else "eval",
                    "eval.scorers",
                    f"scorer {name!r} does not take (prompt, reference, answer)",
                    f"Give it the documented signature: `{SCORER_SIGNATURE.replace('NAME', name)}`",
                )
            ) from None
        scorers[name] = fn
    return scorers


def check_scorers(cfg: EvalConfig, source: str, reserved: tuple[str, ...]) -> list[Problem]:
    """`validate`'s checks: every named scorer exists and takes the documented arguments, none shadows a metric
    the trainer reports (`reserved`), and each user scorer returns a finite number for a sample answer."""
    clash = [n for n in cfg.scorers if n in reserved]
    if clash:
        return [
            Problem(
                source,
                "eval.scorers",
                f"scorer {clash[0]!r} has the name of a metric the trainer reports or a column of the results",
                "Rename the function and its entry in eval.scorers",
            )
        ]
    if cfg.scorers_file is not None and not resolve_path(cfg.scorers_file).is_file():
        return [
            Problem(
                source,
                "eval.scorers_file",
                f"{cfg.scorers_file} is not a file",
                f"Point it at a Python file that defines `{SCORER_SIGNATURE}` for each scorer",
            )
        ]
    try:
        scorers = load_scorers(cfg, scorer_code(cfg))
    except ConfigError as e:
        return [Problem(source if p.source == "eval" else p.source, p.key, p.message, p.fix) for p in e.problems]
    problems = []
    sample = ("What is the capital of France?", "Paris.", "Paris is the capital.")
    for name, fn in scorers.items():
        if name in BUILTINS:
            continue
        try:
            value = fn(*sample)
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            why = f"returns {short_repr(value)}, not a finite number"
        except Exception as e:  # noqa: BLE001 - the user's code
            ok, why = False, f"raises {type(e).__name__}: {short_repr(str(e))}"
        if not ok:
            problems.append(
                Problem(
                    cfg.scorers_file or source,
                    "eval.scorers",
                    f"scorer {name!r} {why} on a sample answer {sample}",
                    "Make it return a float for any prompt, reference and answer strings",
                )
            )
    return problems


@dataclass
class ScoredAnswers:
    """One evaluation's answers: a row per prompt (prompt, reference, answer, one column per scorer; None where
    that scorer raised), the mean of each score over the answers it scored, and what failed."""

    rows: list[dict[str, Any]]
    means: dict[str, float]
    failures: list[str] = field(default_factory=list)


def score_answers(prompts: list[dict[str, Any]], answers: list[str], scorers: dict[str, Scorer]) -> ScoredAnswers:
    """Score each answer against its prompt's reference with every scorer. A scorer that raises or returns no
    finite number on an answer leaves that score missing (and is named in `failures`)."""
    rows, failures = [], []
    for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        row: dict[str, Any] = {"prompt": prompt["prompt"], "reference": prompt["reference"], "answer": answer}
        for name, fn in scorers.items():
            try:
                value = fn(prompt["prompt"], prompt["reference"], answer)
                if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                    raise ValueError(f"returned {short_repr(value)}, not a finite number")
                row[name] = float(value)
            except Exception as e:  # noqa: BLE001 - a user scorer's bug must not end the trial
                row[name] = None
                failures.append(f"scorer {name!r} failed on answer {i} ({type(e).__name__}: {short_repr(str(e))})")
        rows.append(row)
    means = {}
    for name in scorers:
        values = [r[name] for r in rows if r[name] is not None]
        means[name] = sum(values) / len(values) if values else MISSING
    return ScoredAnswers(rows, means, failures)


def generate_ids(
    model: Any,
    prompt_ids: list[list[int]],
    pad_id: int,
    eos_id: int | None,
    ev: EvalConfig,
    device: Any,
    *,
    batches: int | None = None,
    synced_gpus: bool = False,
) -> list[list[int]]:
    """The answer (token ids, up to EOS) of each prompt, in order, in left-padded batches of `ev.batch_size`,
    greedy unless `ev.temperature` > 0. `batches`: make exactly this many generate calls (a rank with fewer
    prompts than its peers repeats its first one and drops the answers), as every rank must under ZeRO-3, whose
    parameters are gathered collectively; `synced_gpus` then keeps each rank stepping until all are done.
    The model is left in eval mode."""
    import torch
    from transformers import GenerationConfig

    sampling = {"do_sample": True, "temperature": ev.temperature} if ev.temperature > 0 else {"do_sample": False}
    stops = stop_ids(model, eos_id)
    config = GenerationConfig(
        max_new_tokens=ev.max_new_tokens, pad_token_id=pad_id, eos_token_id=stops or None, **sampling
    )
    n = batches if batches is not None else math.ceil(len(prompt_ids) / ev.batch_size)
    answers: list[list[int]] = []
    model.eval()
    with torch.no_grad():
        for b in range(n):
            chunk = prompt_ids[b * ev.batch_size : (b + 1) * ev.batch_size]
            rows = chunk or prompt_ids[:1] or [[pad_id]]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, r in enumerate(rows):
                ids[i, width - len(r) :], mask[i, width - len(r) :] = torch.tensor(r), 1
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                generation_config=config,
                synced_gpus=synced_gpus,
            )
            for seq in out[: len(chunk), width:].tolist():
                end = next((i for i, t in enumerate(seq) if t in stops), len(seq))
                answers.append(seq[:end])
    return answers


def stop_ids(model: Any, eos_id: int | None) -> list[int]:
    """The tokens an answer ends at: the tokenizer's EOS and the model's own (a chat model's end of turn, e.g.
    `<|im_end|>` or `<|eot_id|>`, is in its generation config)."""
    own = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    own = own if isinstance(own, list) else [own]
    return list(dict.fromkeys(t for t in [eos_id, *own] if isinstance(t, int)))


@dataclass(frozen=True)
class Answering:
    """What answering a set's evaluation prompts takes: the prompts, a tokenizer to decode, the scorers, `eval`."""

    prompts: list[dict[str, Any]]
    tokenizer: Any
    scorers: dict[str, Scorer]
    settings: EvalConfig


def load_answering(cfg: SweepConfig, data_dir: str, split: str, code: tuple[str, str] | None) -> Answering | None:
    """The first `eval.samples` prompts of a split of the run's prepared data (the validation split in training,
    the test split for the finalists), each cut so that prompt and answer fit in `data.max_seq_length`, with the
    tokenizer and scorers; None when the sweep's trials generate no answers."""
    if not cfg.eval.generates(cfg.data.format):
        return None
    prompts = load_eval_prompts(data_dir, split, cfg.eval.samples)
    if not prompts:
        return None
    room = cfg.data.max_seq_length - cfg.eval.max_new_tokens
    if room > 0:
        prompts = [{**p, "prompt_ids": p["prompt_ids"][-room:]} for p in prompts]
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code, cfg.model.revision)
    return Answering(prompts, tokenizer, load_scorers(cfg.eval, code), cfg.eval)


def score_ids(answering: Answering, ids: list[list[int]]) -> ScoredAnswers:
    """Decode each prompt's answer and score it."""
    texts = [answering.tokenizer.decode(a, skip_special_tokens=True).strip() for a in ids]
    return score_answers(answering.prompts, texts, answering.scorers)


def answer_and_score(model: Any, answering: Answering, device: Any) -> ScoredAnswers:
    """Generate every prompt's answer with `model` in this one process and score them (a finalist on the test
    split, after the search)."""
    tok = answering.tokenizer
    prompt_ids = [p["prompt_ids"] for p in answering.prompts]
    return score_ids(
        answering, generate_ids(model, prompt_ids, int(tok.pad_token_id), tok.eos_token_id, answering.settings, device)
    )
