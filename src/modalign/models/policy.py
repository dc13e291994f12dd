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


def load_policy(name_or_path: str | Path, dtype: torch.dtype | None = None) -> Policy:
    """Load a policy by local folder or hub id through the real `from_pretrained` path."""
    import modalign.models.tinyvlm  # noqa: F401  (registers TinyVLM with the Auto classes)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    location = str(name_or_path)
    if Path(location).exists() and not (Path(location) / "config.json").is_file():
        raise FileNotFoundError(f"policy folder {location} has no config.json: not a saved model")
    model = AutoModelForImageTextToText.from_pretrained(location, dtype=dtype or torch.float32)
    processor = AutoProcessor.from_pretrained(location)
    return Policy(model=model, processor=processor, name=location)


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
