"""Hostile input: malformed and adversarial sweep files, cluster profiles, overrides and data, each through the
real CLI in a process of its own, the way a user starts work. Every case must be refused with exit code 2 and
a line naming the file, the key or row, what is wrong and the fix; no traceback; Ray neither imported nor
started; no MLflow store written; done within seconds (a refusal that reads a 50 MB line or expands an alias
bomb would take minutes or never finish)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .support import DEMO_DATA, REPO, free_port, sweep_config, write_yaml

FROZEN = REPO / "data" / "demo" / "frozen_eval.jsonl"
TIME_LIMIT_S = 20  # generous for a loaded machine: each case is refused in about a second
MLFLOW_TRACES = ("mlflow.db", "mlruns", "mlartifacts")

# The CLI's main() in a fresh interpreter, as the `adaptune` script runs it, then a record of what the process
# loaded: a refusal must come before Ray is imported, let alone started, and before MLflow.
PROBE = r"""
import json, sys
from adaptune.cli import main
try:
    rc = main(sys.argv[2:])
except SystemExit as e:
    rc = e.code if isinstance(e.code, int) else 1
ray = sys.modules.get("ray")
with open(sys.argv[1], "w") as f:
    json.dump({"rc": rc, "ray_imported": ray is not None, "ray_initialized": bool(ray and ray.is_initialized()),
               "mlflow_imported": "mlflow" in sys.modules}, f)
sys.exit(rc)
"""


def _merged(cfg: dict, sections: dict) -> dict:
    """`cfg` with each section's keys set over it (a whole value when not a mapping; DELETE leaves it out)."""
    for key, value in sections.items():
        if value is DELETE:
            del cfg[key]
        elif isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


@dataclass
class Ctx:
    """A case's scratch directory and the tiny model; builders write the hostile input here."""

    tmp: Path
    model: Path
    helpers: list[subprocess.Popen] = field(default_factory=list)  # processes a builder started, ended after

    @property
    def storage(self) -> Path:
        return self.tmp / "storage"

    def sweep(self, filename: str = "sweep.yaml", **sections) -> Path:
        """A valid sweep file for the tiny model and the demo data, with `sections` set over it."""
        return write_yaml(self.tmp / filename, _merged(sweep_config(self.model), sections))

    def cluster(self, filename: str = "cluster.yaml", **sections) -> Path:
        """A valid profile (4 CPUs, 2 workers a trial, ZeRO-2, storage in tmp), with `sections` set over it."""
        cfg = {
            "capacity": {"cpus": 4},
            "trial": {"num_workers": 2, "cpus_per_worker": 1},
            "deepspeed": {"zero_stage": 2},
            "storage_path": str(self.storage),
        }
        return write_yaml(self.tmp / filename, _merged(cfg, sections))

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def rows(self, name: str, rows: list) -> Path:
        return self.file(name, "".join(json.dumps(r) + "\n" for r in rows))

    def sweep_on(self, data: Path, **data_keys) -> Path:
        """A valid sweep file whose data.path is `data`."""
        return self.sweep(data={"path": str(data), **data_keys})

    def run(self, verb: str, sweep: Path | str, *args: str, cluster: Path | None = None) -> list[str]:
        return [verb, str(sweep), "--cluster", str(cluster or self.cluster()), *args]


DELETE = object()  # a section to leave out of the sweep file
GOOD_ROW = {"instruction": "How do I reset the router?", "output": "Hold the reset button for ten seconds."}


def billion_laughs(levels: int = 9, width: int = 10) -> list[str]:
    """Anchors of anchors: a few hundred bytes that expand to width**levels values."""
    lines = [f"lol0: &lol0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * width)}]")
    return lines


def flow_bomb(levels: int = 8, width: int = 10) -> str:
    """The same in one flow-style YAML value, for an override on the command line."""
    items = [f"&b0 [{', '.join(['x'] * width)}]"]
    for i in range(1, levels):
        items.append(f"&b{i} [{', '.join([f'*b{i - 1}'] * width)}]")
    return "[" + ", ".join(items) + "]"


@dataclass(frozen=True)
class Case:
    """One hostile input. `build` writes it and returns the CLI arguments and the file (or "command line") the
    problem line must start with; the line must then name `key` (when the problem has one), say `what`, and end
    with a fix containing `fix`."""

    id: str
    build: Callable[[Ctx], tuple[list[str], str]]
    key: str | None
    what: str
    fix: str


def _sweep_file(c: Ctx, text: str | bytes) -> tuple[list[str], str]:
    path = c.file("sweep.yaml", text)
    return c.run("sweep", path), str(path)


def _header(c: Ctx) -> str:
    return f"name: t\nmodel: {{path: {c.model}}}\ndata: {{path: {DEMO_DATA}}}\n"


def _data_case(name: str, content: str | bytes | list, **data_keys):
    """A sweep on a data file `name` holding `content` (rows when a list); the problem names that file."""

    def build(c: Ctx) -> tuple[list[str], str]:
        data = c.rows(name, content) if isinstance(content, list) else c.file(name, content)
        return c.run("sweep", c.sweep_on(data, **data_keys)), str(data)

    return build


def _setting(cluster: dict | None = None, **sections):
    """A sweep file with `sections` set (and a profile with `cluster` set); the problem names the sweep file."""

    def build(c: Ctx) -> tuple[list[str], str]:
        sweep = c.sweep(**sections)
        return c.run("sweep", sweep, cluster=c.cluster(**(cluster or {}))), str(sweep)

    return build


def _scorers(code: str, names: list[str]):
    """A sweep whose eval.scorers name functions of a scorers file with `code`; the problem names that file."""

    def build(c: Ctx) -> tuple[list[str], str]:
        path = c.file("my_scorers.py", code)
        sweep = c.sweep(eval={"samples": 4, "scorers": names, "scorers_file": str(path)})
        return c.run("sweep", sweep), str(path)

    return build


