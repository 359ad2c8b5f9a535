"""The schema, overrides and the one-line errors they produce."""

from __future__ import annotations

import pytest

from adaptune.config import load_config, parse_override, read_configs
from adaptune.errors import ConfigError

from .support import write_yaml

pytestmark = pytest.mark.unit


def _sweep(tmp_path, **overrides):
    data = {"name": "t", "model": {"path": "m"}, "data": {"path": "d.jsonl"}, **overrides}
    return write_yaml(tmp_path / "sweep.yaml", data)


def _messages(excinfo) -> list[str]:
    return [str(p) for p in excinfo.value.problems]


def test_defaults_come_from_the_schema(tmp_path):
    sweep, cluster = load_config(_sweep(tmp_path))
    assert sweep.lora.r == 8 and sweep.lora.target_modules == "attention"
    assert cluster.trial.num_workers == 2 and cluster.deepspeed.zero_stage == 2
    assert cluster.ray.address is None


def test_unknown_key_suggests_the_close_one(tmp_path):
    path = _sweep(tmp_path, lora={"rank": 8})
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert _messages(e) == [f"{path}: lora.rank: unknown key. Did you mean `lora.r`?"]


def test_every_problem_is_reported_at_once(tmp_path):
    path = _sweep(tmp_path, lora={"r": 0, "dropout": 2}, train={"learning_rate": "fast", "eval_everyy": 3})
    cluster = write_yaml(tmp_path / "c.yaml", {"deepspeed": {"zero_stage": 4}})
    with pytest.raises(ConfigError) as e:
        load_config(path, cluster)
    text = "\n".join(_messages(e))
    assert f"{path}: lora.r: Input should be greater than 0 (got 0)" in text
    assert f"{path}: lora.dropout:" in text and "(got 2)" in text
    assert f"{path}: train.learning_rate:" in text and "'fast'" in text
    assert "train.eval_everyy: unknown key. Did you mean `train.eval_every`?" in text
    assert f"{cluster}: deepspeed.zero_stage:" in text and "(got 4)" in text
    assert len(e.value.problems) == 5


def test_missing_required_key(tmp_path):
    path = write_yaml(tmp_path / "s.yaml", {"name": "t", "model": {"path": "m"}})
    with pytest.raises(ConfigError, match=r"s.yaml: data: required key is missing"):
        load_config(path)


def test_named_target_set_must_exist(tmp_path):
    path = _sweep(tmp_path, lora={"target_modules": "attn"})
    with pytest.raises(ConfigError, match=r"lora: target_modules 'attn' is not a named set.*\. Use one of attention"):
        load_config(path)


def test_cross_field_rule_names_the_fix(tmp_path):
    path = _sweep(tmp_path, train={"max_steps": 10, "eval_every": 50})
    with pytest.raises(ConfigError, match=r"eval_every \(50\) is larger than max_steps \(10\).*Set eval_every"):
        load_config(path)
    cluster = write_yaml(tmp_path / "c.yaml", {"deepspeed": {"zero_stage": 2, "offload_params": True}})
    with pytest.raises(ConfigError, match=r"c.yaml: deepspeed: offload_params needs zero_stage 3 \(got 2\)"):
        load_config(_sweep(tmp_path), cluster)


def test_overrides_are_validated_like_the_file(tmp_path):
    path = _sweep(tmp_path)
    sweep, cluster = load_config(
        path,
        None,
        ["lora.r=32", "lora.target_modules=[q_proj, v_proj]", "cluster.trial.num_workers=1", "data.eval_path=null"],
    )
    assert sweep.lora.r == 32 and sweep.lora.target_modules == ["q_proj", "v_proj"]
    assert cluster.trial.num_workers == 1
    with pytest.raises(ConfigError) as e:
        load_config(path, None, ["lora.r=abc", "cluster.trial.num_wrkers=3", "nonsense"])
    text = "\n".join(_messages(e))
    assert f"{path} (override lora.r=abc): lora.r: Input should be a valid integer" in text
    assert (
        "embedded default cluster (override cluster.trial.num_wrkers=3): cluster.trial.num_wrkers: unknown key. "
        "Did you mean `cluster.trial.num_workers`?" in text
    )
    assert "command line: nonsense: override is not `dotted.key=value`. Write it like lora.r=16" in text


def test_parse_override_types():
    assert parse_override("train.learning_rate=1e-4") == (["train", "learning_rate"], 1e-4)
    assert parse_override("data.eval_path=null") == (["data", "eval_path"], None)
    assert parse_override("lora.target_modules=all-linear") == (["lora", "target_modules"], "all-linear")


def test_file_problems_are_one_line_each(tmp_path):
    missing = tmp_path / "nope.yaml"
    _, _, problems = read_configs(missing)
    assert [str(p) for p in problems] == [f"{missing}: sweep file not found. Check the path"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\nmodel: [unclosed\n", encoding="utf-8")
    _, _, problems = read_configs(bad)
    assert len(problems) == 1 and str(problems[0]).startswith(f"{bad}: line 3: invalid YAML")
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n", encoding="utf-8")
    _, _, problems = read_configs(listy)
    assert "expected a mapping of keys at the top, got list" in str(problems[0])
