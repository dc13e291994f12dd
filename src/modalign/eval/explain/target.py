"""What an explanation explains: a reward model's score or a policy's answer log-probability.

`Subject` is one example with one answer, tokenized once (`models.inputs.encode_sft_example`, as
reward training and SFT encode it). `Target` turns a batch of variants of that subject (other
pixels, other audio, masked tokens, scaled media features) into one number per variant, so every
attribution method (ablation, integrated gradients, occlusion, leave-one-out) is a batched call of
the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from modalign.errors import UserError
from modalign.reward.model import ScalarHeadModel, answer_token_logprobs


class ExplainError(UserError):
    """An explanation that cannot be computed for this model or example (named in the message)."""


@dataclass(frozen=True)
class Subject:
    """One example and one answer, as the model reads them.

    input_ids / attention_mask / answer_mask: (1, L); answer_mask marks the answer tokens
    pixel_values: (N_img, C, H, W) or None; input_values: (N_aud, ...) or None (the processor's tensors)
    text_mask: (1, L) True on prompt text tokens (not media placeholders, not special/template tokens):
        what "masked text" replaces
    """

    example_id: str
    answer: str
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    answer_mask: torch.Tensor
    pixel_values: torch.Tensor | None
    input_values: torch.Tensor | None
    text_mask: torch.Tensor

    @property
    def answer_positions(self) -> list[int]:
        return self.answer_mask[0].nonzero().flatten().tolist()

    def media(self, rows: int = 1) -> dict[str, torch.Tensor]:
        """pixel_values / input_values for `rows` copies of the subject (row r's items are block r)."""
        out = {}
        for key, value in (("pixel_values", self.pixel_values), ("input_values", self.input_values)):
            if value is not None:
                out[key] = value.repeat(rows, *([1] * (value.dim() - 1)))
        return out

    def modalities(self) -> list[str]:
        """The modalities this subject carries, in report order."""
        present = ["image"] if _count(self.pixel_values) else []
        present += ["audio"] if _count(self.input_values) else []
        return present + (["text"] if bool(self.text_mask.any()) else [])


def _count(media: torch.Tensor | None) -> int:
    return 0 if media is None else int(media.shape[0])


def encode_subject(processor, media_store, example, answer: str, max_length: int = 256,
                   media_token_ids: list[int] = ()) -> Subject:
    """Tokenize `example` with `answer` and its media; pixels and audio must be plain tensors.

    `media_token_ids`: the model's media placeholder ids (`Target.media_token_ids`), never masked as text.
    """
    from modalign.models.inputs import encode_sft_example

    encoded = encode_sft_example(processor, media_store, example, max_length, answer)
    for kind, value in (("image", encoded.pixel_values), ("audio", encoded.input_values)):
        if value is not None and not isinstance(value, torch.Tensor):
            raise ExplainError(f"record {example.id!r}: explain perturbs the processor's {kind} tensor, but this "
                               f"model's processor gives {type(value).__name__} (a Hugging Face model on the generic "
                               "path); use the built-in model or a model with a registered fast path")
    ids = encoded.input_ids.unsqueeze(0)  # (1, L)
    positions = torch.arange(ids.shape[1])
    answer_mask = (positions >= encoded.prompt_length).unsqueeze(0)
    special = set(getattr(processor.tokenizer, "all_special_ids", [])) | set(media_token_ids)
    text_mask = (positions < encoded.prompt_length).unsqueeze(0) & ~torch.isin(ids, torch.tensor(sorted(special)))
    return Subject(example.id, answer, ids, torch.ones_like(ids), answer_mask, encoded.pixel_values,
                   encoded.input_values, text_mask)


class Target:
    """f(variants of one subject) -> (K,) numbers.

    kind "reward": head `head` of a `ScalarHeadModel` (normalised, the scale RL sees);
    kind "policy": the answer's summed log-probability, or with `token` the log-probability of the
    `token`-th answer token (0-based).
    """

    def __init__(self, model: nn.Module, kind: str, head: int = 0, token: int | None = None) -> None:
        if kind not in ("reward", "policy"):
            raise ValueError(f"kind must be 'reward' or 'policy', not {kind!r}")
        self.model, self.kind, self.head, self.token = model.eval(), kind, head, token

    @property
    def backbone(self) -> nn.Module:
        return self.model.backbone if isinstance(self.model, ScalarHeadModel) else self.model

    def media_token_ids(self) -> list[int]:
        """The backbone's media placeholder ids (the built-in model's config, or a Hugging Face adapter's list)."""
        backbone = self.backbone
        if hasattr(backbone, "media_token_ids"):
            return list(backbone.media_token_ids)
        ids = [getattr(backbone.config, name, None) for name in ("image_token_id", "audio_token_id")]
        return [i for i in ids if isinstance(i, int)]

    def describe(self) -> str:
        if self.kind == "reward":
            return f"reward score (head {self.model.head_names[self.head]!r}, normalised)"
        return "answer log-probability" if self.token is None else f"log-probability of answer token {self.token}"

    def __call__(self, input_ids: torch.Tensor, answer_mask: torch.Tensor, **media: Any) -> torch.Tensor:
        """Scores (K,) of K rows: `input_ids` / `answer_mask` (K, L), and `media` as the backbone's forward takes
        them (pixel_values / input_values, or media=MediaFeatures)."""
        mask = torch.ones_like(input_ids)
        if self.kind == "reward":
            return self.model(input_ids, mask, normalize=True, answer_mask=answer_mask, **media)[:, self.head]
        logits = self.model(input_ids=input_ids, attention_mask=mask, **media).logits
        logprobs = answer_token_logprobs(logits, input_ids, answer_mask)  # (K, L), 0 off the answer
        if self.token is None:
            return logprobs.sum(1)
        position = answer_mask[0].nonzero().flatten()[self.token]
        return logprobs[:, position]

    def check_token(self, subject: Subject) -> None:
        """One clear error when the explained answer token is past the answer's end."""
        if self.token is not None and self.token >= len(subject.answer_positions):
            raise ExplainError(f"record {subject.example_id!r}: token={self.token} but the answer has "
                               f"{len(subject.answer_positions)} tokens")


def captum_attr():
    """`captum.attr`, or one clear error naming the extra that installs it."""
    try:
        import captum.attr
    except ImportError:
        raise ExplainError("explain needs Captum: pip install 'modalign[explain]'") from None
    return captum.attr


def repeat_rows(tensor: torch.Tensor, times: int) -> torch.Tensor:
    """(1, ...) -> (times, ...)."""
    return tensor.expand(times, *tensor.shape[1:]).clone()
