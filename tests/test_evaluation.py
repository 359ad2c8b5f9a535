"""Generated answers, scored (adaptune.evaluation, data.eval_prompts, the worker's generate_answers): the
built-in scorers against known values, a user's scorers file, a scorer that raises on one answer, the checks
`validate` runs, the prompts every trial answers, and batched greedy generation on the tiny model."""

from __future__ import annotations

import pytest

from adaptune.config import EvalConfig
from adaptune.evaluation import MISSING, check_scorers, load_scorers, score_answers, scorer_code
from adaptune.records import REPORTED_METRICS, TAKEN_NAMES

pytestmark = pytest.mark.unit


def test_builtin_scorers_match_their_definitions():
    scorers = load_scorers(EvalConfig(), None)
    assert list(scorers) == ["exact_match", "token_f1", "rouge_l"]
    # SQuAD normalisation: case, punctuation and articles do not count
    assert scorers["exact_match"]("q", "The cat.", "the cat") == 1.0
    assert scorers["exact_match"]("q", "the cat", "a dog") == 0.0
    # tokens after normalisation: answer [cat, sat], reference [cat, sat, down]: P 1, R 2/3
    assert scorers["token_f1"]("q", "the cat sat down", "the cat sat") == pytest.approx(0.8)
    # longest common subsequence 5 of an answer of 5 words and a reference of 6: P 1, R 5/6
    assert scorers["rouge_l"]("q", "the cat sat on the mat", "the cat sat on mat") == pytest.approx(10 / 11, abs=1e-4)


def _scorers_file(tmp_path, body: str):
    path = tmp_path / "scorers.py"
    path.write_text(body, encoding="utf-8")
    return str(path)


def test_a_user_scorer_that_raises_on_one_answer_leaves_that_score_missing(tmp_path):
    path = _scorers_file(
        tmp_path,
        "def mentions_reset(prompt, reference, answer):\n"
        "    if not answer:\n"
        "        raise ValueError('empty answer')\n"
        "    return float('reset' in answer.lower())\n",
    )
    cfg = EvalConfig(scorers=["exact_match", "mentions_reset"], scorers_file=path)
    scorers = load_scorers(cfg, scorer_code(cfg))
    prompts = [{"prompt": f"p{i}", "reference": "Hold reset."} for i in range(3)]
    scored = score_answers(prompts, ["Press RESET.", "", "Hold reset."], scorers)
    assert [r["mentions_reset"] for r in scored.rows] == [1.0, None, 1.0]
    assert [r["exact_match"] for r in scored.rows] == [0.0, 0.0, 1.0]
    assert scored.means == {"exact_match": pytest.approx(1 / 3), "mentions_reset": 1.0}
    (failure,) = scored.failures
    assert "'mentions_reset' failed on answer 1" in failure and "empty answer" in failure
    # a score no answer has is the worst, so no search prefers it
    assert score_answers(prompts[1:2], [""], scorers).means["mentions_reset"] == MISSING


@pytest.mark.parametrize(
    ("body", "scorers", "says", "fix"),
    [
        (None, ["bleu"], "unknown scorer 'bleu'", "Use a built-in scorer"),
        ("def other(prompt, reference, answer):\n    return 1.0\n", ["mine"], "defines: other", "Define `def mine("),
        ("def mine(answer):\n    return 1.0\n", ["mine"], "does not take (prompt, reference, answer)", "signature"),
        ("import nonexistent_module_xyz\n", ["mine"], "fails to load (ModuleNotFoundError", "Fix the file"),
        ("def mine(p, r, a):\n    raise RuntimeError('boom')\n", ["mine"], "raises RuntimeError", "return a float"),
        ("def mine(p, r, a):\n    return 'high'\n", ["mine"], "not a finite number", "return a float"),
        (None, ["eval_loss"], "has the name of a metric the trainer reports", "Rename"),
        (None, ["answer"], "or a column of the results", "Rename"),
    ],
)
def test_validate_refuses_scorers_that_cannot_score(tmp_path, body, scorers, says, fix):
    cfg = EvalConfig(scorers=scorers, scorers_file=_scorers_file(tmp_path, body) if body else None)
    (problem,) = check_scorers(cfg, "sweep.yaml", (*REPORTED_METRICS, *TAKEN_NAMES))
    assert problem.key == "eval.scorers_file" if "load" in says else problem.key == "eval.scorers"
    assert says in problem.message and fix in problem.fix, problem


