"""Merging a trained LoRA adapter into its full-precision base model, and proving the merged model on disk
computes what base + adapter computed. Imports torch, transformers and peft; nothing here talks to MLflow."""

from __future__ import annotations

import gc
import json
import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptune.config import model_source, resolve_path
from adaptune.data import load_tokenizer
from adaptune.errors import ConfigError, Problem, missing_path_hint
from adaptune.names import ADAPTER_CONFIG, ADAPTER_WEIGHTS, TOKENIZER_FILES
from adaptune.preflight.architecture import PICKLE_SUFFIXES

log = logging.getLogger(__name__)

# fp32 merge vs unmerged: W x + s B(A x) and (W + s B A) x differ only in rounding, ~1e-5 on logits.
MERGE_TOLERANCE = 1e-3
DEFAULT_PROMPTS = (
    "Hello",
    "Question: How do I reset my password?\nAnswer:",
    "The quick brown fox jumps over the lazy dog.",
)


@dataclass(frozen=True)
class MergeReport:
    """Where the merged model went and how closely it reproduces base + adapter."""

    out_dir: str
    prompts: int  # how many sample prompts were compared
    max_abs_diff: float  # largest |logit(merged, reloaded from out_dir) - logit(base + adapter, unmerged)|
    tolerance: float


class MergeMismatch(RuntimeError):
    """The merged model, reloaded from disk, does not reproduce base + adapter within the tolerance."""

    def __init__(self, max_abs_diff: float, tolerance: float):
        self.max_abs_diff, self.tolerance = max_abs_diff, tolerance
        super().__init__(
            f"merged model differs from base + adapter by up to {max_abs_diff:.3g} in the logits "
            f"(tolerance {tolerance:.3g}); nothing was written"
        )

    def __reduce__(self):  # crosses Ray process boundaries
        return (type(self), (self.max_abs_diff, self.tolerance))