def _profile(text: str | None = None, verb: str = "sweep", **sections):
    """A profile with `sections` set (or the raw `text`); the problem names the profile."""

    def build(c: Ctx) -> tuple[list[str], str]:
        cluster = c.file("cluster.yaml", text) if text is not None else c.cluster(**sections)
        return c.run(verb, c.sweep(), cluster=cluster), str(cluster)

    return build


# --------------------------------------------------------------------------------------------------
# Builders that need more than a line
# --------------------------------------------------------------------------------------------------


def _sweep_is_directory(c: Ctx):
    d = c.tmp / "sweeps.yaml"
    d.mkdir()
    return c.run("sweep", d), str(d)


def _sweep_missing(c: Ctx):
    c.sweep("quickstart.yaml")
    return c.run("sweep", c.tmp / "quickstrat.yaml"), str(c.tmp / "quickstrat.yaml")


def _sweep_is_dev_zero(c: Ctx):
    return c.run("sweep", "/dev/zero"), "/dev/zero"


def _sweep_50mb_line(c: Ctx):
    path = c.tmp / "sweep.yaml"
    with path.open("w") as f:
        f.write(_header(c) + 'lora: {target_modules: "')
        f.write("q" * (50 * 2**20))
        f.write('"}\n')
    return c.run("sweep", path), str(path)


def _python_tag(c: Ctx):
    """The test checks afterwards that no `pwned` file was made."""
    return _sweep_file(c, _header(c) + f'lora: !!python/object/apply:os.system ["touch {c.tmp / "pwned"}"]\n')


def _override_bad_key(c: Ctx):
    sweep = c.sweep()
    return c.run("sweep", sweep, "lora.dropuot=0.1"), f"{sweep} (override lora.dropuot=0.1)"


def _override_not_key_value(c: Ctx):
    return c.run("sweep", c.sweep(), "lora.r"), "command line"


def _override_alias_bomb(c: Ctx):
    return c.run("sweep", c.sweep(), f"lora.target_modules={flow_bomb()}"), "command line"


def _data_dir_without_data(c: Ctx):
    d = c.tmp / "drops"
    c.file("drops/readme.txt", "the data is elsewhere\n")
    c.file("drops/2026/notes.md", "# notes\n")
    return c.run("sweep", c.sweep_on(d)), str(c.tmp / "sweep.yaml")


def _data_missing(c: Ctx):
    c.rows("company.jsonl", [GOOD_ROW])
    return c.run("sweep", c.sweep_on(c.tmp / "compnay.jsonl")), str(c.tmp / "sweep.yaml")


def _symlink_loops(c: Ctx):
    d = c.tmp / "data"
    d.mkdir()
    (d / "sub").symlink_to(d, target_is_directory=True)  # a directory loop: the walk must not follow it
    (d / "rows.jsonl").symlink_to(d / "rows.jsonl")  # a link to itself
    return c.run("sweep", c.sweep_on(d)), str(c.tmp / "sweep.yaml")


def _fifo(c: Ctx):
    fifo = c.tmp / "rows.jsonl"
    os.mkfifo(fifo)  # opening it would wait for a writer forever
    return c.run("sweep", c.sweep_on(fifo)), str(c.tmp / "sweep.yaml")


def _gzip_named_jsonl(c: Ctx):
    data = c.file("rows.jsonl", gzip.compress((json.dumps(GOOD_ROW) + "\n").encode() * 50))
    return c.run("train", c.sweep_on(data)), str(data)


def _line_50mb(c: Ctx):
    data = c.tmp / "rows.jsonl"
    with data.open("w") as f:
        f.write('{"instruction": "')
        f.write("a" * (50 * 2**20))
        f.write('", "output": "b"}\n')
    return c.run("sweep", c.sweep_on(data)), str(data)


def _json_nesting_bomb(c: Ctx):
    depth = 200_000
    data = c.file("rows.jsonl", '{"instruction": ' + "[" * depth + "]" * depth + ', "output": "a"}\n')
    return c.run("sweep", c.sweep_on(data)), str(data)


def _csv_cell_nesting_bomb(c: Ctx):
    depth = 60_000  # within the csv module's field limit
    data = c.file("chat.csv", 'messages\n"' + "[" * depth + "]" * depth + '"\n')
    return c.run("sweep", c.sweep_on(data, format="chat")), str(data)


def _bad_row_past_the_head(c: Ctx):
    """validate reads the head of the data; the run reads all of it, before Ray."""
    rows = [{**GOOD_ROW, "instruction": f"Question {i}?"} for i in range(150)]
    rows[139]["output"] = ""
    return c.run("sweep", c.sweep_on(c.rows("rows.jsonl", rows))), str(c.tmp / "rows.jsonl")


def _held_out_overlap(key: str):
    def build(c: Ctx):
        held = c.file(f"{key}.jsonl", "".join(DEMO_DATA.read_text(encoding="utf-8").splitlines(True)[:5]))
        return c.run("sweep", c.sweep(data={key.removeprefix("data."): str(held)})), str(held)

    return build


def _model_config_is_a_list(c: Ctx):
    model = c.tmp / "model"
    model.mkdir()
    for f in c.model.iterdir():
        if f.name != "config.json":
            shutil.copy(f, model / f.name)
    (model / "config.json").write_text("[]")
    return c.run("sweep", c.sweep(model={"path": str(model)})), str(c.tmp / "sweep.yaml")


def _truncated_safetensors(c: Ctx):
    model = c.tmp / "model"
    model.mkdir()
    for f in c.model.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, model / f.name)
    (model / "model.safetensors").write_bytes(b"\x10\x00\x00")
    return c.run("sweep", c.sweep(model={"path": str(model)})), str(c.tmp / "sweep.yaml")


def _resume_escaping(c: Ctx):
    sweep = c.sweep()
    return c.run("sweep", sweep, "--resume", "../../../etc"), str(c.storage.resolve() / "test")


