"""What adaptune knows about model architectures without loading them: named LoRA target sets per model
type, and the linear layers a checkpoint has, read from its config.json and safetensors headers (no torch)."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

# Named sets as module-name suffixes (peft matches a target when a module's full name ends with
# ".<target>"). Where attention and MLP share a leaf name (GPT-2's c_proj) the parent is kept in the suffix.
_LLAMA_LIKE = {
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
}
TARGET_SETS: dict[str, dict[str, list[str]]] = {
    **{t: _LLAMA_LIKE for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "olmo")},
    "phi3": {"attention": ["qkv_proj", "o_proj"], "mlp": ["gate_up_proj", "down_proj"]},
    "gpt2": {"attention": ["attn.c_attn", "attn.c_proj"], "mlp": ["mlp.c_fc", "mlp.c_proj"]},
    "gpt_neox": {
        "attention": ["attention.query_key_value", "attention.dense"],
        "mlp": ["mlp.dense_h_to_4h", "mlp.dense_4h_to_h"],
    },
    "falcon": {
        "attention": ["query_key_value", "self_attention.dense"],
        "mlp": ["dense_h_to_4h", "dense_4h_to_h"],
    },
}

# Weight files in Python's pickle format: never loaded, since unpickling runs whatever code the file names.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
MAX_JSON_BYTES = 16 * 2**20  # a model's config.json is a few KB
# 2-D weights that are not adapter targets: embeddings and the output head.
_NOT_TARGETS = ("embed", "wte", "wpe", "lm_head", "embed_out", "score")


class ArchitectureError(ValueError):
    """The model directory cannot be read, or a requested target does not exist in it."""


def read_model_type(model_dir: Path) -> str:
    """The `model_type` from a model directory's config.json."""
    cfg_file = model_dir / "config.json"
    if not cfg_file.is_file():
        raise ArchitectureError(f"no config.json in {model_dir}")
    if cfg_file.stat().st_size > MAX_JSON_BYTES:
        raise ArchitectureError(f"{cfg_file} is larger than {MAX_JSON_BYTES // 2**20} MiB, not a model config")
    try:
        return str(json.loads(cfg_file.read_text(encoding="utf-8"))["model_type"])
    except (ValueError, KeyError, TypeError, RecursionError) as e:  # not JSON, not an object, nested too deep
        raise ArchitectureError(f"{cfg_file} has no readable model_type ({type(e).__name__}: {e})") from None


