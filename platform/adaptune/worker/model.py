"""The base model and its LoRA adapter: loading (optionally 4-/8-bit with bitsandbytes), attaching LoRA
with peft, and saving/loading adapter-only safetensors. Imports torch, transformers and peft."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from adaptune.config import (
    ClusterProfile,
    SweepConfig,
    TrainConfig,
    model_source,
    resolve_compute_dtype,
    resolve_precision,
    resolve_quant_storage,
)
from adaptune.worker.deepspeed_config import client_optimizer

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "uint8": torch.uint8}


def quantization_config(sweep: SweepConfig, cluster: ClusterProfile) -> Any | None:
    """The bitsandbytes config for QLoRA / 8-bit, or None."""
    from transformers import BitsAndBytesConfig

    q = sweep.quantization
    if q.mode == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=q.quant_type,
            bnb_4bit_use_double_quant=q.double_quant,
            bnb_4bit_compute_dtype=DTYPES[resolve_compute_dtype(sweep, cluster)],
            bnb_4bit_quant_storage=DTYPES[resolve_quant_storage(sweep, cluster)],
        )
    if q.mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_base_model(sweep: SweepConfig, cluster: ClusterProfile, device: torch.device | None = None) -> Any:
    """The frozen base model in the training precision, quantized if configured.

    Under ZeRO-3 no device map is given: transformers then builds the model under `deepspeed.zero.Init`
    (the caller keeps an `HfDeepSpeedConfig` alive), so each rank holds only its shard.
    """
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {
        "dtype": DTYPES[resolve_precision(sweep, cluster)],
        "trust_remote_code": sweep.model.trust_remote_code,
        "revision": sweep.model.revision,
        "use_safetensors": True,
        "attn_implementation": sweep.train.attention,
    }
    qcfg = quantization_config(sweep, cluster)
    if qcfg is not None:
        kwargs["quantization_config"] = qcfg
        if cluster.deepspeed.zero_stage != 3:
            kwargs["device_map"] = {"": str(device or "cpu")}
    model = AutoModelForCausalLM.from_pretrained(model_source(sweep.model.path), **kwargs)
    model.config.use_cache = False
    if qcfg is not None:
        keep_4bit_weights_exact(model)
    return model


def keep_4bit_weights_exact(model: Any) -> Any:
    """Turn off bitsandbytes' CPU inference repacking of 4-bit weights.

    On CPUs with AVX512-BF16, a `Linear4bit`'s first forward in eval mode converts its NF4 weight, in place,
    into a packed format for a bf16 kernel (bitsandbytes >= 0.48): its outputs move by about 3e-2 against the
    fp32 dequantize-and-matmul that training uses, and after an evaluation the trial would go on training on
    top of the repacked weights (which a plain peft reload never reproduces). With it off, evaluation, the probe
    and a reload all compute what training computes. GPUs never take that path."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def remote_code_refusal(source: str, revision: str | None = None) -> str | None:
    """Which part of the model at `source` ("model" or "tokenizer") transformers will not load without running
    the Python code the model ships, or None when both load with transformers' own classes. Asked with
    trust_remote_code=False, so none of that code is imported to find out."""
    from transformers import AutoConfig, AutoTokenizer

    for part, load in (("model", AutoConfig.from_pretrained), ("tokenizer", AutoTokenizer.from_pretrained)):
        try:
            load(source, trust_remote_code=False, revision=revision)
        except ValueError as e:
            if "trust_remote_code" in str(e):
                return part
        except OSError:
            pass  # a missing tokenizer is reported on its own
    return None


# lora.init -> peft's init_lora_weights. loftq starts from peft's default and is then replaced (`add_lora`);
# eva is computed on training batches after the model is built (`initialize_eva`).
PEFT_INIT = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora", "loftq": True, "eva": "eva"}


def add_lora(model: Any, sweep: SweepConfig, target_modules: list[str], patterns: dict[str, dict] | None = None) -> Any:
    """Freeze the base and attach a LoRA adapter (DoRA, rsLoRA and the initialisation as configured); returns
    the peft model. `patterns`: an eva adapter's `rank_pattern` and `alpha_pattern` (its ranks and scales per
    layer), when resuming one (its A and B are then loaded, not computed again)."""
    from peft import EvaConfig, LoraConfig, get_peft_model

    for p in model.parameters():
        p.requires_grad_(False)
    if sweep.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = sweep.lora
    init = PEFT_INIT[lora.init] if patterns is None else True
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=target_modules,
        bias=lora.bias,
        task_type="CAUSAL_LM",
        use_dora=lora.use_dora,
        use_rslora=lora.use_rslora,
        init_lora_weights=init,
        rank_pattern=(patterns or {}).get("rank_pattern") or {},
        alpha_pattern=(patterns or {}).get("alpha_pattern") or {},
        **({"eva_config": EvaConfig()} if init == "eva" else {}),
    )
    peft_model = get_peft_model(model, config, low_cpu_mem_usage=init == "eva")
    if lora.init == "loftq":
        from peft import replace_lora_weights_loftq

        source = model_source(sweep.model.path)
        replace_lora_weights_loftq(peft_model, model_path=source if Path(source).is_dir() else None)
    return peft_model


