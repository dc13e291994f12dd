"""Training a reward model on preference pairs with the Bradley-Terry loss.

Both answers of a pair share their prompt's media: the media are encoded once per pair
and reused for the chosen and the rejected row. With a frozen backbone (the default) every
distinct answer goes through the backbone once (`sequence_features`, media encoded once per
prompt in a batch) and the head trains on those cached features: a candidate that appears
in three pairs and hundreds of steps is never run twice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from modalign.data.records import Example
from modalign.device import model_device, to_device
from modalign.models.inputs import EncodedExample, MediaStore, collate_sft, concat_media, encode_sft_example
from modalign.models.shared_prefix import (attention_cost, model_width, pack, packed_logprobs, packing_margin,
                                          supports_shared_prefix)
from modalign.reward.losses import bradley_terry_loss
from modalign.reward.model import ScalarHeadModel, answer_token_logprobs, last_token_index


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
    size, device = len(batch), model_device(policy_model)
    tensors = collate_sft([p.chosen for p in batch] + [p.rejected for p in batch], pad_token_id, device)
    chosen_pixels = to_device(concat_media([p.chosen.pixel_values for p in batch]), device)
    chosen_audio = to_device(concat_media([p.chosen.input_values for p in batch]), device)
    media = policy_model.encode_media(tensors["input_ids"][:size], chosen_pixels, chosen_audio)
    return tensors, media.select_rows(torch.arange(size, device=device).repeat(2))  # rows B..2B-1 reuse rows 0..B-1


def pair_scores(model: ScalarHeadModel, batch: Sequence[EncodedPair], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (B,) of the chosen and the rejected answers; media encoded once per pair."""
    tensors, media = pair_batch(model.backbone, batch, pad_token_id)
    scores = model(tensors["input_ids"], tensors["attention_mask"], answer_mask=tensors["labels"] != -100,
                   media=media)[:, 0]  # (2B,)
    return scores[: len(batch)], scores[len(batch) :]


