"""The GPU path, ready to run: on one CUDA machine that has torch, transformers and peft but neither Ray nor MLflow
(DeepSpeed, bitsandbytes and pydantic carried in as wheels: bench/gpu_wheels.sh), a Llama-style model of about
1.1B parameters is built locally (random weights, no hub) and trained through adaptune's own worker code (the
model load with its quantization, LoRA, the DeepSpeed engine, the optimizer, the train step), bf16 LoRA and QLoRA
(NF4, double quantization, paged 8-bit AdamW), each against a plain PEFT + torch loop on the same model and
batch. Prints one Markdown table: tokens/s and the ratio to the plain loop, peak GPU memory, QLoRA/LoRA memory.

    python3 bench/gpu_check.py             # on the GPU machine: under 8 minutes on an H200 (about 2 expected)
    python3 bench/gpu_check.py --smoke     # anywhere, CPU: a tiny model, a few steps (the test suite runs this)

Each case: the model loaded from disk, `--warmup` steps, then `--steps` timed steps of one micro-batch of
`--batch` sequences of `--seq` random tokens, `torch.cuda.synchronize()` around the timing; peak memory is
`torch.cuda.max_memory_allocated` from the load on (the CPU smoke mode reports the process's peak RSS instead).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))  # adaptune from this checkout: the GPU machine has it nowhere else

# about 1.1B parameters (TinyLlama's shape); the smoke model is a toy of the same architecture
SHAPES = {
    "gpu": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "vocab_size": 32000,
    },
    "smoke": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
    },
}
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}


def build_model(out: Path, shape: dict[str, int], device: str) -> Path:
    """A randomly initialised Llama-style causal LM, saved as safetensors (as a user's base model would be)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    del model
    return out


def batch(vocab: int, size: int, seq: int, device: Any) -> Any:
    """One micro-batch of random tokens, every token a target, through adaptune's own collate."""
    import torch

    from adaptune.worker.train_loop import collate

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (size, seq), generator=g).tolist()
    return collate({"input_ids": ids, "labels": ids}, 0, device)


def measure(step, steps: int, warmup: int, cuda: bool) -> float:
    """Seconds per step over `steps` steps after `warmup` untimed ones."""
    import torch

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


# --------------------------------------------------------------------------------------------------
# adaptune's path: the worker's own functions, no Ray
# --------------------------------------------------------------------------------------------------


def adaptune_case(model_dir: Path, quantized: bool, args: argparse.Namespace, cuda: bool) -> dict[str, float]:
    import torch

    from adaptune.config import ClusterProfile, SweepConfig
    from adaptune.names import target_key
    from adaptune.preflight.architecture import target_modules_for
    from adaptune.records import PreparedRun
    from adaptune.worker.deepspeed_config import build_deepspeed_config
    from adaptune.worker.train_loop import Rank, build_engine, build_model, micro_step

    optimizer = ("paged_adamw_8bit" if cuda else "adamw_8bit") if quantized else "adamw"
    sweep = SweepConfig(
        name="gpu-check",
        model={"path": str(model_dir)},
        data={"path": "unused.jsonl"},  # not read: the batch is made here
        lora=LORA,
        quantization={"mode": "4bit", "quant_type": "nf4", "double_quant": True} if quantized else {"mode": "none"},
        train={"precision": "bf16" if cuda else "fp32", "optimizer": optimizer, "micro_batch_size": args.batch},
        eval={"samples": 0},
    )
    cluster = ClusterProfile(trial={"num_workers": 1, "use_gpu": cuda}, deepspeed={"zero_stage": 2})
    targets = target_modules_for(sweep.lora.target_modules, str(model_dir), None)
    spec = PreparedRun("", 0, {target_key(sweep.lora.target_modules): targets}).spec(sweep, cluster, time.time())
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    me = Rank(0, 1, device, False, 0)
    _start_memory(cuda)
    ds_config = build_deepspeed_config(sweep, cluster, 1)
    loaded = time.perf_counter()
    model = build_model(spec, me, ds_config, None, {})
    engine = build_engine(spec, me, model, ds_config, {"step": 0}, {})
    loaded = time.perf_counter() - loaded
    b = batch(model.peft.config.vocab_size, args.batch, args.seq, device)
    seconds = measure(lambda: micro_step(engine, b, 1), args.steps, args.warmup, cuda)
    out = {"step_s": seconds, "tokens_per_s": b.tokens / seconds, "peak_mb": _peak_mb(cuda), "load_s": loaded}
    out["trainable"] = model.trainable
    engine.destroy()  # DeepSpeed's hooks and buffers; the rest goes with this frame
    return out


# --------------------------------------------------------------------------------------------------
# The plain loop: transformers + peft + torch (bitsandbytes' paged optimizer for QLoRA), one process
# --------------------------------------------------------------------------------------------------