def _rollback_escaping(c: Ctx):
    return ["rollback", "../../../etc", "--cluster", str(c.cluster())], "command line"


def _retrain_registered_model_escaping(c: Ctx):
    sweep = c.sweep(mlflow={"registered_model": "../../outside"}, retrain={"frozen_eval_path": str(FROZEN)})
    return c.run("retrain", sweep, "--data", str(DEMO_DATA)), str(sweep)


def _retrain_drop_missing(c: Ctx):
    c.rows("drops/2026-11-22.jsonl", [GOOD_ROW])
    sweep = c.sweep(retrain={"frozen_eval_path": str(FROZEN)})
    drop = c.tmp / "drops" / "2026-11-23.jsonl"
    return c.run("retrain", sweep, "--data", str(drop)), str(drop)


def _retrain_drop_is_frozen_set(c: Ctx):
    sweep = c.sweep(retrain={"frozen_eval_path": str(FROZEN)})
    drop = c.file("drop.jsonl", FROZEN.read_text(encoding="utf-8"))
    return c.run("retrain", sweep, "--data", str(drop)), str(FROZEN)


def _guard_set_overlaps_training(c: Ctx):
    rows = DEMO_DATA.read_text(encoding="utf-8").splitlines()[:5]  # a guard set with rows the sweep trains on
    guard = c.file("guard.jsonl", "\n".join(rows) + "\n")
    sweep = c.sweep(retrain={"frozen_eval_path": str(FROZEN), "guard_eval_paths": [str(guard)]})
    return c.run("sweep", sweep), str(guard)


def _retrain_drop_binary(c: Ctx):
    sweep = c.sweep(retrain={"frozen_eval_path": str(FROZEN)})
    drop = c.file("drop.jsonl", b"\xff\xfe\x00\x01" * 64)
    return c.run("retrain", sweep, "--data", str(drop)), str(drop)


def _space_product_bomb(c: Ctx):
    """Every combination of the settings that must agree is incompatible with ZeRO-3: 300**4 of them."""
    space = {
        "quantization.mode": {"choice": ["8bit"] * 300},
        "train.precision": {"choice": ["fp32", "bf16"] * 150},
        "quantization.compute_dtype": {"choice": ["fp32", "bf16"] * 150},
        "quantization.quant_storage": {"choice": ["uint8", "fp32"] * 150},
    }
    sweep = c.sweep(search={"space": space})
    return c.run("sweep", sweep, cluster=c.cluster(deepspeed={"zero_stage": 3})), str(sweep)


def _model_case(edits: dict[str, Callable[[dict], None]], data: dict | None = None):
    """A sweep on a copy of the tiny model whose JSON files `edits` change (file name -> change in place), on
    `data` when given; the problem names the sweep file."""

    def build(c: Ctx) -> tuple[list[str], str]:
        model = c.tmp / "model"
        shutil.copytree(c.model, model)
        for name, change in edits.items():
            path = model / name
            config = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
            change(config)
            path.write_text(json.dumps(config), encoding="utf-8")
        sweep = c.sweep(model={"path": str(model)}, **({"data": data} if data else {}))
        return c.run("sweep", sweep), str(sweep)

    return build


def _tokenizer_grown_past_the_embeddings(c: Ctx):
    """Tokens added to the tokenizer (a fine-tuning recipe's special tokens) without resizing the model."""
    from tokenizers import Tokenizer

    model = c.tmp / "model"
    shutil.copytree(c.model, model)
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    rows = json.loads((model / "config.json").read_text(encoding="utf-8"))["vocab_size"]
    tok.add_tokens([f"<|extra_{i}|>" for i in range(max(8, rows - tok.get_vocab_size() + 8))])
    tok.save(str(model / "tokenizer.json"))
    sweep = c.sweep(model={"path": str(model)})
    return c.run("sweep", sweep), str(sweep)


def _chat_template_case(template: str, rows: list):
    """Chat rows for a copy of the tiny model whose tokenizer carries `template`; the problem names the row."""

    def build(c: Ctx) -> tuple[list[str], str]:
        model = c.tmp / "model"
        shutil.copytree(c.model, model)
        (model / "chat_template.jinja").write_text(template, encoding="utf-8")
        data = c.rows("chat.jsonl", rows)
        sweep = c.sweep(model={"path": str(model)}, data={"path": str(data), "format": "chat"})
        return c.run("sweep", sweep), str(data)

    return build


# A template like Gemma's: no system role.
NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>"
    "{% endif %}"
)
# A template that rewrites earlier turns as the conversation grows (as reasoning models' templates drop
# earlier thinking): here, a header counting the turns.
TURN_COUNTING_TEMPLATE = (
    "[{{ messages | length }} turns]{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CHAT_PAIR = [{"role": "user", "content": "How do I reset the router?"}, {"role": "assistant", "content": "Hold it."}]

# Another run holding the embedded store, through the same lock a run takes.
HOLD_STORE = r"""
import sys, time
from adaptune.config import read_configs
from adaptune.tracking.server import embedded_store_lock
_, cluster, _ = read_configs(None, sys.argv[1], [])
with embedded_store_lock(cluster, sys.argv[1], "sweep-20261203-101500"):
    print("held", flush=True)
    time.sleep(120)
"""


def _store_in_use(c: Ctx):
    """Two sweeps on one embedded store at once: the second is refused, naming the first."""
    cluster = c.cluster()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_STORE, str(cluster)], stdout=subprocess.PIPE, text=True)
    c.helpers.append(holder)
    assert holder.stdout.readline().strip() == "held"
    return c.run("sweep", c.sweep(), cluster=cluster), str(cluster)


def _data_path_with_spaces_misspelt(c: Ctx):
    c.rows("données clients/faq 2026.jsonl", [GOOD_ROW])
    return c.run("sweep", c.sweep_on(c.tmp / "données clients" / "faq 2062.jsonl")), str(c.tmp / "sweep.yaml")