def test_a_scorer_may_return_any_real_number_numpy_s_too(tmp_path):
    path = _scorers_file(
        tmp_path, "import numpy\n\ndef mine(prompt, reference, answer):\n    return numpy.float32(0.5)\n"
    )
    cfg = EvalConfig(scorers=["mine"], scorers_file=path)
    assert check_scorers(cfg, "sweep.yaml", REPORTED_METRICS) == []
    scored = score_answers([{"prompt": "p", "reference": "r"}], ["a"], load_scorers(cfg, scorer_code(cfg)))
    assert scored.rows[0]["mine"] == 0.5 and not scored.failures


def test_a_scorers_file_that_is_missing_is_named(tmp_path):
    cfg = EvalConfig(scorers=["mine"], scorers_file=str(tmp_path / "nope.py"))
    (problem,) = check_scorers(cfg, "sweep.yaml", REPORTED_METRICS)
    assert problem.key == "eval.scorers_file" and "is not a file" in problem.message


def test_eval_settings_are_checked():
    with pytest.raises(ValueError, match="named more than once"):
        EvalConfig(scorers=["rouge_l", "rouge_l"])
    with pytest.raises(ValueError):
        EvalConfig(samples=-1)
    assert EvalConfig().generates("chat") and not EvalConfig().generates("text")
    assert not EvalConfig(samples=0).generates("instruction")


def test_eval_prompts_are_what_training_prompts_with_and_the_reference_answer(tokenizer):
    from adaptune.config import DataConfig
    from adaptune.data import IGNORE_INDEX, eval_prompts, normalize_row, tokenize_record

    cfg = DataConfig(path="x.jsonl", format="instruction", max_seq_length=192)
    row = normalize_row({"instruction": "How do I reset the router?", "output": "Hold reset."}, cfg, "f", "line 1")
    (prompt,) = eval_prompts([row], tokenizer, cfg)
    ids, labels = tokenize_record(row, tokenizer, cfg)
    first_response = next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
    assert prompt["prompt_ids"] == ids[:first_response]  # the prompt template, as trained on
    assert prompt["reference"] == "Hold reset." and prompt["prompt"] == row["prompt"]

    chat = DataConfig(path="x.jsonl", format="chat", max_seq_length=192)
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "How do I reset the router?"},
        {"role": "assistant", "content": "Hold reset."},
    ]
    row = normalize_row({"messages": messages}, chat, "f", "line 1")
    (prompt,) = eval_prompts([row], tokenizer, chat)
    rendered = tokenizer.apply_chat_template(messages[:3], tokenize=False, add_generation_prompt=True)
    assert prompt["prompt"] == rendered and prompt["reference"] == "Hold reset."  # up to the last assistant turn
    assert eval_prompts([{"text": "plain"}], tokenizer, chat) == []  # no reference answer: nothing to generate


@pytest.fixture
def one_rank_group(tmp_path):
    """A process group of this process alone (gloo), as a trial of one worker has."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_batched_greedy_answers_are_each_prompt_s_own_answer(tiny_model, tokenizer, one_rank_group):
    """Left-padded batches give every prompt the answer it gets alone; greedy decoding is deterministic; an
    answer stops at EOS or max_new_tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    from adaptune.config import DataConfig
    from adaptune.data import eval_prompts, normalize_row
    from adaptune.worker.train_loop import Rank, generate_answers

    cfg = DataConfig(path="x.jsonl", format="instruction", max_seq_length=192)
    questions = ["How do I reset the router?", "Where is the invoice?", "Can I change my plan later this year?"]
    rows = [normalize_row({"instruction": q, "output": "x"}, cfg, "f", f"line {i}") for i, q in enumerate(questions)]
    prompts = eval_prompts(rows, tokenizer, cfg)
    assert len({len(p["prompt_ids"]) for p in prompts}) > 1  # different lengths: the batch is padded
    model = AutoModelForCausalLM.from_pretrained(tiny_model, torch_dtype=torch.float32)
    me = Rank(0, 1, torch.device("cpu"), False, int(tokenizer.pad_token_id))
    ev = EvalConfig(max_new_tokens=12, batch_size=2)
    batched = generate_answers(model, prompts, me, ev, tokenizer.eos_token_id)
    alone = [generate_answers(model, [p], me, ev, tokenizer.eos_token_id)[0] for p in prompts]
    assert batched == alone
    assert generate_answers(model, prompts, me, ev, tokenizer.eos_token_id) == batched
    assert all(0 < len(a) <= 12 and tokenizer.eos_token_id not in a for a in batched), batched
    assert model.training  # handed back in training mode
