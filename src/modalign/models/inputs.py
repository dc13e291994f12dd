"""From `Example` records to model tensors, for any policy's processor.

Media files are read and validated once per path (`MediaStore`), prompts are rendered
with the processor's chat template, and SFT examples are tokenized once up front.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from modalign.data.records import Example


class MediaStore:
    """Loads (and validates) each media file once; later requests are served from memory."""

    def __init__(self, root: str | Path, sample_rate: int = 16000, max_audio_seconds: float = 60.0) -> None:
        self.root, self.sample_rate, self.max_audio_seconds = Path(root), sample_rate, max_audio_seconds
        self._cache: dict[str, Any] = {}

    def images(self, example: Example) -> list[Any]:
        from modalign.data.media import load_image

        return [self._get(ref.path, lambda r=ref: load_image(r, self.root, example.id)) for ref in example.media_of("image")]

    def audio(self, example: Example) -> list[np.ndarray]:
        from modalign.data.media import load_audio

        def load(ref):
            return load_audio(ref, self.root, example.id, sample_rate=self.sample_rate, max_seconds=self.max_audio_seconds)

        return [self._get(ref.path, lambda r=ref: load(r)) for ref in example.media_of("audio")]

    def _get(self, key: str, load):
        if key not in self._cache:
            self._cache[key] = load()
        return self._cache[key]


def render_prompt(processor, example: Example) -> str:
    """The prompt text (with one marker per media item) ending with the assistant cue."""
    return processor.apply_chat_template(list(example.prompt_messages), add_generation_prompt=True, tokenize=False)


def eos_text(processor) -> str:
    return processor.tokenizer.eos_token


def prompt_batch(processor, media: MediaStore, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
    """Left-padded prompts with their media, ready for `generate`."""
    images = [image for example in examples for image in media.images(example)]
    audio = [clip for example in examples for clip in media.audio(example)]
    texts = [render_prompt(processor, example) for example in examples]
    return dict(processor(text=texts, images=images or None, audio=audio or None, padding_side="left"))


@dataclass(frozen=True)
class EncodedExample:
    """One tokenized SFT example.

    input_ids: (L,) prompt, answer and end-of-turn token
    prompt_length: tokens of the prompt (not trained on)
    pixel_values: (N_img, 3, H, W) or None; input_values: (N_aud, S) or None
    """

    example_id: str
    input_ids: torch.Tensor
    prompt_length: int
    pixel_values: torch.Tensor | None
    input_values: torch.Tensor | None


def encode_sft_example(
    processor, media: MediaStore, example: Example, max_length: int, answer: str | None = None
) -> EncodedExample:
    """Tokenize prompt + answer (default: the reference); too long a sequence loses answer tokens, never media."""
    answer = example.answer if answer is None else answer
    if answer is None:
        raise ValueError(f"record {example.id!r}: SFT needs a final assistant message (the target answer)")
    images, audio = media.images(example), media.audio(example)
    target = answer + eos_text(processor)
    prompt = render_prompt(processor, example)
    full = processor(text=[prompt + target], images=images or None, audio=audio or None)
    input_ids = full["input_ids"][0]
    prompt_length = input_ids.shape[0] - answer_token_count(processor.tokenizer, prompt, target)
    if prompt_length >= max_length:
        raise ValueError(
            f"record {example.id!r}: the prompt alone takes {prompt_length} tokens (media included), "
            f"max_length is {max_length}; media tokens are never truncated"
        )
    return EncodedExample(
        example_id=example.id,
        input_ids=input_ids[:max_length],
        prompt_length=prompt_length,
        pixel_values=full.get("pixel_values"),
        input_values=full.get("input_values"),
    )


def answer_token_count(tokenizer, prompt: str, answer: str) -> int:
    """Tokens the answer adds after the prompt, counted in context (text only, media markers unexpanded).

    Counting the answer alone would be wrong for sentencepiece-style tokenizers (Llama, Gemma):
    they give a text's first word a word-start marker that the same word does not get after the prompt.
    """
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return count(prompt + answer) - count(prompt)


def collate_sft(batch: Sequence[EncodedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch with labels = -100 on prompt and padding."""
    longest = max(item.input_ids.shape[0] for item in batch)
    input_ids = torch.full((len(batch), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
    labels = torch.full((len(batch), longest), -100, dtype=torch.long)
    for row, item in enumerate(batch):
        length = item.input_ids.shape[0]
        input_ids[row, :length] = item.input_ids
        attention_mask[row, :length] = 1
        labels[row, item.prompt_length : length] = item.input_ids[item.prompt_length :]
    out = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    for key in ("pixel_values", "input_values"):
        parts = [getattr(item, key) for item in batch if getattr(item, key) is not None]
        if parts:
            out[key] = torch.cat(parts)
    return out