def merge_adapter(
    adapter_dir: Path,
    base_model: str,
    out_dir: Path,
    *,
    prompts: list[str] | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    tolerance: float = MERGE_TOLERANCE,
    overwrite: bool = False,
) -> MergeReport:
    """Merge the LoRA adapter in `adapter_dir` into `base_model` (loaded in fp32) and save it to `out_dir`.

    The base is always loaded in full precision, also for adapters trained with QLoRA: folding the adapter
    into 4-bit weights would round it away. The merged model is written (safetensors only, with the tokenizer)
    to a staging directory beside `out_dir`, reloaded from there with a plain `from_pretrained`, and compared
    with the unmerged base + adapter on `prompts`; only a model that passes replaces `out_dir`.

    Args:
        adapter_dir: Directory with adapter_config.json and adapter_model.safetensors.
        base_model: The base model the adapter was trained on: a local directory or a hub id.
        out_dir: Where the merged model goes. Must be missing or empty unless `overwrite`.
        prompts: Sample prompts to compare logits on; a few short fixed ones by default.
        revision: Hub revision of `base_model`.
        trust_remote_code: Allow the base model's own modelling code.
        tolerance: Largest allowed absolute logit difference.
        overwrite: Replace a non-empty `out_dir`.

    Returns:
        The report of the comparison.

    Raises:
        ConfigError: The adapter, base model or output directory cannot be used.
        MergeMismatch: The merged model does not reproduce base + adapter within `tolerance`.
    """
    adapter_dir, out_dir = Path(adapter_dir).expanduser(), Path(out_dir).expanduser()
    prompts = list(DEFAULT_PROMPTS if prompts is None else prompts)
    if not prompts:
        raise ValueError("prompts must not be empty: the merge is checked on them")
    trained_on = check_adapter_dir(adapter_dir).get("base_model_name_or_path")
    _check_out_dir(out_dir, overwrite, [adapter_dir, resolve_path(base_model)])
    if base_model.startswith((".", "/", "~")) and not resolve_path(base_model).exists():
        raise ConfigError(Problem(base_model, "", "base model directory not found", missing_path_hint(base_model)))

    # --- base + adapter, unmerged: the reference ---
    tokenizer = _load_tokenizer(adapter_dir, base_model, revision, trust_remote_code)
    model = load_peft_model(adapter_dir, base_model, revision, trust_remote_code, trained_on)
    inputs = [tokenizer(p, return_tensors="pt") for p in prompts]
    reference = _logits(model, inputs)

    # --- merge and save to a staging directory beside out_dir ---
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.merging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        merged = model.merge_and_unload()
        merged.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        del model, merged
        gc.collect()
        pickles = sorted(p.name for p in staging.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:  # never expected; a merged model must load without unpickling anything
            raise RuntimeError(f"save_pretrained wrote pickled weights {pickles}; refusing to publish them")

        # --- reload the merged model as a consumer would and compare ---
        from transformers import AutoModelForCausalLM

        reloaded = AutoModelForCausalLM.from_pretrained(
            str(staging), trust_remote_code=trust_remote_code, use_safetensors=True
        )
        merged_logits = _logits(reloaded, inputs)
        del reloaded
        max_abs_diff = max((m - r).abs().max().item() for m, r in zip(merged_logits, reference, strict=True))
        if not max_abs_diff <= tolerance:  # also catches NaN
            raise MergeMismatch(max_abs_diff, tolerance)

        # --- publish ---
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("merged %s into %s -> %s (max |logit diff| %.3g)", adapter_dir, base_model, out_dir, max_abs_diff)
    return MergeReport(out_dir=str(out_dir), prompts=len(prompts), max_abs_diff=max_abs_diff, tolerance=tolerance)


def check_adapter_dir(adapter_dir: Path) -> dict[str, Any]:
    """The adapter directory holds a peft LoRA config and safetensors weights (pickles are never loaded);
    returns the adapter config."""
    src = str(adapter_dir)
    if not adapter_dir.is_dir():
        what = "is a file, not an adapter directory" if adapter_dir.exists() else "adapter directory not found"
        hint = "Point at the directory" if adapter_dir.exists() else missing_path_hint(src)
        raise ConfigError(Problem(src, "", what, hint))
    config_file, weights = adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS
    if not config_file.is_file():
        has = ", ".join(sorted(p.name for p in adapter_dir.iterdir())[:12]) or "nothing"
        raise ConfigError(
            Problem(src, "", f"not a LoRA adapter: no {ADAPTER_CONFIG} (it has: {has})", "Point at a saved adapter")
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        peft_type = config.get("peft_type")
    except (ValueError, AttributeError) as e:
        raise ConfigError(
            Problem(str(config_file), "", f"unreadable adapter config ({e})", "Re-save the adapter")
        ) from None
    if peft_type != "LORA":
        raise ConfigError(
            Problem(
                str(config_file),
                "peft_type",
                f"not a LoRA adapter (got {peft_type!r})",
                "Only LoRA adapters can be merged",
            )
        )
    if not weights.is_file():
        pickled = [p.name for p in adapter_dir.iterdir() if p.suffix in PICKLE_SUFFIXES]
        what = f"only pickled weights ({', '.join(pickled)}), which are never loaded" if pickled else "no weights"
        fix = f"Re-save it with save_pretrained(..., safe_serialization=True) to get {ADAPTER_WEIGHTS}"
        raise ConfigError(Problem(src, "", f"{ADAPTER_WEIGHTS} missing: {what}", fix))
    return config


def _check_out_dir(out_dir: Path, overwrite: bool, sources: list[Path]) -> None:
    """`out_dir` is free (or may be replaced) and is none of the inputs."""
    src = str(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(Problem(src, "", "output exists and is a file", "Choose a directory path"))
    target = out_dir.resolve()
    for source in sources:
        if source.exists() and (target == source.resolve() or target in source.resolve().parents):
            raise ConfigError(
                Problem(src, "", f"output would replace the input {source}", "Choose another output directory")
            )
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(
            Problem(src, "", "output directory is not empty", "Choose an empty directory or pass overwrite=True")
        )


def _load_tokenizer(adapter_dir: Path, base_model: str, revision: str | None, trust_remote_code: bool) -> Any:
    """The adapter's own tokenizer if it saved one, else the base model's, as training loaded it."""
    if any((adapter_dir / f).is_file() for f in TOKENIZER_FILES):
        return load_tokenizer(str(adapter_dir), trust_remote_code=trust_remote_code)
    try:
        return load_tokenizer(base_model, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError) as e:
        raise ConfigError(
            Problem(base_model, "", f"cannot load its tokenizer ({_first_line(e)})", _base_hint(base_model))
        ) from None


def load_peft_model(
    adapter_dir: Path, base_model: str, revision: str | None, trust_remote_code: bool, trained_on: str | None
) -> Any:
    """The fp32 base (never quantized, safetensors only) with the adapter attached, unmerged, in eval mode."""
    import torch
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    check_adapter_dir(adapter_dir)  # peft would fall back to unpickling adapter_model.bin
    fit_fix = f"Merge into the base model the adapter was trained on ({trained_on or 'see its adapter_config.json'})"
    try:
        base = AutoModelForCausalLM.from_pretrained(
            model_source(base_model),
            dtype=torch.float32,
            use_safetensors=True,
            revision=revision,
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError) as e:
        raise ConfigError(
            Problem(base_model, "", f"cannot load the base model ({_first_line(e)})", _base_hint(base_model))
        ) from None
    try:
        model = PeftModel.from_pretrained(base, str(adapter_dir), use_safetensors=True)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ConfigError(
            Problem(
                str(adapter_dir),
                "",
                f"adapter does not fit base model {base_model} ({_first_line(e)})",
                fit_fix,
            )
        ) from e
    # peft only warns when adapter keys are missing and ignores extra ones; either way the adapter is not the
    # one that was trained, so compare the saved keys with the ones the model took.
    with safe_open(str(adapter_dir / ADAPTER_WEIGHTS), framework="pt") as f:
        saved = set(f.keys())
    taken = set(get_peft_model_state_dict(model))
    if saved != taken:
        unused, missing = sorted(saved - taken), sorted(taken - saved)
        got = f"{len(unused)} saved weights unused (e.g. {unused[:2]}), {len(missing)} missing (e.g. {missing[:2]})"
        raise ConfigError(
            Problem(str(adapter_dir), "", f"adapter does not fit base model {base_model}: {got}", fit_fix)
        )
    return model.eval()


def _logits(model: Any, inputs: list[Any]) -> list[Any]:
    """Last-layer logits for each tokenized prompt, in fp32 on the CPU."""
    import torch

    model.eval()
    with torch.no_grad():
        return [model(**enc).logits.float().cpu() for enc in inputs]


def _base_hint(base_model: str) -> str:
    if resolve_path(base_model).exists():
        return "Point at a saved Hugging Face model"
    return "Check the hub id and revision, or point at a local model directory"


def _first_line(e: BaseException) -> str:
    """The telling line of a library error (torch's load_state_dict opens with a line ending in a colon)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return next((line for line in lines if not line.endswith(":")), lines[0] if lines else type(e).__name__)
