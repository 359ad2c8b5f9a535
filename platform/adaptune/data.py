"""Company data: find and read the files, check every row, split deterministically, digest, and tokenize
once into an Arrow dataset that every trial and worker reads memory-mapped.

Reading and checking need only the standard library (and pyarrow for Parquet); tokenizing imports
transformers inside `prepare_dataset`.
"""

from __future__ import annotations

import array
import csv
import difflib
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adaptune.config import MAX_EVAL_SAMPLES, DataConfig, model_source, resolve_path
from adaptune.errors import DataError, Problem, missing_path_hint
from adaptune.preflight.tokenizer_files import loaded_tokenizer_problems

DATA_SUFFIXES = (".jsonl", ".csv", ".parquet")
CHAT_ROLES = ("system", "user", "assistant")
MAX_LINE_BYTES = 16 * 1024 * 1024  # a longer line is refused rather than read into memory
MAX_PROBLEMS = 20
UTF8_BOM = b"\xef\xbb\xbf"  # a byte-order mark some tools write at the start of UTF-8 files
IGNORE_INDEX = -100

# A ChatML-style template used when the tokenizer has none.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# --------------------------------------------------------------------------------------------------
# Finding and reading files
# --------------------------------------------------------------------------------------------------


def find_data_files(path: str, key: str = "data.path") -> list[Path]:
    """The data files a `data.path` names: one file, a glob, or a directory (recursive), sorted.

    Raises:
        DataError: when nothing usable is found, listing what is there.
    """
    p = resolve_path(path)
    if any(ch in path for ch in "*?["):
        found = [Path(f) for f in glob.glob(str(p), recursive=True)]
        files = sorted(f for f in found if f.is_file())
        _refuse_unreadable([f for f in found if f.suffix in DATA_SUFFIXES and not f.is_dir()], key)
        where = f"glob {path!r} matches no files"
    elif p.is_dir():
        # rglob does not descend into symlinked directories, so a link loop cannot make this walk endless
        found = [f for f in p.rglob("*") if f.suffix in DATA_SUFFIXES]
        _refuse_unreadable([f for f in found if not f.is_dir()], key)
        files = sorted(f for f in found if f.is_file())
        where = f"directory {path} has no {'/'.join(DATA_SUFFIXES)} files"
        if not files:
            seen = sorted(f.name for f in p.iterdir())[:10]
            where += f" (it has: {', '.join(seen) or 'nothing'})"
    elif p.is_file():
        files = [p]
        where = ""
    else:
        _refuse_unreadable([p] if p.is_symlink() or p.exists() else [], key)
        raise DataError(Problem(path, key, "does not exist", missing_path_hint(path)))
    if not files:
        raise DataError(Problem(path, key, where, f"Point {key} at {'/'.join(DATA_SUFFIXES)} data"))
    bad = [f for f in files if f.suffix not in DATA_SUFFIXES]
    if bad:
        raise DataError(
            Problem(
                str(bad[0]), key, f"unsupported file type {bad[0].suffix!r}", f"Use {', '.join(DATA_SUFFIXES)} files"
            )
        )
    return files


def _refuse_unreadable(paths: list[Path], key: str) -> None:
    """Raise for the first path that is not a regular file: a symlink that does not resolve (broken, or a loop),
    or a device, pipe or socket (reading a pipe would wait forever)."""
    for f in paths:
        if f.is_file():
            continue
        if f.is_symlink() and not f.exists():
            why, fix = "symlink does not resolve (broken, or a loop of links)", "Point it at a data file or remove it"
        else:
            why, fix = "not a regular file (a device, pipe or socket)", "Point it at a data file"
        raise DataError(Problem(str(f), key, why, fix))


# Leading bytes of formats people save under a .jsonl or .csv name by mistake.
_MAGIC = {
    b"\x1f\x8b": "It is gzip-compressed: decompress it (gunzip)",
    b"PK\x03\x04": "It is a zip archive: extract it",
    b"\x28\xb5\x2f\xfd": "It is zstd-compressed: decompress it (zstd -d)",
    b"BZh": "It is bzip2-compressed: decompress it (bunzip2)",
    b"PAR1": "It is a Parquet file: name it .parquet",
}


def _binary_hint(raw: bytes) -> str:
    return next((fix for magic, fix in _MAGIC.items() if raw.startswith(magic)), "Re-encode the file as UTF-8 text")


