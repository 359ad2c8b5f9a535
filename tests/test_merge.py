"""Merging a LoRA adapter into its base: real peft adapters (fp32 and QLoRA-trained) on the tiny model, merged,
reloaded from disk and compared with base + adapter; bad inputs give one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from adaptune.errors import ConfigError
from adaptune.merge import MergeMismatch, merge_adapter

pytestmark = pytest.mark.unit

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
PROMPT = "Question: How do I reset my password?\nAnswer:"


def _save_adapter(model, out: Path) -> Path:
    """Attach LoRA to `model`, give lora_B clearly non-zero values (a fresh adapter is a no-op), save it."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=ATTENTION, lora_dropout=0.0, task_type="CAUSAL_LM")
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    peft_model.save_pretrained(str(out), safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory) -> Path:
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    return _save_adapter(model, tmp_path_factory.mktemp("lora") / "adapter")


def _logits(model_dir: Path) -> torch.Tensor:
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        return model(**tok(PROMPT, return_tensors="pt")).logits


def test_merged_model_reloads_and_reproduces_base_plus_adapter(tiny_model, adapter, tmp_path):
    out = tmp_path / "merged"
    report = merge_adapter(adapter, str(tiny_model), out)

    assert report.out_dir == str(out) and report.prompts == 3
    assert report.max_abs_diff <= report.tolerance == 1e-3
    print(f"fp32 adapter: max_abs_diff={report.max_abs_diff:.3g}")
    # The adapter really is in the weights: the merged model is far from the base.
    assert (_logits(out) - _logits(tiny_model)).abs().max().item() > 100 * report.tolerance
    files = sorted(p.name for p in out.iterdir())
    weights = [f for f in files if f.endswith((".safetensors", ".bin", ".pt", ".pth"))]
    assert weights and all(f.endswith(".safetensors") for f in weights), files
    assert "tokenizer.json" in files and "adapter_config.json" not in files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging directory left behind


def test_qlora_adapter_merges_into_the_fp32_base(tiny_model, tmp_path):
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model_4bit = AutoModelForCausalLM.from_pretrained(
        str(tiny_model), quantization_config=quant, device_map={"": "cpu"}
    )
    assert model_4bit.model.layers[0].self_attn.q_proj.weight.dtype == torch.uint8  # really 4-bit
    adapter = _save_adapter(model_4bit, tmp_path / "qlora-adapter")

    report = merge_adapter(adapter, str(tiny_model), tmp_path / "merged")

    print(f"QLoRA adapter: max_abs_diff={report.max_abs_diff:.3g}")
    assert report.max_abs_diff <= report.tolerance
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    assert getattr(merged.config, "quantization_config", None) is None
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    assert (_logits(tmp_path / "merged") - _logits(tiny_model)).abs().max().item() > 100 * report.tolerance


def test_non_empty_output_is_refused_unless_overwrite(tiny_model, adapter, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "pytorch_model.bin").write_bytes(b"stale")

    with pytest.raises(ConfigError, match="output directory is not empty") as info:
        merge_adapter(adapter, str(tiny_model), out)
    assert (
        len(str(info.value).splitlines()) == 1 and str(out) in str(info.value) and "overwrite=True" in str(info.value)
    )

    merge_adapter(adapter, str(tiny_model), out, overwrite=True)
    assert not (out / "pytorch_model.bin").exists()  # replaced, not written over


def test_bad_inputs_give_one_line_errors(tiny_model, adapter, tmp_path):
    cases = {
        tmp_path / "nope": "adapter directory not found",
        tiny_model: "not a LoRA adapter: no adapter_config.json",
    }
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (pickled / "adapter_model.bin").write_bytes(b"not loaded")
    cases[pickled] = "only pickled weights .adapter_model.bin., which are never loaded"
    for bad, message in cases.items():
        with pytest.raises(ConfigError, match=message) as info:
            merge_adapter(bad, str(tiny_model), tmp_path / "out")
        assert len(str(info.value).splitlines()) == 1 and str(bad) in str(info.value)
    with pytest.raises(ConfigError, match="base model directory not found. Did you mean") as info:
        merge_adapter(adapter, str(tiny_model) + "x", tmp_path / "out")
    assert len(str(info.value).splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_adapter_for_another_model_is_a_config_error(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    narrower = LlamaForCausalLM(
        LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, vocab_size=128)
    )
    get_peft_model(narrower, LoraConfig(r=4, target_modules=ATTENTION)).save_pretrained(str(tmp_path / "other"))

    with pytest.raises(ConfigError, match="adapter does not fit base model .*size mismatch") as info:
        merge_adapter(tmp_path / "other", str(tiny_model), tmp_path / "out")
    assert len(str(info.value).splitlines()) == 1


def test_adapter_weights_the_model_does_not_take_are_a_config_error(tiny_model, adapter, tmp_path):
    # peft silently ignores saved weights that match no module; merging without them is not the trained adapter.
    from safetensors.torch import load_file, save_file

    extra = tmp_path / "extra"
    shutil.copytree(adapter, extra)
    weights = load_file(str(extra / "adapter_model.safetensors"))
    key = next(k for k in weights if ".layers.1." in k)
    weights[key.replace(".layers.1.", ".layers.7.")] = weights[key].clone()
    save_file(weights, str(extra / "adapter_model.safetensors"))

    with pytest.raises(ConfigError, match=r"1 saved weights unused .*layers\.7") as info:
        merge_adapter(extra, str(tiny_model), tmp_path / "out")
    assert len(str(info.value).splitlines()) == 1


def test_mismatch_error_names_both_numbers_and_pickles():
    import pickle

    err = pickle.loads(pickle.dumps(MergeMismatch(0.25, 1e-3)))
    assert (err.max_abs_diff, err.tolerance) == (0.25, 1e-3)
    assert "0.25" in str(err) and "0.001" in str(err)
