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


# Rule rewards by name, for configs ("rule:shapes_gold"). A rule is fn(example, answer) -> float.
RULES: dict = {}


def register_rule(name: str):
    """Decorator: make `fn(example, answer) -> float` available as `rule:<name>`."""

    def add(fn):
        RULES[name] = fn
        return fn

    return add


@register_rule("shapes_gold")
def shapes_gold(example: Example, answer: str) -> float:
    """ShapesWorld ground truth: caption (facts right - 2 x facts wrong) / true facts; question 1 if right."""
    from modalign.feedback.simulated import gold_utility

    return gold_utility(example, answer)


def reward_source_from(spec: str) -> RewardSource:
    """`rule:<name>` for a registered rule, otherwise a saved reward-model folder."""
    if spec.startswith("rule:"):
        name = spec[len("rule:"):]
        if name not in RULES:
            raise ValueError(f"reward {spec!r}: no rule named {name!r} (known: {', '.join(sorted(RULES))})")
        return FunctionSource(RULES[name])
    if not spec:
        raise ValueError("no reward given: set reward_model to a reward-model folder or rule:<name>")
    return RewardModelSource(ScalarHeadModel.load(spec))
