"""Deterministic generator of the instruction-style demo company FAQ dataset (fictional Nimbus Router X2).

The facts (questions, answers, situations) and the pools of names, cities, homes etc. that fill a question's
slots are data: `facts.yaml` beside this file. This module only draws rows from them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

FACTS_FILE = Path(__file__).with_name("facts.yaml")
FIELDS: tuple[str, str, str] = ("instruction", "input", "output")


@dataclass(frozen=True)
class Fact:
    """One product fact: question paraphrases, consistent answers and optional situations.

    Attributes:
        key: Stable identifier of the fact.
        questions: Question templates; may contain placeholders such as ``{product}`` or ``{mine}``.
        answers: Paraphrased answers that all state the same facts (1-3 sentences each).
        contexts: Fact-specific customer situations usable as ``input``; placeholders allowed.
    """

    key: str
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    contexts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Table:
    """The fact table as `facts.yaml` holds it."""

    product: str
    company: str
    app: str
    input_share: float  # share of rows that carry a non-empty ``input`` (customer situation / account context)
    slots: dict[str, tuple[str, ...]]  # pools the slot values are drawn from, by pool name
    openers: tuple[str, ...]
    closers: tuple[str, ...]
    generic_contexts: tuple[str, ...]  # account-level situations that fit any question without changing the answer
    facts: tuple[Fact, ...]


@cache
def table() -> Table:
    """The fact table, read once."""
    doc: dict[str, Any] = yaml.safe_load(FACTS_FILE.read_text(encoding="utf-8"))
    facts = tuple(
        Fact(f["key"], tuple(f["questions"]), tuple(f["answers"]), tuple(f.get("contexts") or ())) for f in doc["facts"]
    )
    return Table(
        product=doc["product"],
        company=doc["company"],
        app=doc["app"],
        input_share=float(doc["input_share"]),
        slots={k: tuple(v) for k, v in doc["slots"].items()},
        openers=tuple(doc["openers"]),
        closers=tuple(doc["closers"]),
        generic_contexts=tuple(doc["generic_contexts"]),
        facts=facts,
    )


def _with_article(noun: str) -> str:
    """Prefix ``noun`` with the matching indefinite article."""
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def _serial(rng: random.Random) -> str:
    """Return a fake but well-formed product serial number (``NX2-XXXX-NNNN``)."""
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "NX2-" + "".join(rng.choice(letters) for _ in range(4)) + f"-{rng.randrange(10000):04d}"


def _slots(rng: random.Random) -> dict[str, str]:
    """Draw one set of placeholder values for templates and contexts."""
    pools = table().slots
    speed = rng.choice((300, 500, 940, 1000, 1200, 2000))
    home = rng.choice(pools["homes"])
    return {
        "product": rng.choice(pools["product_refs"]),
        "mine": rng.choice(pools["mine_refs"]),
        "name": rng.choice(pools["names"]),
        "city": rng.choice(pools["cities"]),
        "home": home,
        "a_home": _with_article(home),
        "isp": rng.choice(pools["isps"]),
        "pack": rng.choice(pools["packs"]),
        "phone": rng.choice(pools["phones"]),
        "order": f"AER-{rng.randrange(1_000_000, 10_000_000)}",
        "serial": _serial(rng),
        "size": f"{rng.randrange(6, 60) * 100:,}",
        "months": str(rng.randrange(2, 23)),
        "days": str(rng.randrange(2, 28)),
        "hours": str(rng.randrange(1, 12)),
        "minutes": str(rng.choice((5, 10, 15, 20, 30, 45))),
        "count": str(rng.randrange(12, 90)),
        "kids": rng.choice(("two", "three", "four")),
        "speed": str(speed),
        "low": str(speed // rng.choice((3, 4, 5))),
        "floors": rng.choice(("two", "three")),
        "clock": rng.choice(("7 AM", "9:30 AM", "noon", "3 PM", "6:45 PM", "10 PM")),
    }


def _capitalize(text: str) -> str:
    """Upper-case the first character of ``text`` leaving the rest unchanged."""
    return text[:1].upper() + text[1:]


def _make_row(fact: Fact, rng: random.Random) -> dict[str, str]:
    """Build one row for ``fact`` with randomly chosen wording, context and answer paraphrase."""
    t = table()
    slots = _slots(rng)
    body = _capitalize(rng.choice(fact.questions).format(**slots))
    parts = [body]
    if rng.random() < 0.45:
        parts.insert(0, rng.choice(t.openers).format(**slots))
    if rng.random() < 0.35:
        parts.append(rng.choice(t.closers))
    context = ""
    if rng.random() < t.input_share:
        pool = fact.contexts if fact.contexts and rng.random() < 0.6 else t.generic_contexts
        context = _capitalize(rng.choice(pool).format(**slots))
    return {"instruction": " ".join(parts), "input": context, "output": rng.choice(fact.answers)}


def _row_stream(seed: int) -> Iterator[dict[str, str]]:
    """Yield an endless, duplicate-free stream of rows; facts are cycled in shuffled rounds.

    Raises:
        RuntimeError: If no new (instruction, input) pair can be found for a fact.
    """
    facts = table().facts
    rng = random.Random(seed)
    seen: set[tuple[str, str]] = set()
    order = list(range(len(facts)))
    while True:
        rng.shuffle(order)
        for index in order:
            for _ in range(200):
                row = _make_row(facts[index], rng)
                key = (row["instruction"], row["input"])
                if key not in seen:
                    seen.add(key)
                    yield row
                    break
            else:
                raise RuntimeError(f"variant space exhausted for fact {facts[index].key!r}")


def generate_rows(n: int, seed: int = 0, start: int = 0) -> list[dict[str, str]]:
    """Generate ``n`` deterministic demo FAQ rows.

    Rows are taken from one duplicate-free stream per ``seed``, so ``start`` selects a later, disjoint
    batch of the same kind: ``generate_rows(300, s, 0) + generate_rows(300, s, 300)`` equals
    ``generate_rows(600, s, 0)`` and no (instruction, input) pair repeats across the stream.

    Args:
        n: Number of rows to return (>= 0).
        seed: Seed of the ``random.Random`` stream.
        start: Offset into the stream; rows before it are skipped.

    Returns:
        List of dicts with keys ``instruction``, ``input`` and ``output`` (in that order).

    Raises:
        ValueError: If ``n`` or ``start`` is negative.
    """
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be >= 0, got n={n}, start={start}")
    return list(itertools.islice(_row_stream(seed), start, start + n))


def write_jsonl(rows: Iterable[dict[str, str]], path: str | os.PathLike[str]) -> None:
    """Write rows as UTF-8 JSON lines with keys in the order instruction, input, output.

    Args:
        rows: Rows as produced by :func:`generate_rows`.
        path: Destination file; parent directories are created if missing.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            record = {key: row.get(key, "") for key in FIELDS}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def corpus_text(rows: Iterable[dict[str, str]]) -> Iterator[str]:
    """Yield the plain texts of each row (instruction, input, output) for tokenizer training.

    Empty ``input`` strings are skipped.

    Args:
        rows: Rows with ``instruction``, ``input`` and ``output`` keys.

    Yields:
        The non-empty text fields, row by row in field order.
    """
    for row in rows:
        for key in FIELDS:
            text = row.get(key, "")
            if text:
                yield text


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: generate demo rows and write them as JSONL.

    Args:
        argv: Argument list (defaults to ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=f"Generate the {table().product} demo FAQ dataset as JSONL.")
    parser.add_argument("--out", required=True, help="output .jsonl path")
    parser.add_argument("--rows", type=int, default=400, help="number of rows (default 400)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--start", type=int, default=0, help="offset into the row stream (default 0)")
    args = parser.parse_args(argv)
    if args.rows < 0 or args.start < 0:
        parser.error("--rows and --start must be >= 0")
    rows = generate_rows(args.rows, seed=args.seed, start=args.start)
    write_jsonl(rows, args.out)
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