def _read_lines(file: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) for each line, refusing non-UTF-8 bytes and absurdly long lines by line number."""
    with file.open("rb") as f:
        lineno = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            lineno += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise DataError(
                    Problem(
                        str(file),
                        f"line {lineno}",
                        f"line longer than {MAX_LINE_BYTES} bytes",
                        "Split it into rows, one per line",
                    )
                )
            if lineno == 1 and raw.startswith(UTF8_BOM):  # Excel's "CSV UTF-8", most Windows exports
                raw = raw[len(UTF8_BOM) :]
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    Problem(
                        str(file),
                        f"line {lineno}",
                        f"not UTF-8 (byte {e.start} of the line)",
                        _binary_hint(raw) if lineno == 1 else "Re-encode the file as UTF-8",
                    )
                ) from None


def read_rows(file: Path, limit: int | None = None) -> Iterator[tuple[str, Any]]:
    """Yield (location, row) from a JSONL, CSV or Parquet file; `limit` reads only the head.

    Raises:
        DataError: for an empty file, malformed JSON, non-UTF-8 text, naming the line.
    """
    if file.stat().st_size == 0:
        raise DataError(Problem(str(file), "", "file is empty", "Remove it or add rows"))
    count = 0
    if file.suffix == ".jsonl":
        for lineno, text in _read_lines(file):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except (json.JSONDecodeError, RecursionError) as e:
                reason = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
                raise DataError(
                    Problem(str(file), f"line {lineno}", f"malformed JSON: {reason}", "Write one JSON object per line")
                ) from None
            yield f"line {lineno}", row
            count += 1
            if limit and count >= limit:
                return
    elif file.suffix == ".csv":
        lines = (text for _, text in _read_lines(file))
        # strict: an unclosed quote is an error, not a field that silently swallows the rest of the file
        reader = csv.DictReader(lines, strict=True)
        ended = 1  # the line the previous row ended on (the header's, at first)
        try:
            for row in reader:
                yield f"line {ended + 1}", row
                ended = reader.line_num
                count += 1
                if limit and count >= limit:
                    return
        except csv.Error as e:
            raise DataError(
                Problem(
                    str(file),
                    f"line {ended + 1}",
                    f"malformed CSV in the row starting here: {e}",
                    "Close its quotes; quote fields that contain commas, quotes or newlines, doubling inner quotes",
                )
            ) from None
    else:
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(file)
        except Exception as e:  # pyarrow raises several types for a damaged file
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DataError(
                Problem(
                    str(file), "", f"not a readable Parquet file ({reason})", "Write it with pandas/pyarrow .to_parquet"
                )
            ) from None
        rowno = 0
        for batch in pf.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                rowno += 1
                yield f"row {rowno}", row
                if limit and rowno >= limit:
                    return
    if count == 0 and file.suffix != ".parquet":
        raise DataError(Problem(str(file), "", "file has no rows", "Remove it or add rows"))


# --------------------------------------------------------------------------------------------------
# Checking and normalizing rows: instruction -> (prompt, response); chat -> messages; text -> text
# --------------------------------------------------------------------------------------------------


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


class MissingColumn(DataError):
    """A row lacks a column the format needs; `load_records` reports a whole file lacking it once."""

    def __init__(self, file: str, where: str, column: str, key: str, columns: list[str]):
        self.column, self.key, self.columns = column, key, columns
        super().__init__(
            Problem(
                file,
                where,
                f"missing column {column!r} (columns: {', '.join(columns) or 'none'})",
                f"Add it or set data.columns.{key} to the right column name",
            )
        )

    def whole_file(self, file: str) -> Problem:
        """The one problem for a file none of whose rows has the column."""
        close = difflib.get_close_matches(self.column, self.columns, n=1, cutoff=0.3)
        hint = f"data.columns.{self.key}: {close[0]}" if close else f"data.columns.{self.key} to one of them"
        return Problem(
            file,
            f"data.columns.{self.key}",
            f"no row has the column {self.column!r}; its columns are: {', '.join(self.columns) or 'none'}",
            f"Set {hint}, or add a {self.column!r} column",
        )


def normalize_row(row: Any, cfg: DataConfig, file: str, where: str) -> dict[str, Any]:
    """Turn one raw row into the record the tokenizer step uses, or raise a one-line DataError."""
    c = cfg.columns

    def fail(message: str, fix: str) -> DataError:
        return DataError(Problem(file, where, message, fix))

    def missing(column: str, key: str) -> MissingColumn:
        return MissingColumn(file, where, column, key, [str(k) for k in row])

    if not isinstance(row, dict):
        raise fail(f"expected an object with columns, got {type(row).__name__}", "Write one object per row")
    if None in row:  # csv.DictReader puts fields beyond the header's under None
        raise fail(
            f"{len(row) - 1 + len(row[None])} fields but the header names {len(row) - 1} columns",
            "Quote fields that contain commas",
        )
    if cfg.format == "instruction":
        for col, key in ((c.instruction, "instruction"), (c.output, "output")):
            if col not in row:
                raise missing(col, key)
        if not _nonempty_str(row[c.instruction]):
            raise fail(f"empty or non-text {c.instruction!r}", "Give every row an instruction")
        if not _nonempty_str(row[c.output]):
            raise fail(f"empty response in {c.output!r}", "Fill in the response or remove the row")
        extra = row.get(c.input)
        if extra is not None and not isinstance(extra, str):
            raise fail(f"{c.input!r} must be text, got {type(extra).__name__}", "Make it a string or leave it empty")
        extra = (extra or "").strip()
        prompt = cfg.prompt_template.format(
            instruction=row[c.instruction].strip(),
            input_block=f"\n### Input:\n{extra}\n" if extra else "",
            input_clause=", paired with an input that provides further context" if extra else "",
        )
        return {"prompt": prompt, "response": row[c.output].strip()}
    if cfg.format == "chat":
        messages = row.get(c.messages)
        if messages is None:
            raise missing(c.messages, "messages")
        if isinstance(messages, str):  # CSV cells hold JSON text
            try:
                messages = json.loads(messages)
            except (json.JSONDecodeError, RecursionError):
                raise fail(
                    f"{c.messages!r} is not a JSON list", "Write messages as a list of {role, content}"
                ) from None
        if not isinstance(messages, list) or not messages:
            raise fail(f"{c.messages!r} must be a non-empty list of messages", "Write [{role, content}, ...]")
        clean = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise fail(f"message {i} is not an object with role and content", "Write {role, content}")
            if m["role"] not in CHAT_ROLES:
                raise fail(f"message {i} has unknown role {m['role']!r}", f"Use one of {', '.join(CHAT_ROLES)}")
            if not isinstance(m["content"], str):
                raise fail(f"message {i} content is not text", "Make content a string")
            clean.append({"role": m["role"], "content": m["content"]})
        if not any(m["role"] == "assistant" and m["content"].strip() for m in clean):
            raise fail("no non-empty assistant message (empty response)", "Add the assistant's answer")
        return {"messages": clean, "where": f"{file}: {where}"}  # the template may still refuse it: named
    text = row.get(c.text)
    if text is None:
        raise missing(c.text, "text")
    if not _nonempty_str(text):
        raise fail(f"empty {c.text!r}", "Remove the row or fill it")
    return {"text": text}


def load_records(
    files: list[Path], cfg: DataConfig, limit: int | None = None
) -> tuple[list[dict[str, Any]], list[Problem]]:
    """Read and normalize rows from `files` (only the first `limit` of each when given).

    Returns the records and every problem found (capped), so a user sees them all at once.
    """
    problems: list[Problem] = []
    records = [record for _, record in iter_records(files, cfg, problems, limit)]
    return records, problems


def iter_records(
    files: list[Path], cfg: DataConfig, problems: list[Problem], limit: int | None = None
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(file, normalized record) for each good row of `files`, in order, one at a time; each bad row's problem
    goes into `problems` (capped at MAX_PROBLEMS, then reading stops), so a caller streams the rows and still
    reports every problem at once."""
    for file in files:
        # A row lacking a required column is named where it is; a file none of whose rows has it, once. Until
        # a row has it, the rows that lack it wait (the first few of them) to see which of the two this is.
        waiting: list[MissingColumn] = []
        none_has_it = True
        uniform = file.suffix in (".csv", ".parquet")  # every row has the header's columns
        try:
            for where, row in read_rows(file, limit):
                try:
                    record = normalize_row(row, cfg, str(file), where)
                except MissingColumn as e:
                    if none_has_it:
                        waiting = waiting if len(waiting) >= MAX_PROBLEMS else [*waiting, e]
                        if uniform:
                            break
                        continue
                    problems.extend(e.problems)
                except DataError as e:
                    none_has_it = _flush(waiting, problems)
                    problems.extend(e.problems)
                else:
                    none_has_it = _flush(waiting, problems)
                    yield file, record
                if len(problems) >= MAX_PROBLEMS:
                    problems.append(
                        Problem(str(file), "", "too many problems, stopped reading", "Fix the ones above first")
                    )
                    return
        except DataError as e:
            problems.extend(e.problems)
        if none_has_it and len({e.column for e in waiting}) == 1:
            problems.append(waiting[0].whole_file(str(file)))
        else:
            _flush(waiting, problems)