def _space(key: str, spec) -> Callable[[Ctx], tuple[list[str], str]]:
    return _setting(search={"space": {key: spec}})


CASES = [
    # ---- the sweep file itself
    Case("sweep-file-missing", _sweep_missing, None, "sweep file not found", "Did you mean"),
    Case("sweep-file-is-a-directory", _sweep_is_directory, None, "is a directory, not a file", "Give a YAML file"),
    Case("sweep-file-is-dev-zero", _sweep_is_dev_zero, None, "not a regular file", "Give a YAML file"),
    Case(
        "sweep-file-binary",
        lambda c: _sweep_file(c, b"\x7fELF\x02\x01\x01\x00" + bytes(range(128, 256))),
        "line 1",
        "not UTF-8 text",
        "Save it as UTF-8",
    ),
    Case(
        "sweep-file-latin-1",
        lambda c: _sweep_file(c, "name: t\n# caf\xe9\n".encode("latin-1")),
        "line 2",
        "not UTF-8 text",
        "Save it as UTF-8",
    ),
    Case(
        "sweep-yaml-syntax", lambda c: _sweep_file(c, "name: [t\nlora: 8\n"), "line 2", "invalid YAML", "Fix the YAML"
    ),
    Case("sweep-top-level-list", lambda c: _sweep_file(c, "- a\n- b\n"), None, "got list", "`key: value` lines"),
    Case(
        "sweep-yaml-billion-laughs",
        lambda c: _sweep_file(c, _header(c) + "\n".join(billion_laughs()) + "\nlora: {target_modules: *lol8}\n"),
        "line 8",
        "expands to more than 100000 values",
        "Write the values out",
    ),
    Case(
        "sweep-yaml-alias-cycle",
        lambda c: _sweep_file(c, _header(c) + "lora: &me {target_modules: [*me]}\n"),
        "line 4",
        "refers to a node that contains it",
        "Write the values out",
    ),
    Case(
        "sweep-yaml-nested-40-deep",
        lambda c: _sweep_file(c, _header(c) + "lora: {target_modules: " + "[" * 40 + "]" * 40 + "}\n"),
        "line 4",
        "nested more than 32 levels",
        "Write the values out",
    ),
    Case(
        "sweep-yaml-nested-100k-deep",
        lambda c: _sweep_file(c, _header(c) + "lora: " + "[" * 100_000 + "]" * 100_000 + "\n"),
        None,
        "nested too deeply to read",
        "Write the values out",
    ),
    Case("sweep-yaml-50mb-line", _sweep_50mb_line, None, "larger than 256 KiB", "check that this is the right file"),
    Case("sweep-yaml-python-tag", _python_tag, "line 4", "could not determine a constructor", "Fix the YAML syntax"),
    # ---- keys and values
    Case("wrong-type-rank", _setting(lora={"r": "sixteen"}), "lora.r", "valid integer", "Fix the value's type"),
    Case("negative-rank", _setting(lora={"r": -8}), "lora.r", "(got -8)", "Use a value greater than 0"),
    Case(
        "zero-rank-override",
        lambda c: (c.run("sweep", c.sweep(), "lora.r=0"), f"{c.tmp / 'sweep.yaml'} (override lora.r=0)"),
        "lora.r",
        "(got 0)",
        "Use a value greater than 0",
    ),
    Case("section-wrong-type", _setting(search=[1, 2]), "search", "valid dictionary", "Fix the value's type"),
    Case("required-key-missing", _setting(data=DELETE), "data", "required key is missing", "Add it"),
    Case("unknown-key", _setting(lora={"rank": 8}), "lora.rank", "unknown key", "Did you mean `lora.r`?"),
    Case(
        "learning-rate-nan",
        _setting(train={"learning_rate": float("nan")}),
        "train.learning_rate",
        "finite number",
        "Use a finite number",
    ),
    Case(
        "packing-and-length-grouping-together",
        _setting(data={"packing": True, "group_by_length": True}),
        "data",
        "packing and group_by_length are both on",
        "Set one",
    ),
    Case(
        "flash-attention-on-cpu-workers",
        _setting(train={"attention": "flash_attention_2"}),
        "train.attention",
        "flash_attention_2 runs on GPUs only",
        "Use train.attention=sdpa on CPU workers, or a GPU cluster profile",
    ),
    Case(
        "loftq-without-quantization",
        _setting(lora={"init": "loftq"}),
        "lora.init",
        "loftq starts A and B from the 4-bit quantization error, but quantization.mode is none",
        "Set quantization.mode=4bit (QLoRA)",
    ),
    Case(
        "pissa-under-zero3",
        _setting(lora={"init": "pissa"}, cluster={"deepspeed": {"zero_stage": 3}}),
        "lora.init",
        "pissa decomposes each whole base weight, which ZeRO-3 shards across the workers",
        "Use deepspeed.zero_stage=2",
    ),
    Case(
        "olora-with-dora",
        _setting(lora={"init": "olora", "use_dora": True}),
        "lora.init",
        "olora with DoRA cannot be saved as an adapter on the unchanged base",
        "Set lora.use_dora=false",
    ),
    Case(
        "paged-optimizer-on-cpu-workers",
        _setting(train={"optimizer": "paged_adamw_8bit"}),
        "train.optimizer",
        "paged_adamw_8bit pages optimizer state through CUDA unified memory: it needs GPU workers",
        "Use train.optimizer=adamw or adamw_8bit on CPU workers",
    ),
    Case(
        "loraplus-ratio-zero",
        _setting(train={"loraplus_lr_ratio": 0}),
        "train.loraplus_lr_ratio",
        "(got 0)",
        "Use a value greater than 0",
    ),
    Case(
        "eval-every-beyond-max-steps",
        _setting(train={"max_steps": 10, "eval_every": 50}),
        "train",
        "eval_every (50) is larger than max_steps (10)",
        "Set eval_every to at most max_steps",
    ),
    Case(
        "prompt-template-padding-bomb",
        _setting(data={"path": str(DEMO_DATA), "prompt_template": "{instruction:>999999999}\n### Response:\n"}),
        "data.prompt_template",
        "unknown placeholder {instruction:>999999999}",
        "Use only {instruction}, {input_block}, {input_clause}",
    ),
    Case(
        "prompt-template-attribute-access",
        _setting(data={"path": str(DEMO_DATA), "prompt_template": "{instruction.__class__.__mro__}"}),
        "data.prompt_template",
        "unknown placeholder",
        "Use only {instruction}",
    ),
    Case("override-bad-key", _override_bad_key, "lora.dropuot", "unknown key", "Did you mean `lora.dropout`?"),
    Case("override-not-key-value", _override_not_key_value, "lora.r", "not `dotted.key=value`", "lora.r=16"),
    Case("override-alias-bomb", _override_alias_bomb, "lora.target_modules", "nests or repeats", "Give a plain value"),
    # ---- the search space
    Case(
        "lr-range-reversed",
        _space("train.learning_rate", {"loguniform": [1e-2, 1e-5]}),
        "search.space.train.learning_rate",
        "range is empty or reversed",
        "Put the lower bound first",
    ),
    Case(
        "unknown-distribution",
        _space("lora.dropout", {"gaussian": [0.0, 0.1]}),
        "search.space.lora.dropout",
        "unknown distribution 'gaussian'",
        "Use one of choice, grid",
    ),
    Case(
        "space-key-not-in-schema",
        _space("lora.rank", {"choice": [8, 16]}),
        "search.space.lora.rank",
        "unknown key",
        "Did you mean `lora.r`?",
    ),
    Case(
        "space-choice-empty",
        _space("lora.r", {"choice": []}),
        "search.space.lora.r",
        "needs a non-empty list",
        "Write choice",
    ),
    Case(
        "space-loguniform-from-zero",
        _space("train.learning_rate", {"loguniform": [0, 1e-3]}),
        "search.space.train.learning_rate",
        "positive lower bound",
        "Use uniform, or a lower bound > 0",
    ),
    Case(
        "space-negative-rank",
        _space("lora.r", {"choice": [8, -4]}),
        "search.space.lora.r",
        "value -4 is not allowed",
        "Change the distribution's values",
    ),
    Case(
        "space-data-key",
        _space("data.path", {"choice": ["a.jsonl", "b.jsonl"]}),
        "search.space.data.path",
        "cannot be searched",
        "run one sweep per model/data choice",
    ),
    Case(
        "space-product-of-8-billion",
        _space_product_bomb,
        "search.space",
        "every combination",
        "Widen the space or change the cluster",
    ),
    Case(
        "points-to-evaluate-unknown-key",
        _setting(search={"space": {"lora.r": {"choice": [8]}}, "points_to_evaluate": [{"lora.alpha": 3}]}),
        "search.points_to_evaluate[0]",
        "not in search.space",
        "Give values only for searched keys",
    ),
    Case(
        "metric-not-reported",
        _setting(search={"metric": "eval_los"}),
        "search.metric",
        "does not report 'eval_los'",
        "Did you mean `eval_loss`?",
    ),
    # ---- generated answers (eval): scorers, samples, the metric they give
    Case(
        "scorer-unknown",
        _setting(eval={"samples": 4, "scorers": ["exact_match", "bleu"]}),
        "eval.scorers",
        "unknown scorer 'bleu'",
        "Use a built-in scorer, or define `def bleu(prompt: str, reference: str, answer: str) -> float`",
    ),
    Case(
        "scorer-file-lacks-the-function",
        _scorers("def other(prompt, reference, answer):\n    return 1.0\n", ["mine"]),
        "eval.scorers",
        "scorer 'mine' is not a function of the scorers file (it defines: other)",
        "Define `def mine(prompt: str, reference: str, answer: str) -> float` there",
    ),
    Case(
        "scorer-raises",
        _scorers("def mine(prompt, reference, answer):\n    raise KeyError(answer)\n", ["mine"]),
        "eval.scorers",
        "scorer 'mine' raises KeyError",
        "Make it return a float for any prompt, reference and answer strings",
    ),
    Case(
        "scorer-file-fails-to-import",
        _scorers("import adaptune_no_such_module\n", ["mine"]),
        "eval.scorers_file",
        "the scorers file fails to load (ModuleNotFoundError",
        "Fix the file so that `python FILE` runs",
    ),
    Case(
        "eval-samples-above-the-validation-split",
        _setting(eval={"samples": 200}),
        "eval.samples",
        "asks for 200 validation prompts, but the validation split has",
        "Set eval.samples to at most",
    ),
    Case(
        "generated-score-minimised",
        _setting(eval={"samples": 4}, search={"metric": "rouge_l"}),
        "search.metric",
        "'rouge_l' scores generated answers, higher is better, but search.mode is 'min'",
        "Set search.mode: max",
    ),
    # ---- names that become paths under storage_path
    Case(
        "name-with-path-separators",
        _setting(name="../../outside"),
        "name",
        "should match pattern",
        "Use letters, digits",
    ),
    Case(
        "registered-model-escaping-storage",
        _retrain_registered_model_escaping,
        "mlflow.registered_model",
        "should match pattern",
        "Use letters, digits",
    ),
    Case("resume-id-escaping-storage", _resume_escaping, "--resume", "no sweep '../../../etc'", "Sweeps there: none"),
    Case("rollback-name-escaping-storage", _rollback_escaping, "NAME", "'../../../etc'", "Use letters, digits"),
    # ---- the cluster profile
    Case(
        "cluster-profile-missing",
        lambda c: (c.run("sweep", c.sweep(), cluster=c.tmp / "gpu.yaml"), str(c.tmp / "gpu.yaml")),
        None,
        "cluster profile not found",
        "Files there: sweep.yaml",
    ),
    Case("cluster-profile-is-a-list", _profile("- head\n- worker\n"), None, "got list", "`key: value` lines"),
    Case(
        "cluster-yaml-billion-laughs",
        _profile("\n".join(billion_laughs()) + "\n", verb="validate"),
        "line 5",
        "expands to more than",
        "Write the values out",
    ),
    Case("negative-cpus", _profile(capacity={"cpus": -4}), "capacity.cpus", "(got -4)", "Use a value at least 0"),
    Case(
        "workers-wrong-type",
        _profile(trial={"num_workers": "two"}),
        "trial.num_workers",
        "valid integer",
        "Fix the value's type",
    ),
    Case(
        "more-gpus-per-trial-than-the-cluster",
        _profile(trial={"num_workers": 4, "use_gpu": True, "gpus_per_worker": 1}, capacity={"cpus": 8, "gpus": 2}),
        "trial.use_gpu",
        "a trial needs 4 GPUs (4 workers x 1) but the cluster has 2",
        "Lower trial.num_workers, raise capacity.gpus",
    ),
    Case(
        "more-cpus-per-trial-than-the-cluster",
        _profile(trial={"num_workers": 16}),
        "trial.num_workers",
        "a trial needs 16 CPUs",
        "Lower trial.num_workers",
    ),
    Case(
        "zero3-with-8bit",
        _setting(quantization={"mode": "8bit"}, cluster={"deepspeed": {"zero_stage": 3}}),
        "quantization.mode",
        "8-bit quantization cannot be sharded by ZeRO-3",
        "Use quantization.mode=4bit, or deepspeed.zero_stage <= 2",
    ),
    Case(
        "tracking-server-unreachable",
        lambda c: (
            c.run("sweep", c.sweep(), f"cluster.mlflow.tracking_uri=http://127.0.0.1:{free_port()}"),
            str(c.tmp / "cluster.yaml"),
        ),
        "mlflow.tracking_uri",
        "is unreachable",
        "Start the server",
    ),
    # ---- the model
    Case(
        "target-modules-that-do-not-exist",
        _setting(lora={"target_modules": ["q_proj", "qkv_fused"]}),
        "lora.target_modules",
        "qkv_fused not found in this llama model",
        "Pick modules from that list",
    ),
    Case("model-config-is-a-list", _model_config_is_a_list, "model.path", "no readable model_type", "Point at a saved"),
    Case("model-weights-truncated", _truncated_safetensors, "model.path", "not a safetensors file", "Point at a saved"),
    # ---- the data
    Case("data-missing", _data_missing, "data.path", "does not exist", "Did you mean"),
    Case(
        "data-dir-without-data-files",
        _data_dir_without_data,
        "data.path",
        "has no .jsonl/.csv/.parquet",
        "Point data.path at",
    ),
    Case("data-dir-symlink-loops", _symlink_loops, "data.path", "symlink does not resolve", "Point it at a data"),
    Case("data-is-a-fifo", _fifo, "data.path", "not a regular file", "Point it at a data file"),
    Case("data-gzip-named-jsonl", _gzip_named_jsonl, "line 1", "not UTF-8", "It is gzip-compressed: decompress it"),
    Case("data-50mb-line", _line_50mb, "line 1", "line longer than 16777216 bytes", "Split it into rows"),
    Case("data-json-nesting-bomb", _json_nesting_bomb, "line 1", "nested too deeply", "one JSON object per line"),
    Case("data-csv-cell-nesting-bomb", _csv_cell_nesting_bomb, "line 2", "is not a JSON list", "role, content"),
    Case(
        "data-csv-latin-1",
        _data_case("rows.csv", "instruction,output\nq,ok\ncaf\xe9?,yes\n".encode("latin-1")),
        "line 3",
        "not UTF-8",
        "Re-encode the file as UTF-8",
    ),
    Case(
        "data-csv-unbalanced-quote",
        _data_case("rows.csv", 'instruction,output\nq,a\n"Where is it,here\nq2,a2\n'),
        "line 3",
        "malformed CSV in the row starting here: unexpected end of data",
        "Close its quotes",
    ),
    Case(
        "data-csv-unquoted-comma",
        _data_case("rows.csv", "instruction,output\nHow much?,It costs 5,99 euros\n"),
        "line 2",
        "3 fields but the header names 2 columns",
        "Quote fields that contain commas",
    ),
    Case(
        "data-parquet-that-is-not-parquet",
        _data_case("rows.parquet", "instruction,output\nq,a\n"),
        None,
        "not a readable Parquet file",
        "Write it with pandas/pyarrow",
    ),
    Case("data-empty-file", _data_case("rows.jsonl", ""), None, "file is empty", "Remove it or add rows"),
    Case(
        "data-columns-missing",
        _data_case("rows.jsonl", [{"question": "q", "answer": "a"}]),
        "data.columns.instruction",
        "no row has the column 'instruction'; its columns are: question, answer",
        "Set data.columns.instruction: question",
    ),
    Case(
        "data-row-not-an-object",
        _data_case("rows.jsonl", [GOOD_ROW, ["q", "a"]]),
        "line 2",
        "expected an object with columns, got list",
        "Write one object per row",
    ),
    Case(
        "data-chat-unknown-role",
        _data_case(
            "chat.jsonl",
            [{"messages": [{"role": "customer", "content": "hi"}, {"role": "assistant", "content": "hello"}]}],
            format="chat",
        ),
        "line 1",
        "unknown role 'customer'",
        "Use one of system, user, assistant",
    ),
    Case(
        "data-empty-response",
        _data_case("rows.jsonl", [GOOD_ROW, {"instruction": "q", "output": "   "}]),
        "line 2",
        "empty response",
        "Fill in the response or remove the row",
    ),
    Case("data-bad-row-past-the-head", _bad_row_past_the_head, "line 140", "empty response", "Fill in the response"),
    Case(
        "eval-set-overlaps-training",
        _held_out_overlap("data.eval_path"),
        "data.eval_path",
        "line 1 asks what",
        "A validation set must never be trained on",
    ),
    Case(
        "test-set-overlaps-training",
        _held_out_overlap("data.test_path"),
        "data.test_path",
        "and 4 more of its rows are in the training data",
        "A test set must never be trained on",
    ),
    # ---- tokenizers and models that disagree
    Case(
        "tokenizer-grown-past-the-embeddings",
        _tokenizer_grown_past_the_embeddings,
        None,
        "would index past the embeddings",
        "Resize the model's embeddings to the tokenizer",
    ),
    Case(
        "config-eos-id-outside-the-embeddings",
        _model_case({"config.json": lambda cfg: cfg.update(eos_token_id=99_999)}),
        None,
        "config.json eos_token_id 99999 is outside the model's",
        "Fix eos_token_id in config.json",
    ),
    Case(
        "tokenizer-eos-not-in-its-vocabulary",
        _model_case({"tokenizer_config.json": lambda cfg: cfg.update(eos_token="<|no-such-token|>")}),
        None,
        "eos_token '<|no-such-token|>' is not in its vocabulary",
        "Set eos_token in tokenizer_config.json to a token the vocabulary has",
    ),
    # ---- chat conversations in odd shapes, and templates that refuse them
    Case(
        "chat-messages-an-object-not-a-list",
        _data_case("chat.jsonl", [{"messages": CHAT_PAIR[0]}], format="chat"),
        "line 1",
        "must be a non-empty list of messages",
        "Write [{role, content}, ...]",
    ),
    Case(
        "chat-message-without-content",
        _data_case("chat.jsonl", [{"messages": [{"role": "user"}, CHAT_PAIR[1]]}], format="chat"),
        "line 1",
        "message 0 is not an object with role and content",
        "Write {role, content}",
    ),
    Case(
        "chat-content-as-a-list-of-parts",
        _data_case(
            "chat.jsonl",
            [{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}, CHAT_PAIR[1]]}],
            format="chat",
        ),
        "line 1",
        "message 0 content is not text",
        "Make content a string",
    ),
    Case(
        "chat-without-an-assistant-turn",
        _data_case("chat.jsonl", [{"messages": [CHAT_PAIR[0], {"role": "user", "content": "Hello?"}]}], format="chat"),
        "line 1",
        "no non-empty assistant message",
        "Add the assistant's answer",
    ),
    Case(
        "chat-csv-messages-not-json",
        _data_case("chat.csv", "messages\nhow do I reset the router\n", format="chat"),
        "line 2",
        "'messages' is not a JSON list",
        "Write messages as a list of {role, content}",
    ),
    Case(
        "chat-template-refuses-a-system-message",
        _chat_template_case(
            NO_SYSTEM_TEMPLATE,
            [{"messages": CHAT_PAIR}, {"messages": [{"role": "system", "content": "Be brief."}, *CHAT_PAIR]}],
        ),
        "line 2",
        "the chat template refuses this conversation (System role not supported)",
        "a system message only first), or remove it",
    ),
    Case(
        "chat-template-rewrites-earlier-turns",
        _chat_template_case(TURN_COUNTING_TEMPLATE, [{"messages": CHAT_PAIR}]),
        "line 1",
        "does not render this conversation prefix by prefix",
        "Set data.mask_prompt=false",
    ),
    # ---- paths people have, and two runs on one store
    Case(
        "data-path-with-spaces-and-accents-misspelt",
        _data_path_with_spaces_misspelt,
        "data.path",
        "does not exist",
        "Did you mean",
    ),
    Case(
        "two-sweeps-on-one-embedded-store",
        _store_in_use,
        "mlflow.tracking_uri",
        "is in use by sweep-20261203-101500 (pid",
        "Wait for that run to end",
    ),
    # ---- retraining on a new drop
    Case("retrain-drop-missing", _retrain_drop_missing, "--data", "does not exist", "Did you mean"),
    Case("retrain-drop-binary", _retrain_drop_binary, "line 1", "not UTF-8", "Re-encode the file as UTF-8"),
    Case(
        "guard-set-overlaps-the-training-data",
        _guard_set_overlaps_training,
        "retrain.guard_eval_paths[0]",
        "asks what",
        "A guard set must never be trained on",
    ),
    Case(
        "retrain-drop-is-the-frozen-set",
        _retrain_drop_is_frozen_set,
        "retrain.frozen_eval_path",
        "asks what",
        "A frozen evaluation set must never be trained on",
    ),
]


