"""LoRA (Hu et al. 2021) through `peft` for Hugging Face policies, critics and reward models.

A LoRA policy is a folder holding a `peft` adapter (`adapter_config.json`, pointing at its
base checkpoint) and the processor: `init_lora` writes one, `load_policy` reads it, and every
recipe then trains only the adapter (`peft` freezes the base). Adapters go on the decoder's
linear layers; the media encoder stays as it is (RL freezes it anyway).

- Reference policy: `AdapterDisabled(model)`, the same weights with the adapter switched off,
  never a second copy (`modalign.models.policy.frozen_reference` picks it for LoRA models).
- Saving (`HFPolicyModel.save_pretrained`) merges the adapter into a copy and writes a plain
  `transformers` checkpoint, which loads without `peft`.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from torch import nn

ADAPTER_CONFIG = "adapter_config.json"


def is_peft(model: nn.Module) -> bool:
    if "peft" not in sys.modules:  # nothing can be a PeftModel before peft is imported (importing it takes ~0.3 s)
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


def is_lora_policy(model) -> bool:
    """True for an `HFPolicyModel` whose weights carry a `peft` adapter."""
    return is_peft(getattr(model, "model", None))


def decoder_linear_names(hf_model: nn.Module) -> list[str]:
    """Full names of the decoder's linear layers (attention and MLP projections): the LoRA targets."""
    decoder = hf_model.get_decoder()
    prefix = next(name for name, module in hf_model.named_modules() if module is decoder)
    return [f"{prefix}.{name}" for name, module in decoder.named_modules() if isinstance(module, nn.Linear)]


def add_lora(model, rank: int = 8, alpha: int = 16, dropout: float = 0.0):
    """Wrap an `HFPolicyModel`'s weights in a trainable LoRA adapter on its decoder (in place); returns it."""
    from peft import LoraConfig, get_peft_model

    if is_lora_policy(model):
        raise ValueError(f"{model.family.name} policy already carries a LoRA adapter")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=decoder_linear_names(model.hf))
    model.model = get_peft_model(model.model, config)
    return model


def init_lora(base: str | Path, out: str | Path, rank: int = 8, alpha: int = 16, dropout: float = 0.0) -> Path:
    """Write a fresh LoRA policy folder (adapter + the base's processor) that recipes take as `policy`."""
    from modalign.models.policy import load_policy

    policy = load_policy(base)
    add_lora(policy.model, rank, alpha, dropout)
    out = Path(out)
    policy.model.model.save_pretrained(out)  # adapter weights and adapter_config.json (base path inside)
    policy.processor.save_pretrained(out)
    return out


def is_adapter_folder(location: str | Path) -> bool:
    return (Path(str(location)) / ADAPTER_CONFIG).is_file()


def base_of(location: str | Path) -> str:
    """The checkpoint a LoRA folder adapts (the folder itself when it is a full checkpoint)."""
    if not is_adapter_folder(location):
        return str(location)
    from peft import PeftConfig

    base = PeftConfig.from_pretrained(str(location)).base_model_name_or_path
    if not base:
        raise ValueError(f"{location}/{ADAPTER_CONFIG} names no base_model_name_or_path")
    return base


def load_lora(location: str | Path, dtype: torch.dtype | None = None):
    """An `HFPolicyModel` from a LoRA folder: its base checkpoint, then the adapter (trainable)."""
    from peft import PeftModel

    from modalign.models.hf.modeling import HFPolicyModel

    model = HFPolicyModel.from_pretrained(base_of(location), dtype)
    model.model = PeftModel.from_pretrained(model.model, str(location), is_trainable=True)
    return model


def save_merged(model: nn.Module, path: str | Path, **kwargs) -> None:
    """Save a plain `transformers` checkpoint: LoRA weights are merged into a copy, the live model keeps its adapters.

    The copy costs one more model in memory while saving; a merged folder loads with
    `from_pretrained` alone (no `peft` needed), like any other checkpoint.
    """
    if not is_peft(model):
        model.save_pretrained(path, **kwargs)
        return
    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(path, **kwargs)


class AdapterDisabled:
    """The frozen base of a LoRA policy: calls run the policy with its adapter off, in eval mode, without grad.

    Shares every weight with the policy (no second copy), so `eval` / `train` / `requires_grad_`
    on this view leave the policy alone.
    """

    def __init__(self, policy_model) -> None:
        if not is_lora_policy(policy_model):
            raise ValueError("AdapterDisabled needs a policy that carries a LoRA adapter")
        self.policy_model = policy_model

    @property
    def generation_config(self):
        return self.policy_model.generation_config

    @property
    def device(self):
        return self.policy_model.device

    @property
    def supports_shared_prefix(self) -> bool:
        return self.policy_model.supports_shared_prefix

    def shared_prefix_positions(self, *args, **kwargs):
        return self.policy_model.shared_prefix_positions(*args, **kwargs)

    @torch.no_grad()
    def __call__(self, *args, **kwargs):
        was_training = self.policy_model.training
        self.policy_model.eval()
        try:
            with self.policy_model.model.disable_adapter():
                return self.policy_model(*args, **kwargs)
        finally:
            self.policy_model.train(was_training)

    def encode_media(self, *args, **kwargs):
        return self.policy_model.encode_media(*args, **kwargs)  # the encoder carries no adapter

    def eval(self) -> "AdapterDisabled":
        return self

    def train(self, mode: bool = True) -> "AdapterDisabled":
        return self

    def requires_grad_(self, requires_grad: bool = True) -> "AdapterDisabled":
        return self