def _flush(waiting: list[MissingColumn], problems: list[Problem]) -> bool:
    """Name each waiting row that lacks a column (some row had it after all). Returns False: a row has it."""
    problems.extend(p for e in waiting for p in e.problems)
    waiting.clear()
    return False


def prompt_key(record: dict[str, Any]) -> str:
    """What a model is asked in a normalized record (the rendered prompt; the non-assistant messages; the text),
    whitespace trimmed: two records with the same key put the same question to the model."""
    if "prompt" in record:
        parts = [record["prompt"]]
    elif "messages" in record:
        parts = [m["content"] for m in record["messages"] if m["role"] != "assistant"]
    else:
        parts = [record["text"]]
    return json.dumps([p.strip() for p in parts], ensure_ascii=False)


def find_overlap(
    held_out: list[Path], training: list[Path], cfg: DataConfig, key: str, what: str = "A frozen evaluation set"
) -> list[Problem]:
    """A problem when any row of the `held_out` files asks what a row of the `training` files asks (bad rows are
    skipped here: reading the data reports them). One pass over each, the training prompts kept as a set."""

    def keyed(files: list[Path]) -> Iterator[tuple[str, Path, str]]:
        for file in files:
            for where, row in read_rows(file):
                try:
                    yield prompt_key(normalize_row(row, cfg, str(file), where)), file, where
                except DataError:
                    continue

    trained = {k: (file, where) for k, file, where in keyed(training)}
    both = [(file, where, trained[k]) for k, file, where in keyed(held_out) if k in trained]
    if not both:
        return []
    file, where, (other_file, other_where) = both[0]
    more = f", and {len(both) - 1} more of its rows are in the training data" if len(both) > 1 else ""
    return [
        Problem(
            str(file),
            key,
            f"{where} asks what {other_file} {other_where} asks{more}",
            f"{what} must never be trained on: remove those rows from it or from the training data",
        )
    ]


# --------------------------------------------------------------------------------------------------
# Digest and split
# --------------------------------------------------------------------------------------------------


