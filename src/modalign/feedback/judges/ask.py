"""Asking a policy a question about an example's media and scoring a fixed set of answer options.

The primitive of every model judge: the judge is a policy (built-in or Hugging Face, loaded by
`load_policy`), the question is a new user turn over the example's own media, and each option
("yes", "no", "A", "B", ...) is scored by its log-likelihood as the whole answer,

    score(q, o) = sum_t log p(o_t | media, question, o_<t)   over the option's tokens and the end-of-turn token,

so "yes" and "yes, a red circle" are different options. Scores are log-probs, not normalised over the
options; `option_probabilities` normalises them (the judge's choice among the options only).

Cost: the media of each distinct example are encoded once per call (every question about the same
image and sound reuses them, through the policy's `encode_media` / `media=` interface), and each
question's prompt runs once with its K options packed behind it (`models.shared_prefix`), for
models that support it; other models score one row per (question, option).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from modalign.data.records import Example, user_turn
from modalign.device import model_device, to_device
from modalign.models.inputs import EncodedExample, MediaStore, collate_sft, concat_media, encode_sft_example
from modalign.models.policy import Policy
from modalign.models.shared_prefix import pack, packed_logprobs, supports_shared_prefix


@dataclass(frozen=True)
class Query:
    """A question about the media of `example` (its messages and answer are not shown to the judge)."""

    example: Example
    question: str


def question_example(query: Query) -> Example:
    """The judge's prompt: one user turn with the example's media placeholders, then the question."""
    images, audio = len(query.example.media_of("image")), len(query.example.media_of("audio"))
    return Example(id=query.example.id, messages=(user_turn(query.question, images, audio),),
                   media=query.example.media, meta={})


def media_key(example: Example) -> tuple:
    """What identifies an example's media: its files (and their hashes when recorded)."""
    return tuple((ref.kind, ref.path, ref.sha256 or "") for ref in example.media)


@torch.no_grad()
def score_options(policy: Policy, queries: Sequence[Query], options: Sequence[str], media: MediaStore,
                  batch_size: int = 32, max_length: int = 512) -> torch.Tensor:
    """Log-likelihood of each option as the answer to each query: (N, K), N queries, K options.

    `media`: a MediaStore over the examples' dataset root. Queries are scored `batch_size` at a time;
    group the queries about one example together (as the claim judge does) so its media are encoded once.
    """
    if not options:
        raise ValueError("score_options needs at least one answer option")
    model = policy.model
    was_training = model.training
    model.eval()  # no dropout: the same question always gets the same scores
    try:
        chunks = [_score_chunk(policy, queries[start : start + batch_size], options, media, max_length)
                  for start in range(0, len(queries), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(chunks) if chunks else torch.zeros(0, len(options))


def option_probabilities(scores: torch.Tensor) -> torch.Tensor:
    """(N, K) log-likelihoods -> (N, K) probabilities renormalised over the K options."""
    return torch.softmax(scores, dim=-1)


def _score_chunk(policy: Policy, queries: Sequence[Query], options: Sequence[str], media: MediaStore,
                 max_length: int) -> torch.Tensor:
    model, processor = policy.model, policy.processor
    pad, device = processor.tokenizer.pad_token_id, model_device(policy.model)
    encoded = [[encode_sft_example(processor, media, question_example(q), max_length, o) for o in options]
               for q in queries]  # (N, K) EncodedExample
    features = _media_once(model, queries, [row[0] for row in encoded], pad, device)  # one row per query
    n, k = len(queries), len(options)
    if supports_shared_prefix(model) and all(_same_prompt(row) for row in encoded):
        prompts = [row[0].input_ids[: row[0].prompt_length] for row in encoded]
        answers = [[e.input_ids[e.prompt_length :] for e in row] for row in encoded]
        rows = to_device(pack(prompts, answers, pad), device)  # built on the CPU, scored on the model's device
        logprobs, _ = packed_logprobs(model, rows, features, sampled=False)  # (N*K, A)
        return logprobs.sum(1).view(n, k)
    from modalign.reward.model import answer_token_logprobs

    batch = to_device(collate_sft([e for row in encoded for e in row], pad), device)  # rows q*K.. answer query q
    rows = torch.arange(n, device=device).repeat_interleave(k)
    row_media = features.select_rows(rows) if features is not None else None
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], media=row_media).logits
    return answer_token_logprobs(logits, batch["input_ids"], batch["labels"] != -100).sum(1).view(n, k)


def _media_once(model, queries: Sequence[Query], first_rows: Sequence[EncodedExample], pad: int,
                device: torch.device):
    """Media features with one row per query, each distinct example's media encoded once: (N rows) or None."""
    distinct: dict[tuple, int] = {}
    owner = [distinct.setdefault(media_key(q.example), len(distinct)) for q in queries]  # query -> distinct row
    firsts = {}
    for row, index in zip(first_rows, owner):
        firsts.setdefault(index, row)
    ordered = [firsts[i] for i in range(len(distinct))]
    pixels = concat_media([e.pixel_values for e in ordered])
    audio = concat_media([e.input_values for e in ordered])
    if pixels is None and audio is None:
        return None
    input_ids = collate_sft(ordered, pad)["input_ids"]  # the placeholders say which row owns each item
    features = model.encode_media(*to_device((input_ids, pixels, audio), device))
    return features.select_rows(torch.tensor(owner, device=device))


def _same_prompt(row: Sequence[EncodedExample]) -> bool:
    """Every option follows the same prompt tokens (a tokenizer may merge an option into the prompt's end)."""
    first = row[0]
    return all(e.prompt_length == first.prompt_length
               and torch.equal(e.input_ids[: e.prompt_length], first.input_ids[: first.prompt_length]) for e in row)