def custom_code(model_dir: Path) -> list[str]:
    """The Python code a model directory asks transformers to import (the `auto_map` of its config.json and
    tokenizer_config.json), as `module.Class` references; read as JSON, nothing is imported."""
    refs: set[str] = set()
    for name in ("config.json", "tokenizer_config.json"):
        try:
            data = json.loads((model_dir / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        auto_map = data.get("auto_map") if isinstance(data, dict) else None
        for value in auto_map.values() if isinstance(auto_map, dict) else ():
            refs.update(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str))
    return sorted(refs)


def safetensors_header(file: Path) -> dict[str, dict]:
    with file.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ArchitectureError(f"{file} is not a safetensors file ({len(head)} bytes)")
        (size,) = struct.unpack("<Q", head)
        if size > 100_000_000:
            raise ArchitectureError(f"{file} has an implausible safetensors header ({size} bytes)")
        try:
            header = json.loads(f.read(size))
        except (ValueError, RecursionError) as e:
            raise ArchitectureError(f"{file} has an unreadable safetensors header ({type(e).__name__})") from None
    if not isinstance(header, dict) or not all(isinstance(v, dict) for k, v in header.items() if k != "__metadata__"):
        raise ArchitectureError(f"{file} has a safetensors header that is not a table of tensors")
    header.pop("__metadata__", None)
    return header


def linear_layers(model_dir: Path) -> list[str]:
    """Full names of the modules holding 2-D weights (linear / Conv1D layers), without embeddings and head."""
    return sorted(linear_layer_shapes(model_dir))


def linear_layer_shapes(model_dir: Path) -> dict[str, list[int]]:
    """`linear_layers` with each weight's shape (from the safetensors headers)."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in model_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise ArchitectureError(
                f"{model_dir} has only pickled weights ({', '.join(pickled[:3])}), which adaptune never loads "
                "(unpickling a file can run any code in it); convert them once where you trust the file: "
                "AutoModelForCausalLM.from_pretrained(...).save_pretrained(dir, safe_serialization=True)"
            )
        raise ArchitectureError(f"no *.safetensors weights in {model_dir}")
    shapes: dict[str, list[int]] = {}
    for file in files:
        for tensor, info in safetensors_header(file).items():
            shape = info.get("shape")
            if not tensor.endswith(".weight") or not isinstance(shape, list) or len(shape) != 2:
                continue
            module = tensor.removesuffix(".weight")
            if any(part.startswith(_NOT_TARGETS) for part in module.split(".")):
                continue
            shapes[module] = [int(d) for d in shape]
    return shapes


def matched_layers(targets: list[str], layers: list[str]) -> list[str]:
    """The layers that peft adapts for these target suffixes."""
    return [m for m in layers if any(_matches(t, m) for t in targets)]


def ambiguous_targets(targets: list[str], layers: list[str]) -> dict[str, list[str]]:
    """Bare names that match layers of more than one kind (GPT-2's `c_proj` is in attention and in the MLP):
    target -> the distinct parent-qualified names it adapts."""
    out = {}
    for t in targets:
        kinds = sorted({".".join(m.split(".")[-2:]) for m in layers if _matches(t, m)})
        if len(kinds) > 1:
            out[t] = kinds
    return out


def _matches(target: str, module: str) -> bool:
    return module == target or module.endswith("." + target)


def resolve_target_modules(target: str | list[str], model_type: str, layers: list[str]) -> list[str]:
    """Turn a named set or an explicit list into the module suffixes peft gets, checked against `layers`.

    Raises:
        ArchitectureError: naming the missing targets and the linear layers that do exist.
    """
    if isinstance(target, list):
        wanted = list(target)
    elif target == "all-linear":
        wanted = sorted({m.rsplit(".", 1)[-1] for m in layers})
    else:
        sets = TARGET_SETS.get(model_type)
        if sets is None:
            raise ArchitectureError(
                f"no named target sets for model type {model_type!r} (known: {', '.join(sorted(TARGET_SETS))}); "
                f"give an explicit list from its linear layers: {', '.join(_leaf_names(layers))}"
            )
        wanted = sets[target]
    missing = [t for t in wanted if not any(_matches(t, m) for m in layers)]
    if missing:
        raise ArchitectureError(
            f"{', '.join(missing)} not found in this {model_type} model; its linear layers are: "
            f"{', '.join(_leaf_names(layers))}"
        )
    return wanted


def _leaf_names(layers: list[str]) -> list[str]:
    """Distinct layer names with their parent (`self_attn.q_proj`), as a user would write them."""
    return sorted({".".join(m.split(".")[-2:]) for m in layers})


def model_fingerprint(model_dir: Path) -> str:
    """A cheap identity of a saved model: sha256 over its config.json and each safetensors file's name, size and
    header (the tensors' names, shapes, dtypes and offsets), not its gigabytes of weights. Two copies of one
    model agree; a different model, or the same one re-saved in another dtype, does not."""
    h = hashlib.sha256((model_dir / "config.json").read_bytes() if (model_dir / "config.json").is_file() else b"")
    for file in sorted(model_dir.glob("*.safetensors")):
        h.update(f"{file.name}:{file.stat().st_size}:".encode())
        h.update(json.dumps(safetensors_header(file), sort_keys=True).encode())
    return h.hexdigest()


def model_directory(source: str, revision: str | None = None) -> Path:
    """The directory holding a model's config and weights: the local one, or the hub cache's snapshot
    (only json and safetensors files are fetched)."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source, revision=revision, allow_patterns=["*.json", "*.safetensors"]))


def target_modules_for(target: str | list[str], source: str, revision: str | None = None) -> list[str]:
    """The module suffixes LoRA attaches to in the model at `source`, resolved for its architecture."""
    d = model_directory(source, revision)
    return resolve_target_modules(target, read_model_type(d), linear_layers(d))
