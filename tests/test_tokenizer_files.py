"""A model's tokenizer against its weights, as users bring them: tokens added to a copy of the tokenizer, special
tokens removed or renamed, config ids past the embeddings. `validate` refuses each in one line naming the model
directory (read from the files, no torch); the run refuses the loaded tokenizer the same way before anything is
tokenized; and a tokenizer whose special tokens changed re-prepares the data instead of reusing the old tokens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adaptune.config import DataConfig, SweepConfig
from adaptune.data import prepare_dataset
from adaptune.errors import DataError
from adaptune.preflight.tokenizer_files import embedding_rows, read_tokenizer_files, tokenizer_problems
from adaptune.preflight.validate import check_model

from .support import DEMO_DATA

pytestmark = pytest.mark.unit


def _copy(tiny_model: Path, tmp_path: Path) -> Path:
    model = tmp_path / "model copy"
    shutil.copytree(tiny_model, model)
    return model


def _edit(path: Path, **changes) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data), encoding="utf-8")


def _lines(model: Path) -> list[str]:
    sweep = SweepConfig(name="t", model={"path": str(model)}, data={"path": str(DEMO_DATA)})
    return [str(p) for p in check_model(sweep, "s.yaml")]


def test_the_demo_model_and_its_tokenizer_agree(tiny_model):
    files = read_tokenizer_files(tiny_model)
    assert files is not None and files.size == embedding_rows(tiny_model) == 2048
    assert files.special["eos_token"] == ("</s>", 1)
    assert tokenizer_problems("s.yaml", tiny_model) == [] and _lines(tiny_model) == []


def test_a_tokenizer_larger_than_the_embeddings_is_refused_by_validate_and_by_the_run(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    model = _copy(tiny_model, tmp_path)
    tok = AutoTokenizer.from_pretrained(str(model))
    tok.add_tokens(["<ticket>", "<order>", "<sku>"])
    tok.save_pretrained(str(model))

    (line,) = _lines(model)
    assert line == (
        f"s.yaml: model.path ({model}): the tokenizer has 2051 tokens but the model has 2048 embedding rows: ids "
        "2048..2050 would index past the embeddings (IndexError in every trial). Resize the model's embeddings to "
        "the tokenizer (model.resize_token_embeddings(len(tokenizer)), then save_pretrained), or use the tokenizer "
        "the model was trained with"
    )
    with pytest.raises(DataError, match=r"the tokenizer has 2051 tokens but the model has 2048 embedding rows"):
        prepare_dataset(DataConfig(path=str(DEMO_DATA)), str(model), tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()


def test_a_tokenizer_without_eos_or_pad_is_refused(tiny_model, tmp_path):
    model = _copy(tiny_model, tmp_path)
    _edit(model / "tokenizer_config.json", eos_token=None, pad_token=None)
    (line,) = _lines(model)
    assert "the tokenizer has neither an eos nor a pad token" in line
    assert "Set eos_token in tokenizer_config.json" in line
    with pytest.raises(DataError, match="neither an eos nor a pad token"):
        prepare_dataset(DataConfig(path=str(DEMO_DATA)), str(model), tmp_path / "prepared")


def test_special_token_ids_outside_the_vocabulary_are_refused(tiny_model, tmp_path):
    model = _copy(tiny_model, tmp_path)
    _edit(model / "config.json", eos_token_id=[1, 4096])
    _edit(model / "tokenizer_config.json", pad_token="<|pad|>")  # not a token of this vocabulary
    assert _lines(model) == [
        f"s.yaml: model.path ({model}): the tokenizer's pad_token '<|pad|>' is not in its vocabulary. Set pad_token "
        "in tokenizer_config.json to a token the vocabulary has, or add the token and resize the model's embeddings",
        f"s.yaml: model.path ({model}): config.json eos_token_id 4096 is outside the model's 2048 embedding rows. "
        "Fix eos_token_id in config.json to the id of that token in the tokenizer",
    ]


def test_changed_special_tokens_prepare_the_data_again(tiny_model, tmp_path):
    """The prepared-data key covered only the vocabulary and the chat template: with eos renamed, a run on the
    same storage trained on the old tokens without a word."""
    model = _copy(tiny_model, tmp_path)
    cfg = DataConfig(path=str(DEMO_DATA), val_fraction=0.1)
    before = prepare_dataset(cfg, str(model), tmp_path / "prepared")
    _edit(model / "tokenizer_config.json", eos_token="<pad>")  # same vocabulary, another eos
    after = prepare_dataset(cfg, str(model), tmp_path / "prepared")
    assert after.key != before.key

    from adaptune.data import open_split

    old, new = (open_split(m.path, "train")[0]["input_ids"][-1] for m in (before, after))
    assert (old, new) == (1, 2)  # each example now ends with the new eos id