def file_digest(file: Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with file.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def data_digest(files: list[Path]) -> str:
    """Content digest of a data set: sha256 over each file's sha256, in sorted-path order.

    Every byte counts (unlike a digest of the first rows), and renaming a directory changes nothing.
    """
    h = hashlib.sha256()
    for f in files:
        h.update(file_digest(f).encode())
    return h.hexdigest()


def split_indices(keys: list[str], cfg: DataConfig) -> dict[str, list[int]]:
    """Deterministic train/validation/test row indices from `cfg.split_seed`, for rows whose prompts are `keys`
    (`prompt_key`). Rows that ask the same thing stay on one side: the prompts are shuffled and dealt out, so
    a duplicated row can never be a validation or test row whose answer was trained on."""
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    rows = list(groups.values())
    dealt = deal_groups([len(g) for g in rows], cfg)
    out: dict[str, list[int]] = {split: [] for split in SPLITS}
    for g, split in zip(rows, dealt.tolist(), strict=True):
        out[SPLITS[split]] += g
    return {k: sorted(v) for k, v in out.items()}


SPLITS = ("train", "validation", "test")  # a row's split as a number: its index here


def deal_groups(sizes: list[int], cfg: DataConfig) -> Any:
    """The split (an index into SPLITS; numpy int8) of each group of rows that ask the same thing, given the
    groups' sizes in the order their first rows come: the groups shuffled with `cfg.split_seed` and dealt out,
    test first until it has its share of the rows, then validation, then train. Vectorised: a million groups
    take a few arrays of 8 bytes each."""
    sizes_arr = np.asarray(sizes, dtype=np.int64)
    n = int(sizes_arr.sum())

    def take(fraction: float, external: str | None) -> int:
        if external or fraction == 0:
            return 0
        return max(1, round(n * fraction))

    order = np.random.default_rng(cfg.split_seed).permutation(len(sizes_arr))
    shuffled = sizes_arr[order]
    before = np.cumsum(shuffled) - shuffled  # rows dealt before each group, in the shuffled order
    # a group goes to test while test has fewer rows than its share: a prefix of the shuffled groups; then the
    # same for validation with what follows; the rest is train
    k_test = int(np.searchsorted(before, take(cfg.test_fraction, cfg.test_path), side="left"))
    rest = before[k_test:] - (before[k_test] if k_test < len(before) else 0)
    k_val = k_test + int(np.searchsorted(rest, take(cfg.val_fraction, cfg.eval_path), side="left"))
    dealt = np.zeros(len(sizes_arr), dtype=np.int8)
    dealt[order[:k_test]] = SPLITS.index("test")
    dealt[order[k_test:k_val]] = SPLITS.index("validation")
    return dealt


@dataclass
class SplitRecords:
    """Normalized records per split, with where they came from."""

    splits: dict[str, list[dict[str, Any]]]
    digests: dict[str, str]  # "train" (the data.path set), "eval", "test" -> content digest
    files: dict[str, list[str]]


def load_splits(cfg: DataConfig) -> SplitRecords:
    """Read all of the data, check every row, and split it.

    Raises:
        DataError: every bad row (up to a cap), or a split that comes out empty.
    """
    files = {"train": find_data_files(cfg.path, "data.path")}
    if cfg.eval_path:
        files["eval"] = find_data_files(cfg.eval_path, "data.eval_path")
    if cfg.test_path:
        files["test"] = find_data_files(cfg.test_path, "data.test_path")
    loaded, problems = {}, []
    for name, fs in files.items():
        loaded[name], p = load_records(fs, cfg)
        problems += p
    if problems:
        raise DataError(problems)
    rows = loaded["train"]
    idx = split_indices([prompt_key(r) for r in rows], cfg)
    splits = {k: [rows[i] for i in v] for k, v in idx.items()}
    if cfg.eval_path:
        splits["validation"] = loaded["eval"]
    if cfg.test_path:
        splits["test"] = loaded["test"]
    for name, key, fix in (
        ("train", "data.path", "Add rows or lower data.val_fraction/test_fraction"),
        ("validation", "data.val_fraction", "Set data.val_fraction > 0 or data.eval_path"),
    ):
        if not splits[name]:
            distinct = len({prompt_key(r) for r in rows})
            counts = f"{len(rows)} rows in all" + (f", {distinct} distinct prompts" if distinct < len(rows) else "")
            raise DataError(Problem(cfg.path, key, f"the {name} split is empty ({counts})", fix))
    if cfg.test_fraction > 0 and not cfg.test_path and not splits["test"]:
        raise DataError(Problem(cfg.path, "data.test_fraction", "the test split is empty", "Add rows"))
    return SplitRecords(
        splits=splits,
        digests={k: data_digest(v) for k, v in files.items()},
        files={k: [str(f) for f in v] for k, v in files.items()},
    )


# --------------------------------------------------------------------------------------------------
# Tokenizing: (input_ids, labels) with prompt masking, truncation and optional packing
# --------------------------------------------------------------------------------------------------


Render = Callable[[list[dict[str, str]], bool], str]  # (messages, add_generation_prompt) -> text


def tokenizer_render(tokenizer: Any) -> Render:
    """The tokenizer's chat template as a `Render`."""
    return lambda messages, prompt: tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=prompt
    )