def initialize_eva(peft_model: Any, batches: Any) -> None:
    """eva: A from the top singular vectors of each adapted layer's inputs on training batches, the ranks
    redistributed across layers by explained variance (peft's; every rank gathers all ranks' inputs, so all
    compute the same adapter)."""
    from peft import initialize_lora_eva_weights

    initialize_lora_eva_weights(peft_model, dataloader=batches)


def plain_lora(
    peft_model: Any, state_dict: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]
) -> tuple[Any, dict[str, torch.Tensor]]:
    """A pissa/olora adapter as a plain LoRA on the unchanged base: those initialisations take B0 A0 out of the
    base weights (W = W_res + B0 A0) and train B A on W_res, so the trained model is W + (B A - B0 A0), which
    is the LoRA [B | -B0] [A ; A0] of rank 2r with the same scale (peft's own conversion, `subtract_mutated_init`,
    done on state dicts: it would otherwise load the initial adapter into the model being trained). Returns
    the adapter config and weights to save."""
    config = copy.deepcopy(peft_model.peft_config["default"])
    config.init_lora_weights = True
    config.r *= 2
    config.lora_alpha *= 2**0.5 if config.use_rslora else 2  # alpha / r (or / sqrt(r)) stays the same
    weights = {}
    for name, tensor in state_dict.items():
        if "lora_A" in name:
            weights[name] = torch.cat([tensor, initial[name]], dim=0)
        elif "lora_B" in name:
            weights[name] = torch.cat([tensor, -initial[name]], dim=1)
        else:
            weights[name] = tensor
    return config, weights


def build_optimizer(peft_model: Any, t: TrainConfig) -> Any | None:
    """The optimizer a trial hands DeepSpeed, or None for DeepSpeed's own AdamW (`client_optimizer`): the
    bitsandbytes 8-bit and paged AdamW, and LoRA+'s parameter groups (peft's `create_loraplus_optimizer`: B
    matrices, and one-dimensional weights like DoRA's magnitudes, at `loraplus_lr_ratio` x the rate). Groups
    that come out empty are left out (ZeRO cannot flatten an empty group)."""
    if not client_optimizer(t):
        return None
    if t.optimizer == "adamw":
        cls: Any = torch.optim.AdamW
    else:
        import bitsandbytes as bnb

        cls = {
            "adamw_8bit": bnb.optim.AdamW8bit,
            "paged_adamw": bnb.optim.PagedAdamW,
            "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
        }[t.optimizer]
    settings = {"betas": (0.9, 0.999), "eps": 1e-8}
    if t.loraplus_lr_ratio is None:
        params = [p for p in peft_model.parameters() if p.requires_grad]
        return cls(params, lr=t.learning_rate, weight_decay=t.weight_decay, **settings)
    from peft.optimizers import create_loraplus_optimizer

    grouped = create_loraplus_optimizer(
        peft_model,
        torch.optim.SGD,  # only to build the groups; the real optimizer is made from them below
        lr=t.learning_rate,
        loraplus_lr_ratio=t.loraplus_lr_ratio,
        loraplus_weight_decay=t.weight_decay,
    )
    keep = ("params", "lr", "weight_decay")
    groups = [{k: g[k] for k in keep} for g in grouped.param_groups if g["params"]]
    return cls(groups, lr=t.learning_rate, **settings)


def optimizer_state_mb(optimizer: Any) -> float:
    """MiB of optimizer state this rank holds (under ZeRO its partition; 8-bit states count at their size)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # DeepSpeed's ZeRO optimizers wrap the torch one
    tensors = [v for state in inner.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    return sum(v.numel() * v.element_size() for v in tensors) / 2**20


def trainable_parameters(peft_model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts, counting 4-bit weights at their real size."""
    return peft_model.get_nb_trainable_parameters()


def save_adapter(
    peft_model: Any,
    directory: Path,
    state_dict: dict[str, torch.Tensor],
    initial: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write adapter_config.json + adapter_model.safetensors only (never the base weights). `initial`: a
    pissa/olora adapter's initial weights, to save it as the plain LoRA on the unchanged base (`plain_lora`)."""
    if initial is None:
        peft_model.save_pretrained(str(directory), state_dict=state_dict, safe_serialization=True)
        return
    config, weights = plain_lora(peft_model, state_dict, initial)
    peft_model.save_pretrained(str(directory), state_dict=weights, safe_serialization=True)
    config.save_pretrained(str(directory))  # over the config peft wrote: rank 2r, plain init


def load_adapter_weights(peft_model: Any, weights: Path) -> None:
    """Load saved adapter weights (a safetensors file) into an already-built peft model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(peft_model, load_file(str(weights)))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise RuntimeError(f"adapter {weights} does not fit this model: unexpected {unexpected[:3]}")
