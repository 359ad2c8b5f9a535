"""Memory of a QLoRA trial against a full-precision LoRA trial of the same >= 100M-parameter Llama-style model:
the base weights as loaded in each mode, the training worker's peak resident memory in a real `adaptune train`
trial of each mode (one after the other, each in a fresh process with its own local Ray), and the
trainable-parameter fraction for each searched LoRA rank. Prints Markdown tables.

    .venv/bin/python bench/memory.py [--hidden 1024] [--layers 8] [--steps 5]

Target: the 4-bit base weights about an eighth of fp32 (a quarter of bf16); report the peak-RSS ratio as measured.
A second table: what gradient checkpointing and 8-bit AdamW save on the same LoRA trial. Starts a local Ray for
each trial (unset RAY_ADDRESS; no other Ray on the host). About 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "demo" / "company_faq.jsonl"
ADAPTUNE = Path(sys.executable).with_name("adaptune")
RANKS = (8, 16, 32, 64)
MB = 2**20

# The Markdown goes to stdout, or with --out to a file, which leaves stdout to library and Ray logs.
OUT = sys.stdout


def md(*lines: str) -> None:
    print(*lines, file=OUT, flush=True)


class WorkerMemory:
    """Samples the resident memory of every Ray Train worker process (`ray::RayTrainWorker`) every 0.2 s, from
    /proc: total RSS, its anonymous part (heap, tensors), and the resident pages of the base model's
    memory-mapped safetensors file; the rest is other file-backed pages (shared libraries). The last sample is
    the worker at the end of its training, just before it exits."""

    def __enter__(self) -> WorkerMemory:
        self.peak_rss = self.peak_anon = 0
        self.last: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        import psutil

        while not self._stop.wait(0.2):
            for proc in psutil.process_iter(["cmdline"]):
                if not (proc.info["cmdline"] or [""])[0].startswith("ray::RayTrainWorker"):
                    continue
                try:
                    status = Path(f"/proc/{proc.pid}/status").read_text()
                    smaps = Path(f"/proc/{proc.pid}/smaps").read_text()
                except OSError:
                    continue
                fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
                if "VmRSS" not in fields or "RssAnon" not in fields:
                    continue
                sample = {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "RssAnon")}
                sample["checkpoint"] = _mapped_rss(smaps, ".safetensors")
                self.last = sample
                self.peak_rss = max(self.peak_rss, sample["VmRSS"])
                self.peak_anon = max(self.peak_anon, sample["RssAnon"])

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _mapped_rss(smaps: str, suffix: str) -> int:
    """Resident bytes of the mappings of files whose name ends with `suffix`, from /proc/<pid>/smaps."""
    total, inside = 0, False
    for line in smaps.splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):  # a mapping's header line
            inside = len(head) >= 6 and head[5].endswith(suffix)
        elif inside and line.startswith("Rss:"):
            total += int(head[1]) * 1024
    return total


def build_model(out: Path, hidden: int, layers: int) -> Path:
    from adaptune.demo.build import build_tiny_model
    from adaptune.demo.rows import corpus_text, generate_rows

    return build_tiny_model(out, corpus_text(generate_rows(400)), hidden_size=hidden, layers=layers, vocab_size=4096)


def sweep_config(
    model: Path, mode: str, steps: int, rank: int = 8, target: str = "all-linear", **train: object
) -> dict:
    return {
        "name": f"memory-{mode}",
        "model": {"path": str(model)},
        "data": {"path": str(DATA), "val_fraction": 0.05, "max_seq_length": 128},
        "lora": {"r": rank, "alpha": 2 * rank, "target_modules": target},
        "quantization": {"mode": mode},
        "train": {
            "learning_rate": 1e-3,
            "max_steps": steps,
            "micro_batch_size": 2,
            "eval_every": steps,
            "eval_batch_size": 4,
            "warmup_ratio": 0.0,
            "lr_scheduler": "constant",
            **train,
        },
    }


def loaded_bytes(model) -> dict[str, int]:
    """Bytes the loaded model holds: every parameter and buffer, and for 4-bit weights their quantization state
    (absmax, code, and the nested state of double quantization); split into the decoder's linear layers (what
    quantization touches) and the rest (embeddings, norms, LM head)."""
    import torch

    def tensor_bytes(t) -> int:
        return t.numel() * t.element_size()

    def quant_state_bytes(p) -> int:
        state, total = getattr(p, "quant_state", None), 0
        while state is not None:
            total += sum(tensor_bytes(t) for t in vars(state).values() if isinstance(t, torch.Tensor))
            state = getattr(state, "state2", None)
        return total

    out = {"linear": 0, "other": 0}
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        size = sum(tensor_bytes(t) + quant_state_bytes(t) for t in own)
        is_linear = isinstance(module, torch.nn.Linear) and not name.endswith("lm_head")
        out["linear" if is_linear else "other"] += size
    return out


def load_both_ways(model: Path, steps: int) -> dict[str, dict]:
    """Load the base the way a trial's worker does (`adaptune.model.load_base_model`) in each mode."""
    from adaptune.config import ClusterProfile, SweepConfig
    from adaptune.worker.model import load_base_model

    out = {}
    for mode in ("none", "4bit"):
        sweep = SweepConfig.model_validate(sweep_config(model, mode, steps))
        base = load_base_model(sweep, ClusterProfile())
        quantized = sum(type(m).__module__.startswith("bitsandbytes") for m in base.modules())
        out[mode] = {**loaded_bytes(base), "quantized_layers": quantized}
        if mode == "none":
            out["vocab"] = base.config.vocab_size
            out["params"] = sum(p.numel() for p in base.parameters())
            out["linear_params"] = sum(
                m.weight.numel()
                for n, m in base.named_modules()
                if type(m).__name__ == "Linear" and not n.endswith("lm_head")
            )
        del base
    return out