def plain_case(model_dir: Path, quantized: bool, args: argparse.Namespace, cuda: bool) -> dict[str, float]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from adaptune.preflight.architecture import target_modules_for

    dtype = torch.bfloat16 if cuda else torch.float32
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    _start_memory(cuda)
    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": {"": str(device)}}
    if quantized:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
    loaded = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    model.config.use_cache = False
    targets = target_modules_for(LORA["target_modules"], str(model_dir), None)
    model = get_peft_model(
        model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules=targets)
    )
    params = [p for p in model.parameters() if p.requires_grad]
    if quantized:
        import bitsandbytes as bnb

        opt = (bnb.optim.PagedAdamW8bit if cuda else bnb.optim.AdamW8bit)(params, lr=1e-4)
    else:
        opt = torch.optim.AdamW(params, lr=1e-4)
    loaded = time.perf_counter() - loaded
    b = batch(model.config.vocab_size, args.batch, args.seq, device)

    def step() -> None:
        model(**b.inputs).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds = measure(step, args.steps, args.warmup, cuda)
    return {"step_s": seconds, "tokens_per_s": b.tokens / seconds, "peak_mb": _peak_mb(cuda), "load_s": loaded}


_BASE_MB = 0.0  # what was allocated when the current case started


def _start_memory(cuda: bool) -> None:
    """A case's peak counts from what is allocated now (what an earlier case's libraries still hold is not its)."""
    import torch

    global _BASE_MB
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        _BASE_MB = torch.cuda.memory_allocated() / 2**20


def _peak_mb(cuda: bool) -> float:
    import torch

    if cuda:
        return torch.cuda.max_memory_allocated() / 2**20 - _BASE_MB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _free(cuda: bool) -> None:
    import torch

    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


def join_group(cuda: bool) -> None:
    """A process group of one, as Ray Train would make (DeepSpeed needs one)."""
    import socket

    os.environ.setdefault("DS_ACCELERATOR", "cuda" if cuda else "cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, a tiny model, a few steps (no GPU needed)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (GPU 20, smoke 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (GPU 5, smoke 1)")
    parser.add_argument("--batch", type=int, default=None, help="sequences per micro-batch (GPU 8, smoke 2)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per sequence (GPU 1024, smoke 32)")
    parser.add_argument("--json", help="also write the measurements to this file")
    args = parser.parse_args()
    import torch

    cuda = not args.smoke
    if cuda and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; run with --smoke for the CPU check")
    defaults = {"steps": (2, 20), "warmup": (1, 5), "batch": (2, 8), "seq": (32, 1024)}
    for key, (smoke, gpu) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, gpu if cuda else smoke)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    join_group(cuda)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="adaptune-gpu-check-") as tmp:
        model_dir = build_model(Path(tmp) / "model", SHAPES["gpu" if cuda else "smoke"], "cuda" if cuda else "cpu")
        built = time.perf_counter() - started
        results = {}
        for name, fn, quantized in (
            ("plain LoRA", plain_case, False),
            ("adaptune LoRA", adaptune_case, False),
            ("plain QLoRA", plain_case, True),
            ("adaptune QLoRA", adaptune_case, True),
        ):
            results[name] = fn(model_dir, quantized, args, cuda)
            _free(cuda)  # the case's model and optimizer went with its frame
            print(f"gpu_check: {name}: {results[name]['tokens_per_s']:,.0f} tokens/s", file=sys.stderr, flush=True)
    device = torch.cuda.get_device_name(0) if cuda else "CPU (smoke: a toy model, not a measurement)"
    trainable = results["adaptune LoRA"]["trainable"]
    print(
        f"GPU check on {device}: Llama-style model of {_params(SHAPES['gpu' if cuda else 'smoke'])} parameters "
        f"built locally ({built:.0f} s), LoRA r={LORA['r']} on all linear layers ({trainable:,} trainable), one "
        f"micro-batch of {args.batch} x {args.seq} tokens, {args.steps} timed steps after {args.warmup}; torch "
        f"{torch.__version__}; {time.perf_counter() - started:.0f} s in all.\n"
    )
    memory = "peak GPU memory (MiB)" if cuda else "peak RSS (MiB)"
    print(f"| case | tokens/s | adaptune / plain | step (ms) | {memory} | memory, adaptune / plain |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind in ("LoRA", "QLoRA"):
        plain, ours = results[f"plain {kind}"], results[f"adaptune {kind}"]
        for name, r in ((f"plain PEFT + torch, {kind}", plain), (f"adaptune, {kind}", ours)):
            ratio = f"{ours['tokens_per_s'] / plain['tokens_per_s']:.3f}" if r is ours else ""
            mem = f"{ours['peak_mb'] / plain['peak_mb']:.3f}" if r is ours else ""
            step_ms, peak = 1000 * r["step_s"], r["peak_mb"]
            print(f"| {name} | {r['tokens_per_s']:,.0f} | {ratio} | {step_ms:.1f} | {peak:,.0f} | {mem} |")
    q_over_l = results["adaptune QLoRA"]["peak_mb"] / results["adaptune LoRA"]["peak_mb"]
    print(f"\nQLoRA / LoRA peak memory (adaptune): **{q_over_l:.3f}**")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, **results}, indent=1), encoding="utf-8")


def _params(shape: dict[str, int]) -> str:
    h, i, n, v = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"], shape["vocab_size"]
    kv = h * shape["num_key_value_heads"] // shape["num_attention_heads"]
    total = 2 * v * h + n * (2 * h * h + 2 * h * kv + 3 * h * i + 2 * h) + h
    return f"{total / 1e9:.2f}B" if total > 1e8 else f"{total / 1e6:.2f}M"


if __name__ == "__main__":
    main()
