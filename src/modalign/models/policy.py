"""Loading and creating policies behind one interface.

A policy is a `transformers` model plus its processor. Recipes only call what every
family offers: the processor (chat template, `__call__` with images/audio), the model's
`forward(input_ids, attention_mask, pixel_values | media, labels)`, `generate`, and
`save_pretrained`. The built-in VLM is registered with the Auto classes, so a saved
TinyVLM folder and a Hugging Face VLM load through the same `from_pretrained` call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

LORA_CONFIG = "adapter_config.json"  # a `peft` adapter folder: LoRA weights over a base checkpoint


@dataclass
class Policy:
    """A model and its processor, saved and loaded together."""

    model: Any
    processor: Any
    name: str = ""

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)
        return path

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def load_policy(name_or_path: str | Path, dtype: torch.dtype | None = None, chat_template: str | None = None) -> Policy:
    """Load a policy by local folder or hub id through the real `from_pretrained` path.

    The built-in VLM loads through the Auto classes; every other model type, and a LoRA
    folder (`adapter_config.json`), goes through the Hugging Face adapter (`modalign.models.hf`),
    which gives it the same interface. `chat_template` (Jinja) replaces a Hugging Face folder's own
    (for a checkpoint that has none; saving the policy keeps it).
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    location = str(name_or_path)
    if Path(location).exists() and not any((Path(location) / name).is_file() for name in ("config.json", LORA_CONFIG)):
        raise FileNotFoundError(f"policy folder {location} has no config.json: not a saved model")
    if not _is_builtin(location):
        from modalign.models.hf import load_hf_policy

        return load_hf_policy(location, dtype, chat_template)
    from modalign.models.hf.modeling import NO_HUB_KERNELS

    model = AutoModelForImageTextToText.from_pretrained(location, dtype=dtype or torch.float32, **NO_HUB_KERNELS)
    processor = AutoProcessor.from_pretrained(location)
    if chat_template:
        processor.chat_template = chat_template
    return Policy(model=model, processor=processor, name=location)


def load_processor(name_or_path: str | Path):
    """The processor of a saved policy, reward model or critic, as `load_policy` gives it (no weights loaded)."""
    from transformers import AutoProcessor

    location = str(name_or_path)
    if _is_builtin(location):
        return AutoProcessor.from_pretrained(location)
    from modalign.models.hf import load_hf_processor

    return load_hf_processor(location)


def frozen_reference(model: Any) -> Any:
    """The KL reference of a policy about to be trained: a frozen copy, or for a LoRA policy its own
    weights with the adapter disabled (no second copy)."""
    import copy

    from modalign.models.hf.lora import AdapterDisabled, is_lora_policy

    if is_lora_policy(model):
        return AdapterDisabled(model)
    return copy.deepcopy(model).eval().requires_grad_(False)


def kl_reference(model: Any, location: str = "", device: Any = None) -> Any:
    """The frozen KL reference of `model`, the policy about to be trained: the saved policy at `location`
    (e.g. SFT when a later round starts from the last policy; on `device`), or `frozen_reference(model)`
    when `location` is empty. A reference whose vocabulary size differs from the policy's is refused: the KL
    compares the two models' log-probabilities of the policy's tokens, so both must share its tokenizer."""
    if not location:
        return frozen_reference(model)
    from modalign.errors import UserError
    from modalign.models.shared_prefix import text_config_int
    from modalign.validate import load_checked_policy

    reference = load_checked_policy(location, "reference").model.to(device)
    sizes = [text_config_int(m, "vocab_size") for m in (model, reference)]
    if None not in sizes and sizes[0] != sizes[1]:
        raise UserError(f"reference {location!r}: its vocabulary has {sizes[1]} tokens, the policy's {sizes[0]}; "
                        "the KL needs a reference with the policy's tokenizer")
    return reference.eval().requires_grad_(False)


def _is_builtin(location: str) -> bool:
    """True for a saved built-in VLM; False for other model types and for LoRA folders."""
    import modalign.models.tinyvlm  # noqa: F401  (registers TinyVLM with the Auto classes)
    from transformers import AutoConfig

    if (Path(location) / LORA_CONFIG).is_file():
        return False
    return AutoConfig.from_pretrained(location).model_type == "tinyvlm"


def create_tinyvlm(corpus: Iterable[str], vocab_size: int = 512, seed: int = 0, **config_fields: Any) -> Policy:
    """A fresh built-in VLM whose tokenizer is trained on `corpus`."""
    from modalign.models.tinyvlm import TinyVLMConfig, TinyVLMForConditionalGeneration, build_processor, build_tokenizer

    tokenizer = build_tokenizer(corpus, vocab_size=vocab_size)
    special = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "image_token_id": tokenizer.convert_tokens_to_ids("<image>"),
        "audio_token_id": tokenizer.convert_tokens_to_ids("<audio>"),
    }
    config = TinyVLMConfig(vocab_size=len(tokenizer), **special, **config_fields)
    torch.manual_seed(seed)
    model = TinyVLMForConditionalGeneration(config)
    return Policy(model=model, processor=build_processor(tokenizer, config), name="tinyvlm")