def pair_answer_logprobs(model, batch: Sequence[EncodedPair], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer log-probs (B,) of the chosen and the rejected answers (DPO's sequence log-probs).

    The pair's shared prompt (media tokens included) runs once, with both answers packed behind
    it (`models.shared_prefix`); the media are encoded once per pair. Equal, up to float summation
    order, to scoring chosen and rejected as two rows (`pair_batch`), which is the fallback for
    models that cannot pack, for pairs whose prompt tokens differ, and for batches whose long answers
    behind a short prompt cost more attention packed than the prompt copy saves (`_packing_pays`).
    """
    packable = supports_shared_prefix(model) and all(_shared_prompt(p) for p in batch)
    if not packable or not _packing_pays(model, batch):
        return _unpacked_pair_logprobs(model, batch, pad_token_id)
    prompts = [p.chosen.input_ids[: p.chosen.prompt_length] for p in batch]
    answers = [[p.chosen.input_ids[p.chosen.prompt_length :], p.rejected.input_ids[p.rejected.prompt_length :]]
               for p in batch]
    device = model_device(model)
    packed = to_device(pack(prompts, answers, pad_token_id), device)
    media = model.encode_media(packed.input_ids, to_device(concat_media([p.chosen.pixel_values for p in batch]), device),
                               to_device(concat_media([p.chosen.input_values for p in batch]), device))
    logprobs, _ = packed_logprobs(model, packed, media, sampled=False)  # (2B, A): pair 0 chosen, rejected, pair 1 ...
    sums = logprobs.sum(1).view(len(batch), 2)
    return sums[:, 0], sums[:, 1]


def _packing_pays(model, batch: Sequence[EncodedPair]) -> bool:
    """Packing saves time over the batch (`packing_margin` per pair, summed, with the attention's cost under
    the precision in force): long answers behind a short prompt cost more in the attention between chosen
    and rejected than the prompt copy saves."""
    width = model_width(model)
    if width is None:
        return True
    cost, margin = attention_cost(model_device(model).type), 0.0
    for pair in batch:
        prompt = pair.chosen.prompt_length
        margin += packing_margin(prompt, len(pair.chosen.input_ids) - prompt, len(pair.rejected.input_ids) - prompt,
                                 width, cost)
    return margin > 0


def _shared_prompt(pair: EncodedPair) -> bool:
    """Both answers follow the same prompt tokens (a tokenizer may merge across the prompt's end)."""
    chosen, rejected = pair.chosen, pair.rejected
    return (chosen.example_id == rejected.example_id and chosen.prompt_length == rejected.prompt_length
            and torch.equal(chosen.input_ids[: chosen.prompt_length], rejected.input_ids[: rejected.prompt_length]))


def _unpacked_pair_logprobs(model, batch: Sequence[EncodedPair],
                            pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`pair_answer_logprobs` with chosen and rejected as separate rows (media still encoded once per pair)."""
    tensors, media = pair_batch(model, batch, pad_token_id)
    logits = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"], media=media).logits
    sums = answer_token_logprobs(logits, tensors["input_ids"], tensors["labels"] != -100).sum(1)  # (2B,)
    return sums[: len(batch)], sums[len(batch) :]


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
        loss = bradley_terry_loss(chosen, rejected, torch.tensor([p.margin for p in batch], device=chosen.device),
                                  torch.tensor([p.tie for p in batch], device=chosen.device))
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


@dataclass(frozen=True)
class PairFeatures:
    """Frozen-backbone features of pairs. hidden: (S, H) last hidden state and loglik: (S,) mean answer
    log p of each distinct sequence; chosen/rejected: (P,) indices into them; margin (P,); tie (P,) bool."""

    hidden: torch.Tensor
    loglik: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor
    margin: torch.Tensor
    tie: torch.Tensor

    def scores(self, model: ScalarHeadModel, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) scores (P,) of the pairs `rows` (all by default) under the head."""
        chosen, rejected = (self.chosen, self.rejected) if rows is None else (self.chosen[rows], self.rejected[rows])
        return (model.score_features(self.hidden[chosen], self.loglik[chosen])[:, 0],
                model.score_features(self.hidden[rejected], self.loglik[rejected])[:, 0])


@torch.no_grad()
def pair_features(model: ScalarHeadModel, pairs: Sequence[EncodedPair], pad_token_id: int,
                  batch_size: int = 64, dist=None) -> PairFeatures:
    """Run the frozen backbone once per distinct (example, answer) sequence of `pairs`.

    `dist` (`modalign.dist.Processes`): the sequences are split over the processes and the
    features gathered, so every process gets them all.
    """
    index: dict[tuple, int] = {}
    sequences: list[EncodedExample] = []

    def slot(encoded: EncodedExample) -> int:
        key = (encoded.example_id, tuple(encoded.input_ids.tolist()))
        if key not in index:
            index[key] = len(sequences)
            sequences.append(encoded)
        return index[key]

    chosen = torch.tensor([slot(p.chosen) for p in pairs], dtype=torch.long)
    rejected = torch.tensor([slot(p.rejected) for p in pairs], dtype=torch.long)
    if dist is not None and dist.many:
        def features_of(rows: list[int]) -> torch.Tensor:  # (len(rows), H + 1): hidden state, then log p
            hidden, loglik = sequence_features(model.backbone, [sequences[i] for i in rows], pad_token_id, batch_size)
            return torch.cat([hidden, loglik[:, None]], 1)

        both = dist.gather_rows(features_of, len(sequences))
        hidden, loglik = both[:, :-1], both[:, -1]
    else:
        hidden, loglik = sequence_features(model.backbone, sequences, pad_token_id, batch_size)
    return to_device(PairFeatures(hidden, loglik, chosen, rejected, torch.tensor([p.margin for p in pairs],
                                                                                  dtype=torch.float),
                                  torch.tensor([p.tie for p in pairs], dtype=torch.bool)), hidden.device)


@torch.no_grad()
def sequence_features(backbone, sequences: Sequence[EncodedExample], pad_token_id: int,
                      batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Last hidden state (S, H) and mean answer log p (S,) of each sequence; media encoded once per example
    in a batch (sequences of one example are kept together by sorting on the example id)."""
    was_training = backbone.training
    backbone.eval()
    order = sorted(range(len(sequences)), key=lambda i: sequences[i].example_id)
    hidden, loglik = [None] * len(sequences), [None] * len(sequences)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        chunk = [sequences[i] for i in rows]
        tensors = collate_sft(chunk, pad_token_id, device := model_device(backbone))
        owner_of: dict[str, int] = {}
        owners = [owner_of.setdefault(e.example_id, i) for i, e in enumerate(chunk)]  # first row of each example
        firsts = sorted(set(owners))
        media = backbone.encode_media(tensors["input_ids"][firsts],
                                      to_device(concat_media([chunk[i].pixel_values for i in firsts]), device),
                                      to_device(concat_media([chunk[i].input_values for i in firsts]), device))
        media = media.select_rows(torch.tensor([firsts.index(o) for o in owners], device=device))
        output = backbone(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"],
                          output_hidden_states=True, media=media)
        answer_mask = tensors["labels"] != -100
        last = last_token_index(tensors["attention_mask"])
        states = output.hidden_states[-1][torch.arange(len(chunk)), last]  # (B, H)
        means = answer_token_logprobs(output.logits, tensors["input_ids"], answer_mask).sum(1) / \
            answer_mask.sum(1).clamp(min=1)  # (B,)
        for j, i in enumerate(rows):
            hidden[i], loglik[i] = states[j].float(), means[j].float()
    backbone.train(was_training)
    return torch.stack(hidden), torch.stack(loglik)


def train_head_on_features(
    model: ScalarHeadModel, features: PairFeatures, steps: int, batch_size: int = 16, lr: float = 3e-3, seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> None:
    """AdamW on the Bradley-Terry loss over cached features: the head and the likelihood weight only."""
    params = [p for name, p in model.named_parameters() if not name.startswith("backbone.")]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    order = random.Random(seed)
    count = len(features.chosen)
    for step in range(steps):
        rows = torch.tensor(order.sample(range(count), min(batch_size, count)))
        chosen, rejected = features.scores(model, rows)
        loss = bradley_terry_loss(chosen, rejected, features.margin[rows], features.tie[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if on_step is not None:
            on_step(step, loss.item())


@torch.no_grad()
def feature_accuracy(model: ScalarHeadModel, features: PairFeatures) -> float:
    """Share of non-tie pairs whose chosen answer scores higher (as `pairwise_accuracy`, from features)."""
    chosen, rejected = features.scores(model)
    decided = ~features.tie
    return float(((chosen > rejected) & decided).sum()) / max(1, int(decided.sum()))


@torch.no_grad()
def fit_normalizer_on_features(model: ScalarHeadModel, features: PairFeatures) -> None:
    """`fit_normalizer` from cached features: mean and std of the training answers' scores."""
    scores = torch.cat(features.scores(model))
    model.norm_mean.fill_(scores.mean().item())
    model.norm_std.fill_(max(scores.std().item(), 1e-6))
