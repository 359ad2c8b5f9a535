"""Company data: reading, row errors, formatting and masking, split, digest, tokenize-once."""

from __future__ import annotations

import itertools
import json

import pytest

from adaptune.config import DataConfig
from adaptune.data import (
    IGNORE_INDEX,
    data_digest,
    find_data_files,
    load_records,
    load_splits,
    prepare_dataset,
    split_indices,
    tokenize_record,
)
from adaptune.errors import DataError

from .support import DEMO_DATA

pytestmark = pytest.mark.unit


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _rows(n, start=0):
    return [{"instruction": f"question {i}?", "input": "", "output": f"answer {i}."} for i in range(start, start + n)]


def _problems(files, cfg):
    return [str(p) for p in load_records(files, cfg)[1]]


# ---- reading and row errors ----


def test_bad_rows_name_file_and_line(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(
        b'{"instruction": "a", "output": "b"}\n'
        b'{"instruction": "a", "output": \n'
        b'{"instruction": "a"}\n'
        b'{"instruction": "a", "output": "  "}\n'
    )
    cfg = DataConfig(path=str(f))
    problems = _problems([f], cfg)
    assert problems == [f"{f}: line 2: malformed JSON: Expecting value. Write one JSON object per line"]
    f.write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n{"instruction": "a", "output": " "}\n')
    assert _problems([f], cfg) == [
        f"{f}: line 2: missing column 'output' (columns: instruction). Add it or set data.columns.output to the "
        "right column name",
        f"{f}: line 3: empty response in 'output'. Fill in the response or remove the row",
    ]


def test_non_utf8_and_empty_files(tmp_path):
    f = tmp_path / "latin.jsonl"
    f.write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "b"}\n')
    assert _problems([f], DataConfig(path=str(f))) == [
        f"{f}: line 2: not UTF-8 (byte 20 of the line). Re-encode the file as UTF-8"
    ]
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert _problems([empty], DataConfig(path=str(empty))) == [f"{empty}: file is empty. Remove it or add rows"]


def test_files_globs_and_directories(tmp_path):
    (tmp_path / "drops" / "2026-11-01").mkdir(parents=True)
    a = _jsonl(tmp_path / "drops" / "2026-11-01" / "a.jsonl", _rows(3))
    b = tmp_path / "drops" / "b.csv"
    b.write_text('instruction,input,output\nq?,,"an answer, with a comma"\n', encoding="utf-8")
    (tmp_path / "drops" / "notes.txt").write_text("ignored")
    assert find_data_files(str(tmp_path / "drops")) == [a, b]
    assert find_data_files(str(tmp_path / "drops" / "*" / "*.jsonl")) == [a]
    records, problems = load_records([a, b], DataConfig(path="x"))
    assert not problems and records[-1]["response"] == "an answer, with a comma"
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match=r"directory .*empty_dir has no .jsonl/.csv/.parquet files \(it has: nothing\)"):
        find_data_files(str(tmp_path / "empty_dir"))
    with pytest.raises(DataError, match=r"data.path: does not exist. Did you mean .*drops\?"):
        find_data_files(str(tmp_path / "drop"))


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(_rows(4) + [{"instruction": "q", "input": None, "output": ""}]), f)
    records, problems = load_records([f], DataConfig(path=str(f)))
    assert len(records) == 4
    assert [str(p) for p in problems] == [
        f"{f}: row 5: empty response in 'output'. Fill in the response or remove the row"
    ]


def test_chat_rows_are_checked(tmp_path):
    f = _jsonl(
        tmp_path / "c.jsonl",
        [
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]},
            {"messages": [{"role": "user", "content": "hi"}]},
        ],
    )
    assert _problems([f], DataConfig(path=str(f), format="chat")) == [
        f"{f}: line 2: message 1 has unknown role 'robot'. Use one of system, user, assistant",
        f"{f}: line 3: no non-empty assistant message (empty response). Add the assistant's answer",
    ]


# ---- split and digest ----


