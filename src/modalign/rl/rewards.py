"""Reward sources for online RL: callables from (examples, answers, samples) to scores (N,)."""

from __future__ import annotations

from typing import Protocol, Sequence

import torch

from modalign.data.records import Example
from modalign.reward.model import ScalarHeadModel
from modalign.rl.rollout import Samples


class RewardSource(Protocol):
    def __call__(self, examples: Sequence[Example], answers: Sequence[str], samples: Samples,
                 prompts: dict[str, torch.Tensor]) -> torch.Tensor: ...


class RewardModelSource:
    """Scores from a trained reward model, which reads the image and the audio itself.

    Its backbone may have its own (fine-tuned) encoders, so it encodes the media once per
    prompt and repeats the features for the prompt's samples.
    """

    def __init__(self, model: ScalarHeadModel, normalize: bool = True) -> None:
        self.model, self.normalize = model.eval(), normalize

    @torch.no_grad()
    def __call__(self, examples, answers, samples: Samples, prompts) -> torch.Tensor:
        backbone = self.model.backbone
        repeats = samples.sequences.shape[0] // prompts["input_ids"].shape[0]
        media = backbone.encode_media(prompts["input_ids"], prompts.get("pixel_values"), prompts.get("input_values"))
        media = media.repeat_interleave(repeats, prompts["input_ids"].shape[0])
        scores = self.model(samples.sequences, samples.attention_mask, normalize=self.normalize, media=media)
        return scores[:, 0]


class FunctionSource:
    """A Python rule `fn(example, answer) -> float` (it may read the example's ground truth)."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def __call__(self, examples, answers, samples, prompts) -> torch.Tensor:
        return torch.tensor([float(self.fn(e, a)) for e, a in zip(examples, answers)])
