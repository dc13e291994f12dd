"""Training a reward model on preference pairs with the Bradley-Terry loss.

Both answers of a pair share their prompt's media: the media are encoded once per pair
and reused for the chosen and the rejected row.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from modalign.data.records import Example
from modalign.models.inputs import EncodedExample, MediaStore, collate_sft, encode_sft_example
from modalign.reward.losses import bradley_terry_loss
from modalign.reward.model import ScalarHeadModel


@dataclass(frozen=True)
class PreferencePair:
    """Two answers to one example; `tie` when raters judged them equal."""

    example: Example
    chosen: str
    rejected: str
    tie: bool = False
    margin: float = 0.0


@dataclass(frozen=True)
class EncodedPair:
    chosen: EncodedExample
    rejected: EncodedExample
    tie: bool
    margin: float


def encode_pairs(processor, media: MediaStore, pairs: Sequence[PreferencePair], max_length: int) -> list[EncodedPair]:
    return [
        EncodedPair(encode_sft_example(processor, media, p.example, max_length, p.chosen),
                    encode_sft_example(processor, media, p.example, max_length, p.rejected), p.tie, p.margin)
        for p in pairs
    ]


def pair_batch(policy_model, batch: Sequence[EncodedPair], pad_token_id: int):
    """Rows 0..B-1 chosen, B..2B-1 rejected, and their media features encoded once per pair.

    Returns (tensors of `collate_sft`, MediaFeatures for the 2B rows).
    """
    size = len(batch)
    tensors = collate_sft([p.chosen for p in batch] + [p.rejected for p in batch], pad_token_id)
    chosen_pixels = _cat([p.chosen.pixel_values for p in batch])
    chosen_audio = _cat([p.chosen.input_values for p in batch])
    media = policy_model.encode_media(tensors["input_ids"][:size], chosen_pixels, chosen_audio)
    return tensors, media.select_rows(torch.arange(size).repeat(2))  # rows B..2B-1 reuse rows 0..B-1


def pair_scores(model: ScalarHeadModel, batch: Sequence[EncodedPair], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (B,) of the chosen and the rejected answers; media encoded once per pair."""
    tensors, media = pair_batch(model.backbone, batch, pad_token_id)
    scores = model(tensors["input_ids"], tensors["attention_mask"], answer_mask=tensors["labels"] != -100,
                   media=media)[:, 0]  # (2B,)
    return scores[: len(batch)], scores[len(batch) :]


def _cat(parts):
    parts = [p for p in parts if p is not None]
    return torch.cat(parts) if parts else None


def train_reward_model(
    model: ScalarHeadModel, pairs: Sequence[EncodedPair], pad_token_id: int, steps: int, batch_size: int = 16,
    lr: float = 5e-4, seed: int = 0, on_step: Callable[[int, float], None] | None = None, head_lr: float | None = None,
) -> None:
    """AdamW on the Bradley-Terry loss (ties pulled together, margins respected).

    The head (and the likelihood weight) may learn at `head_lr`: a fresh head needs large
    steps, while the pretrained backbone is damaged by them.
    """
    head = [p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("backbone.")]
    body = [p for name, p in model.named_parameters() if p.requires_grad and name.startswith("backbone.")]
    groups = [{"params": body, "lr": lr}] if body else []
    optimizer = torch.optim.AdamW(groups + [{"params": head, "lr": head_lr or lr}], lr=lr, weight_decay=0.01)
    order = random.Random(seed)
    model.train()
    for step in range(steps):
        batch = order.sample(list(pairs), min(batch_size, len(pairs)))
        chosen, rejected = pair_scores(model, batch, pad_token_id)
        loss = bradley_terry_loss(chosen, rejected, torch.tensor([p.margin for p in batch]),
                                  torch.tensor([p.tie for p in batch]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if on_step is not None:
            on_step(step, loss.item())


@torch.no_grad()
def pairwise_accuracy(model: ScalarHeadModel, pairs: Sequence[EncodedPair], pad_token_id: int, batch_size: int = 64) -> float:
    """Share of non-tie pairs whose chosen answer scores higher."""
    model.eval()
    decided = [p for p in pairs if not p.tie]
    correct = 0
    for start in range(0, len(decided), batch_size):
        chosen, rejected = pair_scores(model, decided[start : start + batch_size], pad_token_id)
        correct += int((chosen > rejected).sum())
    return correct / max(1, len(decided))


@torch.no_grad()
def fit_normalizer(model: ScalarHeadModel, pairs: Sequence[EncodedPair], pad_token_id: int) -> None:
    """Store the mean and std of scores on the training answers, for normalised rewards later."""
    model.eval()
    scores = torch.cat([torch.cat(pair_scores(model, pairs[i : i + 64], pad_token_id)) for i in range(0, len(pairs), 64)])
    model.norm_mean.fill_(scores.mean().item())
    model.norm_std.fill_(max(scores.std().item(), 1e-6))