def _stop(proc: subprocess.Popen, tmp_path: Path) -> None:
    """A case that did not refuse its input may have started a run: end its process group, and any process
    working in this case's directory (a local Ray's agents outlive their raylet), by process id."""
    import psutil

    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    for p in psutil.process_iter(["pid"]):
        try:
            if Path(p.cwd()).is_relative_to(tmp_path):
                p.kill()
        except (psutil.Error, OSError):
            continue


def _traces(root: Path) -> list[Path]:
    """MLflow stores and Ray sessions under `root`."""
    return [p for p in root.rglob("*") if p.name in MLFLOW_TRACES or p.name.startswith("session_")]


@pytest.mark.system
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_refused_in_one_line_without_ray_or_mlflow(case: Case, tmp_path, tiny_model):
    ctx = Ctx(tmp_path / "in", tiny_model)
    ctx.tmp.mkdir()
    argv, source = case.build(ctx)
    cwd, ray_tmp, probe = tmp_path / "cwd", tmp_path / "raytmp", tmp_path / "probe.json"
    cwd.mkdir()
    ray_tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update(RAY_TMPDIR=str(ray_tmp), HF_HUB_OFFLINE="1")  # a Ray started anyway would leave its session here
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", PROBE, str(probe), *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        _stop(proc, tmp_path)
        pytest.fail(f"{case.id}: still running after 120 s")
    finally:
        for helper in ctx.helpers:
            helper.kill()
            helper.communicate()
    elapsed = time.monotonic() - started
    output = stdout + stderr

    assert "Traceback" not in output, output[-3000:]
    assert proc.returncode == 2, f"exit {proc.returncode}: {output[-3000:]}"
    assert stdout == ""
    lines = stderr.splitlines()
    assert lines and len(lines) <= 25, stderr[-3000:]
    for line in lines:  # problem lines, not a dump: no usage text, no indented continuation, readable length
        assert line.strip() and not line[0].isspace() and not line.startswith("usage:") and len(line) < 2500, line
    matching = [
        line
        for line in lines
        if line.startswith(source)
        and (case.key is None or f": {case.key}: " in line)
        and case.what in line
        and case.fix in line.partition(case.what)[2]
    ]
    assert matching, f"no line starts with {source!r}, names {case.key!r}, says {case.what!r}, then {case.fix!r}:\n" + (
        stderr
    )
    # No Ray: not imported by the CLI process, so not started; nor any Ray session on disk
    record = json.loads(probe.read_text())
    assert record["rc"] == 2
    assert not record["ray_imported"] and not record["ray_initialized"], record
    assert not record["mlflow_imported"], record
    assert not _traces(tmp_path), _traces(tmp_path)  # nor an MLflow store or run directory, here or in storage
    assert not (ctx.tmp / "pwned").exists()  # YAML tags ran no code
    assert elapsed < TIME_LIMIT_S, f"{case.id} took {elapsed:.1f}s"


