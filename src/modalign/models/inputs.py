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

from modalign.data.records import Example, RecordError
from modalign.device import to_device
from modalign.models.hf.media import concat_media


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

    def _get(self, key, load):
        if key not in self._cache:
            self._cache[key] = load()
        return self._cache[key]


def render_prompt(processor, example: Example) -> str:
    """The prompt text (with one marker per media item) ending with the assistant cue."""
    return processor.apply_chat_template(list(example.prompt_messages), add_generation_prompt=True, tokenize=False)


def eos_text(processor) -> str:
    return processor.tokenizer.eos_token


def prompt_batch(processor, media: MediaStore, examples: Sequence[Example],
                 device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Left-padded prompts with their media, ready for `generate`, on `device` (the generating model's)."""
    images = [image for example in examples for image in media.images(example)]
    audio = [clip for example in examples for clip in media.audio(example)]
    texts = [render_prompt(processor, example) for example in examples]
    return to_device(dict(processor(text=texts, images=images or None, audio=audio or None, padding_side="left")),
                     device)


@dataclass(frozen=True)
class EncodedExample:
    """One tokenized SFT example.

    input_ids: (L,) prompt, answer and end-of-turn token (what a processor appends after the
        text is cut off: it is never trained on, and nothing before it reads it)
    prompt_length: tokens of the prompt (not trained on)
    pixel_values / input_values: the processor's media of the example (a tensor, a generic
        model's `ProcessorMedia`) or None
    """

    example_id: str
    input_ids: torch.Tensor
    prompt_length: int
    pixel_values: Any
    input_values: Any


def encode_sft_example(
    processor, media: MediaStore, example: Example, max_length: int, answer: str | None = None
) -> EncodedExample:
    """Tokenize prompt + answer (default: the reference); too long a sequence loses answer tokens, never media."""
    answer = example.answer if answer is None else answer
    if answer is None:
        raise RecordError(f"record {example.id!r}: SFT needs a final assistant message in 'messages' "
                          "(the target answer)")
    images, audio = media.images(example), media.audio(example)
    prompt = render_prompt(processor, example)
    full = processor(text=[prompt + answer + eos_text(processor)], images=images or None, audio=audio or None)
    paths = tuple(ref.path for ref in example.media)
    alone = media._get((processor, prompt, paths),  # once per prompt (DPO / reward pairs share it), media included
                       lambda: processor(text=[prompt], images=images or None, audio=audio or None)["input_ids"][0])
    prompt_length, end = answer_span(alone, full["input_ids"][0])
    input_ids = full["input_ids"][0][:end]
    if prompt_length >= max_length:
        raise RecordError(
            f"record {example.id!r}: the prompt alone takes {prompt_length} tokens ('messages' and its media), "
            f"max_length is {max_length}: media tokens are never cut, so raise max_length or shorten the prompt"
        )
    return EncodedExample(
        example_id=example.id,
        input_ids=input_ids[:max_length],
        prompt_length=prompt_length,
        pixel_values=full.get("pixel_values"),
        input_values=full.get("input_values"),
    )


def answer_span(prompt_ids: torch.Tensor, full_ids: torch.Tensor) -> tuple[int, int]:
    """[start, end) of the answer in `full_ids` (L,), the processor's output for prompt + answer + end-of-turn,
    given `prompt_ids` (P,), its output for the prompt alone (same call, same media).

    start: the longest common prefix (a token merged across the prompt's end belongs to the answer);
    end: before the tokens the processor appends after any text (a newline, an end token), which
    both outputs end with. Nothing before the text (a BOS) or after it is assumed.
    """
    shorter = min(prompt_ids.shape[0], full_ids.shape[0])
    differ = (prompt_ids[:shorter] != full_ids[:shorter]).nonzero()
    start = int(differ[0]) if differ.numel() else shorter
    appended = 0
    while (appended < prompt_ids.shape[0] - start and full_ids.shape[0] - appended - 1 > start
           and prompt_ids[-1 - appended] == full_ids[-1 - appended]):
        appended += 1
    if start >= full_ids.shape[0] - appended:
        raise ValueError("the answer adds no token after the prompt")
    return start, full_ids.shape[0] - appended


def answer_token_count(tokenizer, prompt: str, answer: str) -> int:
    """Tokens the answer adds after the prompt, counted in context (text only, media markers unexpanded).

    Counting the answer alone would be wrong for sentencepiece-style tokenizers (Llama, Gemma):
    they give a text's first word a word-start marker that the same word does not get after the prompt.
    """
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return count(prompt + answer) - count(prompt)


def collate_sft(batch: Sequence[EncodedExample], pad_token_id: int,
                device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Right-padded batch with labels = -100 on prompt and padding, on `device` (the consuming model's)."""
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
        media = concat_media([getattr(item, key) for item in batch])
        if media is not None:
            out[key] = media
    return to_device(out, device)  # built on the CPU, moved once
