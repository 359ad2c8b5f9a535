"""The base model and its LoRA adapter: loading (optionally 4-/8-bit with bitsandbytes), attaching LoRA
with peft, and saving/loading adapter-only safetensors. Imports torch, transformers and peft."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from adaptune.config import (
    ClusterProfile,
    SweepConfig,
    model_source,
    resolve_compute_dtype,
    resolve_precision,
    resolve_quant_storage,
)
from adaptune.names import ADAPTER_WEIGHTS

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


def add_lora(model: Any, sweep: SweepConfig, target_modules: list[str]) -> Any:
    """Freeze the base and attach a LoRA adapter; returns the peft model."""
    from peft import LoraConfig, get_peft_model

    for p in model.parameters():
        p.requires_grad_(False)
    if sweep.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = sweep.lora
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=target_modules,
        bias=lora.bias,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def trainable_parameters(peft_model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts, counting 4-bit weights at their real size."""
    return peft_model.get_nb_trainable_parameters()


def save_adapter(peft_model: Any, directory: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """Write adapter_config.json + adapter_model.safetensors only (never the base weights)."""
    peft_model.save_pretrained(str(directory), state_dict=state_dict, safe_serialization=True)


def load_adapter_weights(peft_model: Any, directory: Path) -> None:
    """Load saved adapter weights (safetensors) into an already-built peft model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(peft_model, load_file(str(directory / ADAPTER_WEIGHTS)))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise RuntimeError(f"adapter in {directory} does not fit this model: unexpected {unexpected[:3]}")