@pytest.mark.unit
def test_the_table_covers_at_least_a_hundred_cases_each_once():
    ids = [c.id for c in CASES]
    assert len(ids) >= 100 and len(set(ids)) == len(ids)
    assert all(c.what and c.fix for c in CASES)  # every refusal says what is wrong and how to fix it


@pytest.mark.unit
def test_traces_finds_an_mlflow_store_and_a_ray_session(tmp_path):
    """The detector the table relies on finds what it looks for."""
    assert _traces(tmp_path) == []
    (tmp_path / "storage").mkdir()
    (tmp_path / "storage" / "mlflow.db").write_bytes(b"")
    (tmp_path / "raytmp" / "ray" / "session_2026-11-22").mkdir(parents=True)
    assert sorted(p.name for p in _traces(tmp_path)) == ["mlflow.db", "session_2026-11-22"]


# --------------------------------------------------------------------------------------------------
# Input that looks hostile and is not: accepted, every row kept as it was meant
# --------------------------------------------------------------------------------------------------


def _demo_rows(n: int = 60) -> list[dict]:
    lines = DEMO_DATA.read_text(encoding="utf-8").splitlines()[:n]
    return [json.loads(line) for line in lines]


def _csv_text(rows: list[dict], newline: str) -> str:
    """Rows as a spreadsheet writes them: quoted fields, some answers over two lines."""
    import csv
    import io

    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=["instruction", "output"], lineterminator=newline)
    writer.writeheader()
    writer.writerows({"instruction": r["instruction"], "output": r["output"]} for r in rows)
    return out.getvalue()


