"""Whether a model's tokenizer and its weights agree, read from the files (config.json, generation_config.json,
the safetensors header, tokenizer.json and tokenizer_config.json) with the `tokenizers` library, no torch or
transformers: the vocabulary fits the embedding rows, every special-token id the tokenizer or the model config
names is a row of it, an eos token exists and a pad token exists or can be derived. `validate` checks the files;
the driver checks the loaded tokenizer the same way (`loaded_tokenizer_problems`), which also covers tokenizers
saved without a tokenizer.json."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptune.errors import Problem
from adaptune.preflight.architecture import MAX_JSON_BYTES, ArchitectureError, safetensors_header

SPECIAL_TOKENS = ("bos_token", "eos_token", "pad_token", "unk_token")
CONFIG_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
# Names of the input embedding matrix across architectures (Llama/Qwen/Mistral, GPT-2, GPT-NeoX, Falcon/BLOOM).
_EMBEDDINGS = ("embed_tokens.weight", "wte.weight", "embed_in.weight", "word_embeddings.weight")
FIX_SIZE = (
    "Resize the model's embeddings to the tokenizer (model.resize_token_embeddings(len(tokenizer)), then "
    "save_pretrained), or use the tokenizer the model was trained with"
)


def _json(path: Path) -> dict[str, Any]:
    try:
        if not path.is_file() or path.stat().st_size > MAX_JSON_BYTES:
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict with `content`."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


@dataclass
class TokenizerFiles:
    """What a saved tokenizer says about itself."""

    size: int  # tokens, added ones included (what len(tokenizer) is)
    special: dict[str, tuple[str, int | None]] = field(default_factory=dict)  # eos_token -> ("</s>", 1)
    chat_template: str | None = None


def read_tokenizer_files(model_dir: Path) -> TokenizerFiles | None:
    """The tokenizer saved in `model_dir`, or None when it has no tokenizer.json (a slow tokenizer only: then
    the loaded tokenizer is checked when the run starts)."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception:  # a damaged tokenizer.json: transformers reports it when the run loads it
        return None
    config = {**_json(model_dir / "special_tokens_map.json"), **_json(model_dir / "tokenizer_config.json")}
    special = {}
    for name in SPECIAL_TOKENS:
        text = _token_text(config.get(name))
        if text is not None:
            special[name] = (text, tok.token_to_id(text))
    return TokenizerFiles(tok.get_vocab_size(with_added_tokens=True), special, chat_template(model_dir, config))


def chat_template(model_dir: Path, config: dict[str, Any] | None = None) -> str | None:
    """The default chat template saved with a tokenizer (chat_template.jinja, chat_template.json, or
    tokenizer_config.json's `chat_template`), or None."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = config if config is not None else _json(model_dir / "tokenizer_config.json")
    value = _json(model_dir / "chat_template.json").get("chat_template") or config.get("chat_template")
    if isinstance(value, list):  # named templates: [{name, template}, ...]
        value = next((t.get("template") for t in value if isinstance(t, dict) and t.get("name") == "default"), None)
    return value if isinstance(value, str) and value.strip() else None


def embedding_rows(model_dir: Path) -> int | None:
    """Rows of the input embedding matrix: its shape in the safetensors header, else config.json's
    `vocab_size` (a multimodal config keeps it under `text_config`)."""
    for file in sorted(model_dir.glob("*.safetensors")):
        try:
            header = safetensors_header(file)
        except (ArchitectureError, OSError):
            continue
        for name, info in header.items():
            shape = info.get("shape")
            if name.endswith(_EMBEDDINGS) and isinstance(shape, list) and len(shape) == 2:
                return int(shape[0])
    config = _json(model_dir / "config.json")
    size = config.get("vocab_size", (config.get("text_config") or {}).get("vocab_size"))
    return size if isinstance(size, int) else None


def model_token_ids(model_dir: Path) -> dict[str, list[int]]:
    """The special-token ids the model's config.json and generation_config.json name (an id or a list)."""
    out: dict[str, list[int]] = {}
    for file in ("config.json", "generation_config.json"):
        config = _json(model_dir / file)
        for key in CONFIG_IDS:
            value = config.get(key)
            ids = value if isinstance(value, list) else [value]
            found = [i for i in ids if isinstance(i, int) and not isinstance(i, bool)]
            if found:
                out[f"{file} {key}"] = found
    return out