def trainable_by_rank(model: Path, steps: int) -> list[tuple[int, str, int, int]]:
    """(rank, target set, trainable, total) from peft's own count on the fp32 base, LoRA attached as adaptune
    attaches it."""
    from adaptune.config import ClusterProfile, SweepConfig
    from adaptune.preflight.architecture import target_modules_for
    from adaptune.worker.model import add_lora, load_base_model, trainable_parameters

    rows = []
    for target in ("attention", "all-linear"):
        modules = target_modules_for(target, str(model))
        for rank in RANKS:
            sweep = SweepConfig.model_validate(sweep_config(model, "none", steps, rank, target))
            peft_model = add_lora(load_base_model(sweep, ClusterProfile()), sweep, modules)
            rows.append((rank, target, *trainable_parameters(peft_model)))
            del peft_model
    return rows


# The methods table: what gradient checkpointing and the 8-bit optimizer save, on longer batches than the first
# table's so that activations weigh something (micro-batch 4 of rows packed to 512 tokens).
METHODS = {
    "LoRA (AdamW)": {},
    "+ gradient checkpointing": {"gradient_checkpointing": True},
    "+ 8-bit AdamW (bitsandbytes)": {"optimizer": "adamw_8bit"},
}
METHOD_BATCH = {"micro_batch_size": 4}