def chat_segments(
    messages: list[dict[str, str]], render: Render, mask_prompt: bool = True, where: str = ""
) -> list[tuple[str, bool]]:
    """Split a rendered conversation into (text, is_response) pieces using the chat template.

    Each assistant message's text (after the generation prompt) is a response piece; everything else is
    prompt. Relies on the template rendering a prefix of a conversation as a prefix of its text; without
    prompt masking the whole conversation is one piece, and that is not needed. `where` ("file: line 3")
    names the row in the one-line error for a template that refuses the conversation.
    """
    file, _, line = where.rpartition(": ")

    def rendered(part: list[dict[str, str]], prompt: bool = False) -> str:
        try:
            return render(part, prompt)
        except Exception as e:  # jinja's TemplateError from raise_exception(), or the template's own bug
            message = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DataError(
                Problem(
                    file or "chat template",
                    line,
                    f"the chat template refuses this conversation ({message})",
                    "Fix the row to the shape the template accepts (many require user and assistant turns to "
                    "alternate, starting with user, a system message only first), or remove it",
                )
            ) from None

    if not mask_prompt:
        return [(rendered(messages), True)]
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = rendered(messages[:i], True) if i else ""
        full = rendered(messages[: i + 1])
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise DataError(
                Problem(
                    file or "chat template",
                    line or "data.mask_prompt",
                    "the tokenizer's chat template does not render this conversation prefix by prefix, so its "
                    "responses cannot be told from its prompts",
                    "Set data.mask_prompt=false to train on whole conversations, or use a template that renders "
                    "each turn after the previous ones",
                )
            )
        pieces += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
        done = full
    rest = rendered(messages)[len(done) :]
    if rest:
        pieces.append((rest, False))
    return [(t, r) for t, r in pieces if t]


def tokenize_record(record: dict[str, Any], tokenizer: Any, cfg: DataConfig) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one normalized record, labels -100 where no loss is taken."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if "text" in record:
        ids = tokenizer(record["text"], add_special_tokens=True)["input_ids"] + eos
        return ids, list(ids)
    if "prompt" in record:
        pieces = [(record["prompt"], False), (record["response"], True)]
        special_first = True
    else:
        render = tokenizer_render(tokenizer)
        pieces = chat_segments(record["messages"], render, cfg.mask_prompt, record.get("where", ""))
        special_first = False  # chat templates write their own BOS
    ids: list[int] = []
    labels: list[int] = []
    for i, (text, is_response) in enumerate(pieces):
        piece = tokenizer(text, add_special_tokens=special_first and i == 0)["input_ids"]
        ids += piece
        labels += piece if (is_response or not cfg.mask_prompt) else [IGNORE_INDEX] * len(piece)
    if "prompt" in record:
        ids += eos
        labels += eos
    return ids, labels


def tokenize_records(
    records: list[dict[str, Any]], tokenizer: Any, cfg: DataConfig
) -> list[tuple[list[int], list[int]]]:
    """`tokenize_record` for many records at once: the instruction and text formats' pieces go through the
    tokenizer in batches (one call per piece kind, not per row: the same ids, far fewer Python round trips);
    chat records, whose pieces come from the chat template, one by one."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    out: list[tuple[list[int], list[int]] | None] = [None] * len(records)
    texts = [i for i, r in enumerate(records) if "text" in r]
    prompts = [i for i, r in enumerate(records) if "prompt" in r]
    if texts:
        for i, ids in zip(texts, _ids(tokenizer, [records[i]["text"] for i in texts], True), strict=True):
            out[i] = (ids + eos, ids + eos)
    if prompts:
        heads = _ids(tokenizer, [records[i]["prompt"] for i in prompts], True)
        tails = _ids(tokenizer, [records[i]["response"] for i in prompts], False)
        for i, head, tail in zip(prompts, heads, tails, strict=True):
            masked = head if not cfg.mask_prompt else [IGNORE_INDEX] * len(head)
            out[i] = (head + tail + eos, masked + tail + eos)
    for i, record in enumerate(records):
        if out[i] is None:
            out[i] = tokenize_record(record, tokenizer, cfg)
    return out  # type: ignore[return-value]


def eval_prompts(records: list[dict[str, Any]], tokenizer: Any, cfg: DataConfig) -> list[dict[str, Any]]:
    """The prompts a trial answers in evaluation, from the first records of a split, in order: an instruction
    row's prompt as the prompt template renders it, a chat row's conversation up to its last assistant turn as
    the chat template renders it (with the generation prompt); each with its reference answer and token ids
    (the last `max_seq_length` of them). Text rows have no reference: none."""
    out = []
    for record in records:
        if "prompt" in record:
            prompt, reference = record["prompt"], record["response"]
            ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        elif "messages" in record:
            messages = record["messages"]
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
            if not last:  # no assistant turn, or only an opening one: nothing it answers
                continue
            prompt = tokenizer_render(tokenizer)(messages[:last], True)
            reference = messages[last]["content"]
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        else:
            continue
        out.append({"prompt": prompt, "reference": reference, "prompt_ids": ids[-cfg.max_seq_length :]})
    return out


def load_eval_prompts(data_dir: str | Path, split: str, n: int) -> list[dict[str, Any]]:
    """The first `n` evaluation prompts of a split of a prepared copy (see `eval_prompts`)."""
    path = Path(data_dir) / EVAL_PROMPTS_DIR / f"{split}.json"
    return json.loads(path.read_text(encoding="utf-8"))[:n] if path.is_file() else []


def _ids(tokenizer: Any, texts: list[str], special: bool) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=special)["input_ids"]


@dataclass
class DataManifest:
    """What was prepared, stored beside the Arrow files as manifest.json."""

    key: str
    digest: str
    digests: dict[str, str]
    files: dict[str, list[str]]
    rows: dict[str, int]
    examples: dict[str, int]
    truncated: dict[str, int]
    dropped: dict[str, int]
    tokens: dict[str, int]
    format: str
    max_seq_length: int
    packing: bool
    pad_token_id: int
    path: str = ""

    def save(self, directory: Path) -> None:
        (directory / "manifest.json").write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> DataManifest:
        m = cls(**json.loads((directory / "manifest.json").read_text(encoding="utf-8")))
        m.path = str(directory)
        return m


Example = tuple[list[int], list[int]]  # (input_ids, labels)
Block = tuple[list[int], list[int], list[int]]  # a packed row: (input_ids, labels, lengths of its examples)


def pack_examples(
    examples: Iterable[Example], block: int, open_block: Block | None = None
) -> tuple[list[Block], Block | None]:
    """Whole examples packed into rows of at most `block` tokens, in order, a new row started when the next one
    does not fit (each example is at most `block` long already); each row records its examples' lengths, from
    which a trial gives every example positions from 0 and an attention that does not cross into its
    neighbours. An example's first token is never a target (predicting it from the previous example would be
    learning across examples; unpacked, nothing predicts it either). Returns the full rows and the one still
    open, to go on with the next chunk of examples."""
    rows: list[Block] = []
    ids, labels, lengths = open_block or ([], [], [])
    for x, y in examples:
        if ids and len(ids) + len(x) > block:
            rows.append((ids, labels, lengths))
            ids, labels, lengths = [], [], []
        ids, labels, lengths = ids + x, labels + [IGNORE_INDEX] + y[1:], lengths + [len(x)]
    return rows, ((ids, labels, lengths) if ids else None)


def load_tokenizer(model_path: str, trust_remote_code: bool = False, revision: str | None = None) -> Any:
    """The base model's tokenizer, with a pad token and a chat template (the fallback when it has none)."""
    from transformers import AutoTokenizer

    source = model_source(model_path)
    tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, revision=revision)
    # The same agreement `validate` checks from the files, on what transformers loaded (a tokenizer saved
    # without tokenizer.json included), before anything is tokenized with it
    problems = loaded_tokenizer_problems(model_path, Path(source) if Path(source).is_dir() else None, tok)
    if problems:
        raise DataError(problems)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        tok.chat_template = FALLBACK_CHAT_TEMPLATE
    return tok


