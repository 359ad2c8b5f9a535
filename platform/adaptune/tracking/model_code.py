"""The MLflow pyfunc of an adaptune model: prompts in, generated text out.

Logged as "models from code": MLflow stores this file and runs it when the model is loaded, so nothing is
ever unpickled, and weights are safetensors only. The same code serves two kinds of models:

- an adapter (artifact `adapter`): the base model named in the model config (not copied into the run) with
  the LoRA adapter applied;
- a merged model (artifact `model`): a standalone causal LM directory.

The file imports only MLflow at the top; torch, transformers and peft load with the model.
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

DEFAULT_MAX_NEW_TOKENS = 64


class CausalLMText(PythonModel):
    """Greedy generation from a causal LM (optionally with a LoRA adapter)."""

    def load_context(self, context: Any) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cfg = context.model_config or {}
        artifacts = context.artifacts
        # Always a bool: transformers asks on the terminal whether to run a model's code when given None.
        trust = bool(cfg.get("trust_remote_code", False))
        common = {"trust_remote_code": trust, "use_safetensors": True}
        if "model" in artifacts:
            path = artifacts["model"]
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **common)
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
        else:
            from pathlib import Path

            from peft import PeftModel

            if not (Path(artifacts["adapter"]) / "adapter_model.safetensors").is_file():
                # peft would fall back to unpickling adapter_model.bin
                raise FileNotFoundError(f"no adapter_model.safetensors in {artifacts['adapter']} (pickles never load)")
            base = AutoModelForCausalLM.from_pretrained(
                cfg["base_model"], revision=cfg.get("revision"), dtype=torch.float32, **common
            )
            self.model = PeftModel.from_pretrained(base, artifacts["adapter"])
            self.tokenizer = AutoTokenizer.from_pretrained(
                cfg["base_model"], revision=cfg.get("revision"), trust_remote_code=trust
            )
        self.model.eval()

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> list[str]:
        import torch

        max_new = int((params or {}).get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = []
        for prompt in _prompts(model_input):
            ids = self.tokenizer(prompt, return_tensors="pt")
            with torch.no_grad():
                generated = self.model.generate(**ids, max_new_tokens=max_new, do_sample=False, pad_token_id=pad)
            out.append(self.tokenizer.decode(generated[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
        return out


def _prompts(model_input: Any) -> list[str]:
    """Prompts from a string, a list of strings, or a DataFrame (its `prompt` column, else its first)."""
    if isinstance(model_input, str):
        return [model_input]
    if hasattr(model_input, "columns"):
        column = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
        return [str(x) for x in model_input[column]]
    return [str(x) for x in model_input]


mlflow.models.set_model(CausalLMText())