def test_split_is_deterministic_and_disjoint():
    cfg = DataConfig(path="x", val_fraction=0.1, test_fraction=0.05, split_seed=3)
    keys = [f"q{i}" for i in range(200)]
    a, b = split_indices(keys, cfg), split_indices(keys, cfg)
    assert a == b
    assert (len(a["train"]), len(a["validation"]), len(a["test"])) == (170, 20, 10)
    assert sorted(a["train"] + a["validation"] + a["test"]) == list(range(200))
    assert split_indices(keys, cfg.model_copy(update={"split_seed": 4})) != a


def test_duplicated_rows_stay_on_one_side_of_the_split(tmp_path):
    """Every row twice: carved at random, most validation prompts would be training prompts too, and eval_loss,
    ASHA and the winner would measure memorisation."""
    rows = [r for r in _rows(100) for _ in range(2)]
    cfg = DataConfig(path=str(_jsonl(tmp_path / "d.jsonl", rows)), val_fraction=0.1, test_fraction=0.1)
    splits = load_splits(cfg).splits
    asked = {name: {r["prompt"] for r in split} for name, split in splits.items()}
    assert len(splits["validation"]) == len(splits["test"]) == 20  # ten prompts, both copies of each
    assert not asked["train"] & asked["validation"] and not asked["train"] & asked["test"]
    assert not asked["validation"] & asked["test"]
    one = [rows[0]] * 5  # a single prompt cannot be split: refused, with the count
    with pytest.raises(DataError, match=r"the train split is empty \(5 rows in all, 1 distinct prompts\)"):
        load_splits(DataConfig(path=str(_jsonl(tmp_path / "one.jsonl", one)), val_fraction=0.1))


def test_empty_split_is_an_error(tmp_path):
    f = _jsonl(tmp_path / "d.jsonl", _rows(1))
    with pytest.raises(DataError, match=r"data.path: the train split is empty \(1 rows in all\)"):
        load_splits(DataConfig(path=str(f), val_fraction=0.5))
    with pytest.raises(DataError, match="the validation split is empty.*Set data.val_fraction > 0 or data.eval_path"):
        load_splits(DataConfig(path=str(f), val_fraction=0.0))


def test_digest_covers_every_byte(tmp_path):
    f = _jsonl(tmp_path / "d.jsonl", _rows(50))
    before = data_digest([f])
    assert before == data_digest([f]) and len(before) == 64
    text = f.read_text().replace("answer 49.", "answer 94.")
    f.write_text(text)
    assert data_digest([f]) != before  # a change in the last row changes it


# ---- formatting and masking ----


def test_instruction_masking_trains_only_on_the_response(tokenizer):
    cfg = DataConfig(path="x")
    record = {"prompt": "### Instruction:\nWhat is the warranty?\n### Response:\n", "response": "Two years."}
    ids, labels = tokenize_record(record, tokenizer, cfg)
    learned = [i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
    assert tokenizer.decode(learned) == "Two years.</s>"
    assert ids[0] == tokenizer.bos_token_id
    unmasked = tokenize_record(record, tokenizer, cfg.model_copy(update={"mask_prompt": False}))[1]
    assert IGNORE_INDEX not in unmasked


def test_chat_masking_uses_the_template_and_learns_assistant_turns(tokenizer):
    cfg = DataConfig(path="x", format="chat")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Price?"},
        {"role": "assistant", "content": "$199."},
        {"role": "user", "content": "Colours?"},
        {"role": "assistant", "content": "White."},
    ]
    ids, labels = tokenize_record({"messages": messages}, tokenizer, cfg)
    learned = tokenizer.decode([i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX])
    # The demo tokenizer has no chat template: the built-in ChatML-style fallback renders it.
    assert learned == "$199.<|im_end|>\nWhite.<|im_end|>\n"
    assert "<|im_start|>user\nPrice?" in tokenizer.decode(ids)


def test_text_format_trains_on_everything(tokenizer):
    ids, labels = tokenize_record({"text": "Nimbus routers."}, tokenizer, DataConfig(path="x", format="text"))
    assert ids == labels and ids[-1] == tokenizer.eos_token_id


# ---- tokenize once ----