SPLIT_RULE = "by-prompt"  # rows with the same prompt on one side; part of the key, so older copies re-prepare
# What a prepared copy holds (2: eval_prompts/, 3: packed rows of whole examples, 4: <split>.arrow written by
# pyarrow in a stream); part of the key
LAYOUT = 4
PACKED_LENGTHS = "lengths"  # a packed row's column: the lengths of the examples it holds, in order
EVAL_PROMPTS_DIR = "eval_prompts"  # <prepared>/eval_prompts/<split>.json: the prompts answered in evaluation


def preparation_key(digests: dict[str, str], cfg: DataConfig, tokenizer_id: str) -> str:
    """Identity of a prepared dataset: same data (its files' digests by role), same data settings, same
    tokenizer -> same key."""
    payload = json.dumps(
        {
            "digests": digests,
            "data": cfg.model_dump(exclude={"path", "eval_path", "test_path"}),
            "tokenizer": tokenizer_id,
            "split": SPLIT_RULE,
            "layout": LAYOUT,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _tokenizer_id(tokenizer: Any) -> str:
    """A digest of everything about the tokenizer that changes the tokens prepared with it, so a changed
    tokenizer re-prepares: the whole fast tokenizer (vocabulary, merges, normalizer, pre-tokenizer,
    post-processor with its bos/eos rule, added tokens), the special tokens and their ids (eos is appended to
    every example, pad is the manifest's pad id), the flags that add bos/eos, and the chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h = hashlib.sha256(
        backend.to_str().encode() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()
    )
    special = {
        name: [str(getattr(tokenizer, name, None)), getattr(tokenizer, f"{name}_id", None)]
        for name in ("bos_token", "eos_token", "pad_token", "unk_token")
    }
    flags = {k: getattr(tokenizer, k, None) for k in ("add_bos_token", "add_eos_token")}
    h.update(json.dumps({"special": special, "flags": flags}, sort_keys=True, default=str).encode())
    h.update(str(tokenizer.chat_template).encode())
    return h.hexdigest()[:16]


PREPARE_CHUNK = 4096  # rows tokenized and written to Arrow at a time


# --------------------------------------------------------------------------------------------------
# A prepared copy on disk: one Arrow file per split, read memory-mapped
# --------------------------------------------------------------------------------------------------


def split_file(data_dir: str | Path, split: str) -> Path:
    """The Arrow file (IPC file format, int32 token ids) of one split of a prepared copy."""
    return Path(data_dir) / f"{split}.arrow"


class PreparedSplit:
    """One split of a prepared copy, memory-mapped (pyarrow; nothing is read until a row is asked for):
    `len()`, a list of row indices gives those rows as columns of lists (`{"input_ids": [[...], ...], ...}`), one
    index gives that row's dict, a slice like a list, a column name the whole column as a list, iterating the
    rows' dicts;
    `column(name)` is the Arrow column."""

    def __init__(self, path: str | Path):
        import pyarrow as pa

        self.path = Path(path)
        self.table = pa.ipc.open_file(pa.memory_map(str(self.path))).read_all()

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index: int | list[int] | slice | str) -> Any:
        if isinstance(index, str):
            return self.table.column(index).to_pylist()
        if isinstance(index, slice):
            index = list(range(*index.indices(len(self))))
        if isinstance(index, int):
            return {k: v[0] for k, v in self.table.slice(index, 1).to_pydict().items()}
        return self.table.take(index).to_pydict()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.table.to_batches(max_chunksize=1024):
            yield from batch.to_pylist()

    def column(self, name: str) -> Any:
        return self.table.column(name)


def open_split(data_dir: str | Path, split: str) -> PreparedSplit:
    return PreparedSplit(split_file(data_dir, split))


class _SplitWriter:
    """One split's Arrow file, written as the rows come, a chunk at a time: tokenized in batches, cut to
    max_seq_length, a row whose prompt fills it dropped (no response token left to learn from), packed into
    rows of whole examples (train, with `data.packing`). Its first MAX_EVAL_SAMPLES records are kept for the
    prompts a trial answers in evaluation."""

    def __init__(self, path: Path, tokenizer: Any, cfg: DataConfig, packed: bool):
        import pyarrow as pa

        self.tokenizer, self.cfg, self.packed = tokenizer, cfg, packed
        ids = pa.list_(pa.int32())
        fields = [("input_ids", ids), ("labels", ids), *([(PACKED_LENGTHS, ids)] if packed else [])]
        self.schema = pa.schema(fields)
        self.writer = pa.ipc.new_file(str(path), self.schema)
        self.pending: list[dict[str, Any]] = []
        self.open_block: Block | None = None
        self.first: list[dict[str, Any]] = []
        self.rows = self.examples = self.truncated = self.dropped = self.tokens = 0

    def add(self, record: dict[str, Any]) -> None:
        self.rows += 1
        if len(self.first) < MAX_EVAL_SAMPLES:
            self.first.append(record)
        self.pending.append(record)
        if len(self.pending) >= PREPARE_CHUNK:
            self._flush()

    def _flush(self) -> None:
        examples: list[Any] = []
        max_len = self.cfg.max_seq_length
        for ids, labels in tokenize_records(self.pending, self.tokenizer, self.cfg):
            if len(ids) > max_len:
                ids, labels = ids[:max_len], labels[:max_len]
                self.truncated += 1
            if all(lab == IGNORE_INDEX for lab in labels[1:]):
                self.dropped += 1  # the prompt fills max_seq_length: no response token left to learn from
                continue
            examples.append((ids, labels))
        self.pending = []
        if self.packed:
            examples, self.open_block = pack_examples(examples, max_len, self.open_block)
        self._write(examples)

    def _write(self, examples: list[Any]) -> None:
        import pyarrow as pa

        if not examples:
            return
        columns = [[e[i] for e in examples] for i in range(len(self.schema))]
        self.writer.write_batch(
            pa.record_batch([pa.array(c, type=f.type) for c, f in zip(columns, self.schema, strict=True)], self.schema)
        )
        self.examples += len(examples)
        self.tokens += sum(len(e[0]) for e in examples)

    def close(self) -> None:
        self._flush()
        if self.open_block:
            self._write([self.open_block])
        self.writer.close()


@dataclass
class SplitPlan:
    """Where every row goes, from one pass that checks every row and keeps 8 bytes per row (its prompt's hash),
    never the rows themselves."""

    files: dict[str, list[Path]]  # "train" (data.path), and "eval" / "test" when given
    digests: dict[str, str]
    assignment: Any  # numpy int8, the split (index into SPLITS) of each data.path row in reading order
    rows: dict[str, int]  # rows per split


def data_files(cfg: DataConfig) -> dict[str, list[Path]]:
    """The files of each role: "train" (data.path, split three ways), "eval" and "test" when given."""
    files = {"train": find_data_files(cfg.path, "data.path")}
    if cfg.eval_path:
        files["eval"] = find_data_files(cfg.eval_path, "data.eval_path")
    if cfg.test_path:
        files["test"] = find_data_files(cfg.test_path, "data.test_path")
    return files


def plan_splits(cfg: DataConfig, files: dict[str, list[Path]], digests: dict[str, str]) -> SplitPlan:
    """Read and check every row once, streaming, and decide each data.path row's split exactly as
    `split_indices` would (rows asking the same thing stay together), from their prompts' 64-bit hashes.

    Raises:
        DataError: every bad row (up to a cap), or a split that comes out empty.
    """
    problems: list[Problem] = []
    hashes = array.array("Q")
    for _, record in iter_records(files["train"], cfg, problems):
        digest = hashlib.blake2b(prompt_key(record).encode(), digest_size=8).digest()
        hashes.append(int.from_bytes(digest, "little"))
    external = {
        role: sum(1 for _ in iter_records(files[role], cfg, problems)) for role in ("eval", "test") if role in files
    }
    if problems:
        raise DataError(problems)
    keys = np.frombuffer(hashes, dtype=np.uint64) if hashes else np.zeros(0, dtype=np.uint64)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))  # groups in the order their first rows come
    group = rank[inverse.reshape(-1)]
    sizes = np.bincount(group, minlength=len(first))
    assignment = deal_groups(sizes, cfg)[group]
    rows = {split: int((assignment == i).sum()) for i, split in enumerate(SPLITS)}
    rows["validation"] += external.get("eval", 0)
    rows["test"] += external.get("test", 0)
    n = len(keys)
    for name, key, fix in (
        ("train", "data.path", "Add rows or lower data.val_fraction/test_fraction"),
        ("validation", "data.val_fraction", "Set data.val_fraction > 0 or data.eval_path"),
    ):
        if not rows[name]:
            distinct = len(first)
            counts = f"{n} rows in all" + (f", {distinct} distinct prompts" if distinct < n else "")
            raise DataError(Problem(cfg.path, key, f"the {name} split is empty ({counts})", fix))
    if cfg.test_fraction > 0 and not cfg.test_path and not rows["test"]:
        raise DataError(Problem(cfg.path, "data.test_fraction", "the test split is empty", "Add rows"))
    return SplitPlan(files, digests, assignment, rows)


def prepare_dataset(
    cfg: DataConfig, model_path: str, out_root: Path, trust_remote_code: bool = False, revision: str | None = None
) -> DataManifest:
    """Read, check, split and tokenize the data once into `out_root/<key>/` (an Arrow file per split), reusing a
    prior copy of the same data, settings and tokenizer (found from the files' digests alone, before any row
    is read).

    Streaming, in flat memory whatever the size: one pass reads and checks every row (each bad row named by
    file and line) and keeps only a hash of its prompt, from which the splits are dealt; a second pass reads
    the rows again and tokenizes and writes them, a chunk at a time, into each split's Arrow file. Every trial
    and worker then reads those memory-mapped (`open_split`); workers never re-tokenize. Writing goes to a
    temporary directory renamed into place, so concurrent preparations cannot leave a half-written copy.
    """
    files = data_files(cfg)
    digests = {role: data_digest(fs) for role, fs in files.items()}
    tokenizer = load_tokenizer(model_path, trust_remote_code, revision)
    key = preparation_key(digests, cfg, _tokenizer_id(tokenizer))
    target = out_root / key
    if (target / "manifest.json").is_file():
        return DataManifest.load(target)
    plan = plan_splits(cfg, files, digests)
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=out_root))
    try:
        _write_copy(plan, cfg, tokenizer, key, tmp)
    except BaseException:  # a bad chat row, a full disk, Ctrl-C: no half-written copy stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, target)
    except OSError:  # another run prepared the same key meanwhile; theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return DataManifest.load(target)


def _write_copy(plan: SplitPlan, cfg: DataConfig, tokenizer: Any, key: str, tmp: Path) -> None:
    """The whole prepared copy into `tmp`: each split's Arrow file, the evaluation prompts, the manifest."""
    writers = _write_splits(plan, cfg, tokenizer, tmp)
    if writers["train"].examples == 0 or writers["validation"].examples == 0:
        raise DataError(
            Problem(
                cfg.path,
                "data.max_seq_length",
                f"every prompt fills max_seq_length={cfg.max_seq_length}, no response tokens remain",
                "Raise data.max_seq_length",
            )
        )
    (tmp / EVAL_PROMPTS_DIR).mkdir(exist_ok=True)
    for split in ("validation", "test"):
        prompts = eval_prompts(writers[split].first, tokenizer, cfg)
        (tmp / EVAL_PROMPTS_DIR / f"{split}.json").write_text(json.dumps(prompts), encoding="utf-8")
    manifest = DataManifest(
        key=key,
        digest=plan.digests["train"],
        digests=plan.digests,
        files={role: [str(f) for f in fs] for role, fs in plan.files.items()},
        rows={split: w.rows for split, w in writers.items()},
        examples={split: w.examples for split, w in writers.items()},
        truncated={split: w.truncated for split, w in writers.items()},
        dropped={split: w.dropped for split, w in writers.items()},
        tokens={split: w.tokens for split, w in writers.items()},
        format=cfg.format,
        max_seq_length=cfg.max_seq_length,
        packing=cfg.packing,
        pad_token_id=int(tokenizer.pad_token_id),
    )
    manifest.save(tmp)


def _write_splits(plan: SplitPlan, cfg: DataConfig, tokenizer: Any, out: Path) -> dict[str, _SplitWriter]:
    """The second pass: every row of the plan read again, in order, into its split's writer."""
    writers = {s: _SplitWriter(split_file(out, s), tokenizer, cfg, cfg.packing and s == "train") for s in SPLITS}
    problems: list[Problem] = []
    routed = 0
    for routed, (_, record) in enumerate(iter_records(plan.files["train"], cfg, problems), start=1):
        if routed > len(plan.assignment):
            break  # more rows than were checked: the files changed (said below)
        writers[SPLITS[plan.assignment[routed - 1]]].add(record)
    for role, split in (("eval", "validation"), ("test", "test")):
        for _, record in iter_records(plan.files.get(role, []), cfg, problems):
            writers[split].add(record)
    if problems or routed != len(plan.assignment):  # the files changed since they were checked
        raise DataError(
            problems or Problem(cfg.path, "data.path", "the data changed while it was being prepared", "Run again")
        )
    for writer in writers.values():
        writer.close()
    return writers
