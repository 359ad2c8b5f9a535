"""What `validate` learns by tokenizing the head of the data as the run would: chat templates that refuse a
conversation or do not render it prefix by prefix (named by file and line, before Ray starts, where the run
used to fail with no file and no line), most examples cut by max_seq_length (a warning), and fewer training
examples than one batch across the workers. The run names a refused row past the head the same way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adaptune.config import read_configs
from adaptune.data import prepare_dataset
from adaptune.errors import DataError
from adaptune.preflight.validate import check_run

from .support import cluster_config, run_cli, sweep_config, write_yaml

pytestmark = pytest.mark.unit

# Llama-2 / Mistral style: the template itself refuses conversations whose roles do not alternate.
ALTERNATING = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}[INST] {{ message['content'] }} [/INST]"
    "{% else %} {{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
# Renders the number of turns first: a prefix of a conversation is not a prefix of its text.
COUNTED = (
    "turns={{ messages|length }}\n{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def _model_with_template(tiny_model: Path, tmp_path: Path, template: str) -> Path:
    model = tmp_path / "chat-model"
    shutil.copytree(tiny_model, model)
    (model / "chat_template.jinja").write_text(template, encoding="utf-8")
    return model


def _chat_rows(path: Path, bad_at: int | None = None, n: int = 24) -> Path:
    rows = []
    for i in range(n):
        turns = [{"role": "user", "content": f"Where is order {i}?"}, {"role": "assistant", "content": "On its way."}]
        if i == bad_at:
            turns.insert(1, {"role": "user", "content": "Hello?"})  # two user turns in a row
        rows.append({"messages": turns})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _check(tmp_path: Path, model: Path, data: dict, **train) -> list:
    cfg = sweep_config(model, data=data, train=train or {})
    sweep = write_yaml(tmp_path / "s.yaml", cfg)
    cluster = write_yaml(tmp_path / "c.yaml", cluster_config(tmp_path / "runs", num_workers=2))
    s, c, problems = read_configs(sweep, cluster)
    assert problems == []
    return check_run(s, c, str(sweep), str(cluster))


def test_a_template_that_refuses_a_conversation_is_named_by_file_and_line(tiny_model, tmp_path):
    model = _model_with_template(tiny_model, tmp_path, ALTERNATING)
    data = _chat_rows(tmp_path / "chat.jsonl", bad_at=2)
    (problem,) = _check(tmp_path, model, {"path": str(data), "format": "chat"})
    assert str(problem) == (
        f"{data}: line 3: the chat template refuses this conversation (Conversation roles must alternate "
        "user/assistant/user/assistant/...). Fix the row to the shape the template accepts (many require user and "
        "assistant turns to alternate, starting with user, a system message only first), or remove it"
    )
    assert _check(tmp_path, model, {"path": str(_chat_rows(tmp_path / "good.jsonl")), "format": "chat"}) == []


def test_the_run_names_a_refused_row_past_the_head(tiny_model, tmp_path):
    from adaptune.config import DataConfig

    model = _model_with_template(tiny_model, tmp_path, ALTERNATING)
    data = _chat_rows(tmp_path / "chat.jsonl", bad_at=150, n=200)
    with pytest.raises(DataError, match=rf"{data}: line 151: the chat template refuses this conversation"):
        prepare_dataset(DataConfig(path=str(data), format="chat"), str(model), tmp_path / "prepared")


def test_a_template_that_does_not_render_prefix_by_prefix_is_refused_unless_prompts_are_not_masked(
    tiny_model, tmp_path
):
    model = _model_with_template(tiny_model, tmp_path, COUNTED)
    data = _chat_rows(tmp_path / "chat.jsonl")
    (problem,) = _check(tmp_path, model, {"path": str(data), "format": "chat"})
    assert str(problem).startswith(f"{data}: line 1: the tokenizer's chat template does not render this conversation")
    assert "Set data.mask_prompt=false to train on whole conversations" in str(problem)
    unmasked = {"path": str(data), "format": "chat", "mask_prompt": False}
    assert _check(tmp_path, model, unmasked) == []  # the fix it names works
    from adaptune.config import DataConfig

    m = prepare_dataset(DataConfig(**unmasked, val_fraction=0.2), str(model), tmp_path / "prepared")
    assert m.examples["train"] > 0


def test_most_examples_cut_by_max_seq_length_is_a_warning_and_the_run_says_so(tiny_model, tmp_path):
    rows = [{"instruction": f"Question {i}: " + "why " * 10, "output": "Because. " * 60} for i in range(40)]
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (warning,) = _check(tmp_path, tiny_model, {"path": str(data), "max_seq_length": 96})
    assert warning.warning and warning.key == "data.max_seq_length"
    assert str(warning).startswith(f"{tmp_path / 's.yaml'}: data.max_seq_length: 40 of the first 40 examples are")
    r = run_cli("validate", str(tmp_path / "s.yaml"), "--cluster", str(tmp_path / "c.yaml"), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "adaptune: warning: " in r.stderr and "40 of the first 40 examples are longer than" in r.stderr


def test_fewer_training_examples_than_one_batch_is_refused_by_validate(tiny_model, tmp_path):
    rows = [{"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(20)]
    data = tmp_path / "small.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (problem,) = _check(tmp_path, tiny_model, {"path": str(data)}, micro_batch_size=16)
    assert str(problem) == (
        f"{tmp_path / 's.yaml'}: train.micro_batch_size: the train split has 18 examples, fewer than one batch "
        "across 2 workers (2 x micro_batch_size 16 = 32). Add data, or lower train.micro_batch_size or "
        "trial.num_workers"
    )
    assert _check(tmp_path, tiny_model, {"path": str(data)}, micro_batch_size=8) == []


def test_a_rank_above_the_adapted_layers_dimensions_is_refused(tiny_model, tmp_path):
    """The tiny model's k_proj/v_proj are 64x128 (two KV heads of 32): rank 96 cannot be reached there."""
    cfg = sweep_config(tiny_model, lora={"r": 96, "alpha": 192})
    cfg["search"] = {"space": {"lora.r": {"choice": [8, 128]}}}
    sweep = write_yaml(tmp_path / "s.yaml", cfg)
    s, c, problems = read_configs(sweep, write_yaml(tmp_path / "c.yaml", cluster_config(tmp_path / "runs")))
    lines = [str(p) for p in check_run(s, c, str(sweep), "c.yaml")]
    assert [line.split(": ")[1] for line in lines] == ["lora.r", "search.space.lora.r"]
    assert "rank 96 is above min(in, out) = 64 of the adapted layer model.layers.0.self_attn.k_proj (64x128" in lines[0]
    assert lines[0].endswith("Use lora.r <= 64, or adapt larger layers") and "rank 128 is above" in lines[1]