def _two_line_answers(rows: list[dict]) -> list[dict]:
    return [{**r, "output": r["output"] + ("\nThen try again." if i % 3 == 0 else "")} for i, r in enumerate(rows)]


TOLERATED = {
    # Windows tools: a byte-order mark and CRLF line ends
    "jsonl-with-bom-and-crlf": lambda rows: ("rows.jsonl", "\ufeff" + "".join(json.dumps(r) + "\r\n" for r in rows)),
    # Excel's "CSV UTF-8": a BOM before the header, CRLF, quoted answers that run over two lines
    "csv-from-excel": lambda rows: ("rows.csv", "\ufeff" + _csv_text(_two_line_answers(rows), "\r\n")),
    "csv-multi-line-fields": lambda rows: ("rows.csv", _csv_text(_two_line_answers(rows), "\n")),
    "path-with-spaces-and-accents": lambda rows: (
        "données clients 2026/faq export (v2).jsonl",
        "".join(json.dumps(r) + "\n" for r in rows),
    ),
    # an export that repeats every row: kept, and a row's copies land in one split (none validates on itself)
    "every-row-twice": lambda rows: ("rows.jsonl", "".join(json.dumps(r) + "\n" for r in rows for _ in range(2))),
}


@pytest.mark.system
@pytest.mark.parametrize("kind", sorted(TOLERATED))
def test_input_that_only_looks_hostile_is_accepted_and_nothing_is_lost(kind, tmp_path, tiny_model):
    from adaptune.config import DataConfig
    from adaptune.data import find_data_files, load_records, prompt_key, split_indices

    from .support import run_cli

    rows = _demo_rows()
    name, text = TOLERATED[kind](rows)
    data = tmp_path / name
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_bytes(text.encode("utf-8"))
    ctx = Ctx(tmp_path, tiny_model)
    sweep = ctx.sweep_on(data)
    r = run_cli("validate", str(sweep), "--cluster", str(ctx.cluster()), timeout=120)
    assert r.returncode == 0 and f"{sweep}: ok" in r.stdout, r.stderr[-3000:]

    cfg = DataConfig(path=str(data))
    records, problems = load_records(find_data_files(str(data)), cfg)
    assert not problems
    expected = [{"instruction": r["instruction"], "output": r["output"]} for r in rows]
    if "csv" in kind:
        expected = _two_line_answers(expected)
    copies = 2 if kind == "every-row-twice" else 1
    assert len(records) == copies * len(rows)
    # every answer whole, with its line breaks as the writer meant them (no BOM, no carriage return left)
    assert [r["response"] for r in records[::copies]] == [e["output"] for e in expected]
    assert not any("\ufeff" in r["prompt"] or "\r" in r["prompt"] + r["response"] for r in records)
    splits = split_indices([prompt_key(r) for r in records], cfg)
    by_split = {name: {prompt_key(records[i]) for i in idx} for name, idx in splits.items()}
    assert not by_split["train"] & (by_split["validation"] | by_split["test"])