def run_trial(
    work: Path, model: Path, mode: str, steps: int, threads: int, name: str | None = None, **train: object
) -> dict:
    """`adaptune train` in a fresh process (its own local Ray); the worker's memory sampled meanwhile."""
    import json

    sweep = work / f"sweep-{name or mode}.yaml"
    cluster = work / "cluster.yaml"
    cfg = sweep_config(model, mode, steps, **train)
    if name:
        cfg["name"] = name
        cfg["data"].update(packing=True, max_seq_length=512)
    sweep.write_text(yaml.safe_dump(cfg))
    cluster.write_text(
        yaml.safe_dump(
            {
                "trial": {"num_workers": 1, "cpus_per_worker": threads, "max_failures": 0},
                "deepspeed": {"zero_stage": 2},
                "storage_path": str(work / "runs"),
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = time.perf_counter()
    with WorkerMemory() as sampled:
        r = subprocess.run(
            [str(ADAPTUNE), "train", str(sweep), "--cluster", str(cluster)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
        )
    wall = time.perf_counter() - started
    if r.returncode != 0:
        raise RuntimeError(f"adaptune train ({mode}) failed with {r.returncode}:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    adapter = next(line.split(None, 1)[1] for line in r.stdout.splitlines() if line.startswith("adapter "))
    state = json.loads((Path(adapter.strip()).parent / "trainer_state.json").read_text())
    last = state["history"][-1]
    return {
        "peak_memory_mb": last["peak_memory_mb"],
        "sampled_rss": sampled.peak_rss,
        "sampled_anon": sampled.peak_anon,
        "last": sampled.last,
        "step_time_s": last["step_time_s"],
        "optimizer_state_mb": last["optimizer_state_mb"],
        "trainable_params": last["trainable_params"],
        "quantized_layers": state["quantized_layers"],
        "model_load_s": state["startup"][0]["model_load_s"],
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="write the Markdown to this file instead of stdout")
    args = parser.parse_args()
    global OUT
    if args.out:
        OUT = open(args.out, "w", encoding="utf-8")  # noqa: SIM115 - open until the process ends

    work = Path(tempfile.mkdtemp(prefix="adaptune-bench-memory-"))
    model = build_model(work / "model", args.hidden, args.layers)
    loaded = load_both_ways(model, args.steps)
    ranks = trainable_by_rank(model, args.steps)
    trials = {mode: run_trial(work, model, mode, args.steps, args.threads) for mode in ("none", "4bit")}
    methods = {
        label: run_trial(work, model, "none", args.steps, args.threads, f"memory-method-{i}", **METHOD_BATCH, **train)
        for i, (label, train) in enumerate(METHODS.items())
    }

    fp32, nf4 = loaded["none"], loaded["4bit"]
    lora, qlora = trials["none"], trials["4bit"]
    params = loaded["params"]
    checkpoint = sum(f.stat().st_size for f in model.glob("*.safetensors"))
    md(
        f"## Memory: QLoRA (NF4 base) vs LoRA (fp32 base), {params / 1e6:.1f}M-parameter Llama-style model "
        f"(hidden {args.hidden}, {args.layers} layers, vocabulary {loaded['vocab']:,}; {params:,} parameters, "
        f"{loaded['linear_params']:,} of them in the decoder's linear layers; fp32 checkpoint "
        f"{checkpoint / MB:,.0f} MB)\n"
    )
    md(
        f"*`adaptune train`, 1 worker (DeepSpeed ZeRO-2, {args.threads} threads, CPU), LoRA r=8 on all linear "
        f"layers, {args.steps} steps of micro-batch 2 at max_seq_length 128; each trial in a fresh process with "
        "its own local Ray. On CPU the full-precision baseline is fp32 (adaptune's CPU default) and 4-bit matmuls "
        "compute in fp32; on a GPU the baseline would be bf16, half the fp32 figure. The worker's memory is "
        "sampled from /proc every 0.2 s.*\n"
    )
    md("| measure | LoRA, fp32 base (`quantization.mode: none`) | QLoRA, NF4 base (`mode: 4bit`) | ratio |")
    md("|---|---|---|---|")

    def row(name: str, a: float, b: float, unit: str = "MB", note: str = "") -> None:
        md(f"| {name} | {a:,.1f} {unit} | {b:,.1f} {unit} | **{b / a:.3f}**{note} |")

    row(
        "base weights of the decoder's linear layers as loaded (parameters, buffers, 4-bit quantization state)",
        fp32["linear"] / MB,
        nf4["linear"] / MB,
        note=" (target about 0.125 of fp32, 0.25 of bf16)",
    )
    row(
        "whole base model as loaded (embeddings, norms and LM head stay full precision)",
        (fp32["linear"] + fp32["other"]) / MB,
        (nf4["linear"] + nf4["other"]) / MB,
    )
    row(
        "training worker's peak RSS (the trial's `peak_memory_mb` metric: ru_maxrss)",
        lora["peak_memory_mb"],
        qlora["peak_memory_mb"],
    )
    row(
        "training worker's peak anonymous memory (heap, tensors)", lora["sampled_anon"] / MB, qlora["sampled_anon"] / MB
    )
    end_l, end_q = lora["last"], qlora["last"]
    row("training worker's RSS at the end of training", end_l["VmRSS"] / MB, end_q["VmRSS"] / MB)
    row("&nbsp;&nbsp;of it anonymous memory", end_l["RssAnon"] / MB, end_q["RssAnon"] / MB)
    row(
        "&nbsp;&nbsp;of it pages of the mapped fp32 checkpoint file",
        end_l["checkpoint"] / MB,
        end_q["checkpoint"] / MB,
    )
    row(
        "&nbsp;&nbsp;the rest (shared libraries, other files)",
        (end_l["VmRSS"] - end_l["RssAnon"] - end_l["checkpoint"]) / MB,
        (end_q["VmRSS"] - end_q["RssAnon"] - end_q["checkpoint"]) / MB,
    )
    row(f"mean step time ({args.steps} steps)", lora["step_time_s"] * 1000, qlora["step_time_s"] * 1000, unit="ms")
    row("model load in the worker", lora["model_load_s"], qlora["model_load_s"], unit="s")
    md(
        f"\nLayers held in 4-bit by the QLoRA trial: {qlora['quantized_layers']} "
        f"(the LoRA trial: {lora['quantized_layers']}); trainable parameters {lora['trainable_params']:,} in both.\n"
    )
    kept = end_q["checkpoint"] / MB
    md(
        f"What this shows on CPU: the 4-bit base weights are {nf4['linear'] / fp32['linear']:.3f} of fp32 (NF4's "
        f"eighth), yet at the end of training a QLoRA worker's resident memory is "
        f"{end_q['VmRSS'] / end_l['VmRSS']:.2f}x a LoRA worker's at this model size. A worker carries Python, "
        "torch, DeepSpeed and Ray whatever the model, and the adapter's gradients, optimizer state and "
        "activations, which QLoRA does not shrink. In fp32 mode the weights are read straight from the "
        "memory-mapped safetensors file (its resident pages are the weights). In 4-bit mode the loader reads every "
        "fp32 weight to quantize it"
        + (
            f", and the checkpoint file stays mapped after loading: {kept:,.0f} MB of its pages were still "
            "resident at the end of training, clean file pages the kernel can reclaim under memory pressure but "
            "that count in RSS"
            if kept > 1
            else ""
        )
        + (
            f". Its anonymous memory (heap and tensors) is {(end_q['RssAnon'] - end_l['RssAnon']) / MB:,.0f} MB "
            f"larger as well, of which the packed 4-bit weights are {nf4['linear'] / MB:.0f} MB; this bench does not "
            "break the rest down"
            if end_q["RssAnon"] > end_l["RssAnon"]
            else ""
        )
        + ". The saving QLoRA exists for, base weights at a quarter of bf16 in GPU memory, is the first row; on "
        "a GPU, `peak_memory_mb` reports `torch.cuda.max_memory_allocated` instead of RSS. Times were measured on "
        "a shared 2-core machine and are indicative only.\n"
    )
    md(
        "*Gradient checkpointing and the 8-bit optimizer: the same LoRA trial (fp32 base, r=8 on all linear layers, "
        f"{args.steps} steps) on micro-batches of 4 rows packed to 512 tokens, each in a fresh process.*\n"
    )
    md("| method | peak anonymous memory | step time | optimizer state (`optimizer_state_mb`) |")
    md("|---|---|---|---|")
    plain = methods["LoRA (AdamW)"]
    for label, m in methods.items():
        md(
            f"| {label} | {m['sampled_anon'] / MB:,.0f} MB ({m['sampled_anon'] / plain['sampled_anon']:.2f}x) | "
            f"{m['step_time_s'] * 1000:,.0f} ms ({m['step_time_s'] / plain['step_time_s']:.2f}x) | "
            f"{m['optimizer_state_mb']:,.2f} MB ({m['optimizer_state_mb'] / plain['optimizer_state_mb']:.2f}x) |"
        )
    md(
        "\nGradient checkpointing keeps one activation per layer and recomputes the rest in the backward pass "
        "(memory for time); 8-bit AdamW stores the two moments in 8 bits. On a GPU both matter more: activations "
        "and optimizer state are most of a LoRA trial's GPU memory beside the base weights.\n"
    )
    md(f"*Trainable parameters by LoRA rank (peft's count on this {params / 1e6:.1f}M model):*\n")
    md("| rank | target_modules | trainable parameters | share of the model |")
    md("|---|---|---|---|")
    for rank, target, trainable, total in ranks:
        md(f"| {rank} | {target} | {trainable:,} | {100 * trainable / total:.3f}% |")


if __name__ == "__main__":
    main()