def test_prepare_once_truncates_packs_and_reuses(tmp_path, tiny_model):
    cfg = DataConfig(path=str(DEMO_DATA), max_seq_length=80, test_fraction=0.05)
    m = prepare_dataset(cfg, str(tiny_model), tmp_path)
    assert m.rows == {"train": 340, "validation": 40, "test": 20}
    assert m.truncated["train"] > 0 and m.examples["train"] + m.dropped["train"] == 340
    from adaptune.data import open_split

    train = open_split(m.path, "train")
    assert len(train) == m.examples["train"] and max(len(x) for x in train["input_ids"]) <= 80
    again = prepare_dataset(cfg, str(tiny_model), tmp_path)
    assert again.path == m.path and len(list(tmp_path.iterdir())) == 1  # reused, not re-tokenized
    packed = prepare_dataset(cfg.model_copy(update={"packing": True, "max_seq_length": 512}), str(tiny_model), tmp_path)
    plain = prepare_dataset(cfg.model_copy(update={"max_seq_length": 512}), str(tiny_model), tmp_path)
    rows = open_split(packed.path, "train")
    examples = open_split(plain.path, "train")
    assert packed.path != m.path and packed.examples["train"] < plain.examples["train"] / 2
    # Whole examples, in order, each row at most max_seq_length; an example's first token is never a target.
    assert all(len(ids) == sum(ls) <= 512 for ids, ls in zip(rows["input_ids"], rows["lengths"], strict=True))
    assert [n for ls in rows["lengths"] for n in ls] == [len(x) for x in examples["input_ids"]]
    assert [t for ids in rows["input_ids"] for t in ids] == [t for ids in examples["input_ids"] for t in ids]
    flat = [lab for labels in rows["labels"] for lab in labels]
    offsets = itertools.accumulate([0, *(len(x) for x in rows["input_ids"][:-1])])
    starts = [o + sum(ls[:i]) for o, ls in zip(offsets, rows["lengths"], strict=True) for i in range(len(ls))]
    assert all(flat[s] == -100 for s in starts)
    # Validation and test are never packed: the same examples as without packing.
    for split in ("validation", "test"):
        assert packed.examples[split] == plain.examples[split]
        assert "lengths" not in open_split(packed.path, split).table.column_names


# ---- files exported by common tools ----


def test_a_utf8_byte_order_mark_is_accepted_in_jsonl_and_csv(tmp_path):
    """Excel's "CSV UTF-8" and most Windows exports start with a BOM; it is not part of the first column's name."""
    bom = b"\xef\xbb\xbf"
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_bytes(bom + b'{"question": "q1?", "answer": "a1."}\n{"question": "q2?", "answer": "a2."}\n')
    csv_file = tmp_path / "rows.csv"
    csv_file.write_bytes(bom + b'question,answer\r\nq1?,a1.\r\n"q2, with a comma?","a2\r\non two lines."\r\n')
    cfg = DataConfig(path=str(tmp_path), columns={"instruction": "question", "output": "answer"})
    for f in (jsonl, csv_file):
        records, problems = load_records([f], cfg)
        assert problems == [] and len(records) == 2, (f, [str(p) for p in problems])
        assert records[0]["response"] == "a1."
    assert load_records([csv_file], cfg)[0][1]["response"] == "a2\r\non two lines."


def test_a_file_without_a_column_is_named_once_with_its_columns_and_the_key_to_set(tmp_path):
    bom = b"\xef\xbb\xbf"
    csv_file = tmp_path / "export.csv"
    csv_file.write_bytes(bom + b"question,answer\n" + b"".join(b"q%d?,a%d.\n" % (i, i) for i in range(30)))
    jsonl = _jsonl(tmp_path / "rows.jsonl", [{"question": f"q{i}?", "answer": "a."} for i in range(30)])
    for f in (csv_file, jsonl):
        assert _problems([f], DataConfig(path=str(f))) == [
            f"{f}: data.columns.instruction: no row has the column 'instruction'; its columns are: question, answer. "
            "Set data.columns.instruction: question, or add a 'instruction' column"
        ]
    # Some rows with it, some without: each row that lacks it is named.
    mixed = _jsonl(tmp_path / "mixed.jsonl", [*_rows(2), {"instruction": "q?"}])
    assert _problems([mixed], DataConfig(path=str(mixed))) == [
        f"{mixed}: line 3: missing column 'output' (columns: instruction). Add it or set data.columns.output to the "
        "right column name"
    ]
