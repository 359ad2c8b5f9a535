"""The offline demo base model: a small Llama-style model with a byte-level BPE tokenizer trained on the demo
company data, built locally because this product must work without a model hub."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from adaptune.demo.rows import corpus_text, generate_rows

DEMO_DATA = Path("data/demo/company_faq.jsonl")
DEMO_MODEL = Path("demo-model")
SPECIAL_TOKENS = ["<s>", "</s>", "<pad>"]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048):
    """A byte-level BPE `PreTrainedTokenizerFast` (BOS added to every sequence) trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def build_tiny_model(
    out_dir: Path,
    texts: Iterable[str],
    arch: str = "llama",
    hidden_size: int = 128,
    layers: int = 2,
    vocab_size: int = 2048,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised causal LM of architecture `arch` and its tokenizer to `out_dir`.

    `arch` is one of llama, qwen2, gpt2, gpt_neox: the families whose LoRA target sets adaptune resolves.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = train_tokenizer(texts, vocab_size)
    ids = {k: tokenizer.convert_tokens_to_ids(t) for k, t in (("bos", "<s>"), ("eos", "</s>"), ("pad", "<pad>"))}
    common = dict(vocab_size=len(tokenizer), bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"])
    heads = 4
    llama_like = dict(
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        max_position_embeddings=1024,
    )
    shapes = {
        "llama": {**llama_like, "tie_word_embeddings": False},
        "qwen2": llama_like,
        "gpt2": dict(n_embd=hidden_size, n_layer=layers, n_head=heads, n_positions=1024),
        "gpt_neox": dict(
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 4,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=1024,
        ),
    }
    config = AutoConfig.for_model(arch, **shapes[arch], **common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def pretrain(
    model_dir: Path,
    texts: list[str],
    steps: int = 300,
    seq_len: int = 128,
    batch: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
) -> float:
    """Give a freshly built model a short full pre-training on plain `texts` (next-token prediction over
    concatenated text), so it is a base model with a vocabulary, not noise. Returns the last loss."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    stream = torch.tensor([t for text in texts for t in tok(text)["input_ids"] + [tok.eos_token_id]])
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - seq_len, (batch,), generator=g)
        x = torch.stack([stream[s : s + seq_len] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
    model.save_pretrained(str(model_dir), safe_serialization=True)
    return loss.item()


def build_demo_model(out_dir: Path = DEMO_MODEL, data_file: Path = DEMO_DATA, pretrain_steps: int = 300) -> Path:
    """The quickstart's base model: a 2-layer Llama-style model with a tokenizer trained on the demo data,
    pre-trained briefly on plain product text from a different slice of the demo generator than the rows
    it will be fine-tuned on (so fine-tuning still has the Q&A format and the answers to learn)."""
    rows = [json.loads(line) for line in data_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    build_tiny_model(out_dir, corpus_text(rows))
    if pretrain_steps:
        background = [r["instruction"] for r in generate_rows(2000, seed=99, start=50_000)]
        pretrain(out_dir, background, steps=pretrain_steps)
    return out_dir
