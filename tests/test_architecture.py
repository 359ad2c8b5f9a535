"""LoRA target-module resolution per architecture, checked against the real layers peft attaches to."""

from __future__ import annotations

import pytest

from adaptune.demo.build import build_tiny_model
from adaptune.preflight.architecture import ArchitectureError, linear_layers, read_model_type, resolve_target_modules

pytestmark = pytest.mark.unit

CORPUS = ["the router has four ports", "reset it with a paperclip", "warranty lasts two years"] * 20

# What each named set must turn into, per architecture.
EXPECTED = {
    "llama": {"attention": ["q_proj", "k_proj", "v_proj", "o_proj"], "mlp": ["gate_proj", "up_proj", "down_proj"]},
    "qwen2": {"attention": ["q_proj", "k_proj", "v_proj", "o_proj"], "mlp": ["gate_proj", "up_proj", "down_proj"]},
    "gpt2": {"attention": ["attn.c_attn", "attn.c_proj"], "mlp": ["mlp.c_fc", "mlp.c_proj"]},
    "gpt_neox": {
        "attention": ["attention.query_key_value", "attention.dense"],
        "mlp": ["mlp.dense_h_to_4h", "mlp.dense_4h_to_h"],
    },
}


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def arch_model(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    build_tiny_model(d, CORPUS, arch=request.param, hidden_size=32, vocab_size=300)
    return request.param, d


def test_named_sets_resolve_to_real_layers(arch_model):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    arch, d = arch_model
    assert read_model_type(d) == arch
    layers = linear_layers(d)
    for name, expected in EXPECTED[arch].items():
        targets = resolve_target_modules(name, arch, layers)
        assert targets == expected
        model = AutoModelForCausalLM.from_pretrained(str(d))
        peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=targets))
        adapted = {
            n.rsplit(".lora_A", 1)[0].removeprefix("base_model.model.")
            for n, _ in peft_model.named_parameters()
            if ".lora_A." in n
        }
        # Exactly the layers of that set in every block, and nothing else (GPT-2's shared c_proj name too).
        assert adapted == {m for m in layers if any(m.endswith("." + t) for t in expected)}
        assert len(adapted) == len(expected) * 2  # two blocks
        with torch.no_grad():
            peft_model(input_ids=torch.tensor([[1, 2, 3]]))
    all_linear = resolve_target_modules("all-linear", arch, layers)
    assert set(all_linear) == {m.rsplit(".", 1)[-1] for m in layers}
    assert not any("embed" in m or "lm_head" in m or "wte" in m for m in layers)


def test_missing_targets_list_what_exists(arch_model):
    arch, d = arch_model
    with pytest.raises(ArchitectureError, match=r"nonexistent not found in this .* model; its linear layers are: "):
        resolve_target_modules(["nonexistent"], arch, linear_layers(d))


def test_unknown_architecture_asks_for_a_list():
    with pytest.raises(ArchitectureError, match=r"no named target sets for model type 'mamba'.*explicit list.*: a.x"):
        resolve_target_modules("attention", "mamba", ["model.a.x"])


def test_packed_examples_see_only_themselves_in_every_resolved_architecture(arch_model):
    """A packed row (`data.packing`) gives each example the logits it has alone, under sdpa and eager
    attention, for every architecture whose target sets adaptune resolves; without the boundaries it does not."""
    import torch
    from transformers import AutoModelForCausalLM

    from adaptune.worker.train_loop import collate

    _, model_dir = arch_model
    a, b = torch.randint(5, 290, (7,)).tolist(), torch.randint(5, 290, (5,)).tolist()
    cpu = torch.device("cpu")
    for attention in ("sdpa", "eager"):
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation=attention).eval()
        with torch.no_grad():
            alone = [model(input_ids=torch.tensor([x])).logits[0] for x in (a, b)]
            packed = collate({"input_ids": [a + b], "labels": [[]], "lengths": [[7, 5]]}, 0, cpu).inputs
            together = model(**{**packed, "labels": None}).logits[0]
            joined = model(input_ids=torch.tensor([a + b])).logits[0]
        assert torch.allclose(together, torch.cat(alone), atol=1e-5), attention
        assert not torch.allclose(joined[7:], alone[1], atol=1e-3), attention


def test_an_attention_implementation_the_model_class_lacks_is_refused(tmp_path):
    from adaptune.config import SweepConfig
    from adaptune.preflight.validate import attention_problems

    (tmp_path / "config.json").write_text('{"model_type": "gemma2"}')  # transformers has no sdpa for Gemma 2
    sweep = SweepConfig.model_validate({"name": "t", "model": {"path": str(tmp_path)}, "data": {"path": "d"}})
    (problem,) = attention_problems(sweep, "sweep.yaml")
    assert problem.key == "train.attention" and "Gemma2ForCausalLM (gemma2) has no sdpa attention" in problem.message
    assert problem.fix == "Use train.attention=eager"
    eager = sweep.model_copy(update={"train": sweep.train.model_copy(update={"attention": "eager"})})
    assert attention_problems(eager, "sweep.yaml") == []