def test_a_bare_name_that_adapts_attention_and_mlp_is_named(tmp_path):
    """GPT-2's `c_proj` is the attention output and the MLP's down projection: `validate` says both are adapted."""
    from adaptune.demo.build import build_tiny_model

    from .support import DEMO_DATA

    texts = [json.loads(line)["output"] for line in DEMO_DATA.read_text(encoding="utf-8").splitlines()[:200]]
    gpt2 = build_tiny_model(tmp_path / "gpt2", texts, arch="gpt2", hidden_size=64, vocab_size=512)
    cfg = sweep_config(gpt2, lora={"r": 8, "alpha": 16, "target_modules": ["c_attn", "c_proj"]})
    sweep = write_yaml(tmp_path / "s.yaml", cfg)
    r = run_cli("validate", str(sweep), "--cluster", str(write_yaml(tmp_path / "c.yaml", cluster_config(tmp_path))))
    assert r.returncode == 0, r.stderr
    assert (
        f"adaptune: warning: {sweep}: lora.target_modules: 'c_proj' matches layers of 2 kinds (attn.c_proj, "
        "mlp.c_proj): all of them are adapted. Write 'attn.c_proj' or 'mlp.c_proj' to adapt only one kind"
    ) in r.stderr
    assert "'c_attn' matches" not in r.stderr