def agreement_problems(
    source: str,
    model_dir: Path | None,
    size: int,
    special: dict[str, tuple[str, int | None]],
    rows: int | None,
    config_ids: dict[str, list[int]],
) -> list[Problem]:
    """The problems of a tokenizer of `size` tokens with these special tokens against a model with `rows`
    embedding rows and these config ids. One line each, naming the model directory and the fix."""
    where = f"model.path ({model_dir})" if model_dir is not None else "model.path"
    problems = []
    if rows is not None and size > rows:
        problems.append(
            Problem(
                source,
                where,
                f"the tokenizer has {size} tokens but the model has {rows} embedding rows: ids {rows}..{size - 1} "
                "would index past the embeddings (IndexError in every trial)",
                FIX_SIZE,
            )
        )
    limit = rows if rows is not None else size
    for name, (text, token_id) in special.items():
        if token_id is None:
            problems.append(
                Problem(
                    source,
                    where,
                    f"the tokenizer's {name} {text!r} is not in its vocabulary",
                    f"Set {name} in tokenizer_config.json to a token the vocabulary has, or add the token and resize "
                    "the model's embeddings",
                )
            )
        elif not 0 <= token_id < limit:
            problems.append(
                Problem(
                    source,
                    where,
                    f"the tokenizer's {name} {text!r} has id {token_id}, outside the model's {limit} embedding rows",
                    FIX_SIZE,
                )
            )
    for key, ids in config_ids.items():
        bad = [i for i in ids if not 0 <= i < limit]
        if bad:
            problems.append(
                Problem(
                    source,
                    where,
                    f"{key} {bad[0]} is outside the model's {limit} embedding rows",
                    f"Fix {key.split()[1]} in {key.split()[0]} to the id of that token in the tokenizer",
                )
            )
    has = {name for name, (_, token_id) in special.items() if token_id is not None}
    if "eos_token" not in has:  # with one, a missing pad token is derived from it (data.load_tokenizer)
        neither = "neither an eos nor a pad token" if "pad_token" not in has else "no eos token"
        problems.append(
            Problem(
                source,
                where,
                f"the tokenizer has {neither}: responses would be trained without an end, generation would not "
                "stop" + (", and batches could not be padded" if "pad_token" not in has else ""),
                "Set eos_token in tokenizer_config.json to the token that ends a text (e.g. '</s>' or "
                "'<|endoftext|>'), adding it to the vocabulary if it is not there",
            )
        )
    return problems


def tokenizer_problems(source: str, model_dir: Path) -> list[Problem]:
    """`validate`: the saved tokenizer against the saved model (nothing when there is no tokenizer.json)."""
    files = read_tokenizer_files(model_dir)
    if files is None:
        return []
    return agreement_problems(
        source, model_dir, files.size, files.special, embedding_rows(model_dir), model_token_ids(model_dir)
    )


def loaded_tokenizer_problems(source: str, model_dir: Path | None, tokenizer: Any) -> list[Problem]:
    """The same checks for a tokenizer transformers loaded (before its pad token is derived)."""
    special = {}
    for name in SPECIAL_TOKENS:
        text = getattr(tokenizer, name, None)
        if text:
            special[name] = (str(text), tokenizer.convert_tokens_to_ids(str(text)))
    rows = embedding_rows(model_dir) if model_dir is not None else None
    ids = model_token_ids(model_dir) if model_dir is not None else {}
    return agreement_problems(source, model_dir, len(tokenizer), special, rows, ids)
