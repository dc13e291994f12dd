"""Rollout core shared by every online method: sample, then score tokens.

Media features are encoded once per prompt (`encode_media`), repeated for the G samples
of that prompt, and reused for the old-policy, reference and critic passes. This is why
RL freezes the media encoders: the cached features stay valid for the whole update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from modalign.device import to_device
from modalign.models.shared_prefix import (attention_cost, model_width, pack, packed_logprobs, packing_pays,
                                          same_media, supports_shared_prefix, target_logprobs)
from modalign.models.tinyvlm.fusion import MediaFeatures


@dataclass
class Samples:
    """G sampled answers for each of B prompts (N = B * G rows, prompt b owns rows b*G..b*G+G-1).

    sequences: (N, P + T) left-padded prompt then right-padded response
    attention_mask: (N, P + T)
    response_mask: (N, T) 1 on answer tokens up to and including the end-of-turn token
    prompt_length: P
    media: cached media features of the N rows
    """

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    prompt_length: int
    media: MediaFeatures | None

    @property
    def responses(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_length :]


@torch.no_grad()
def sample_answers(
    model,
    prompts: dict[str, torch.Tensor],
    samples_per_prompt: int,
    max_new_tokens: int,
    temperature: float,
    eos_token_id: int,
    pad_token_id: int,
    min_new_tokens: int = 0,
) -> Samples:
    """Batched sampling with the KV cache; media encoded once per prompt, and each prompt run through
    the model once for its `samples_per_prompt` answers (`models.prompt_cache`).

    `min_new_tokens`: the end-of-turn token is blocked for the first that many answer tokens."""
    input_ids, attention_mask = prompts["input_ids"], prompts["attention_mask"]
    media = model.encode_media(input_ids, prompts.get("pixel_values"), prompts.get("input_values"))
    repeat = samples_per_prompt
    sequences = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, media=media, num_return_sequences=repeat,
        max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_k=None, top_p=None,
        eos_token_id=eos_token_id, pad_token_id=pad_token_id, use_cache=True, min_new_tokens=min_new_tokens,
    )  # (B * G, P + T), rows b*G .. b*G+G-1 answer prompt b
    media = media.repeat_interleave(repeat, input_ids.shape[0])  # the N rows' features, for the scoring passes
    prompt_length = input_ids.shape[1]
    response_mask = answer_mask(sequences[:, prompt_length:], eos_token_id)
    full_mask = torch.cat([attention_mask.repeat_interleave(repeat, dim=0), response_mask], dim=1)
    return Samples(sequences, full_mask, response_mask, prompt_length, media)


def decode_answers(tokenizer, samples: Samples) -> list[str]:
    """The sampled answers as text, up to their end-of-turn token."""
    answer_ids = samples.responses.masked_fill(samples.response_mask == 0, tokenizer.pad_token_id)
    return tokenizer.batch_decode(answer_ids, skip_special_tokens=True)


def answer_mask(responses: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 on tokens up to and including the first end-of-turn token of each row: (N, T)."""
    is_eos = (responses == eos_token_id).long()
    eos_seen_before = torch.cumsum(is_eos, dim=1) - is_eos  # count of EOS strictly before t
    return (eos_seen_before == 0).long()


def response_logprobs(
    model, samples: Samples, temperature: float = 1.0, with_logits: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log pi(a_t | s_t) of every response token: (N, T); optionally the logits (N, T, V).

    Logits are divided by the sampling temperature so the log-probs are those of the
    distribution the answers were drawn from. Models that support it score the answers of
    one prompt in one packed row, the prompt computed once (`models.shared_prefix`); there
    both outputs are 0 past each answer's end (where `response_mask` is 0).
    """
    if supports_shared_prefix(model):
        return _packed_response_logprobs(model, samples, temperature, with_logits)
    output = model(input_ids=samples.sequences, attention_mask=samples.attention_mask, media=samples.media)
    suppressed = getattr(getattr(model, "generation_config", None), "suppress_tokens", None)
    every = torch.ones_like(samples.responses, dtype=torch.bool)  # one row per answer: nothing to mask
    logprobs, logits = target_logprobs(output.logits[:, samples.prompt_length - 1 : -1], samples.responses, every,
                                       temperature, suppressed, with_logits)  # (N, T), (N, T, V)
    return (logprobs, logits) if with_logits else logprobs


def _packed_response_logprobs(model, samples: Samples, temperature: float, with_logits: bool):
    """`response_logprobs` with the answers of each prompt packed behind one copy of it.

    Packing is bookkeeping in Python over each row's tokens: the token ids and masks come to the
    host in one copy each (not one read per row), and the packed rows go back to the device at once."""
    device = samples.sequences.device
    host = Samples(samples.sequences.cpu(), samples.attention_mask.cpu(), samples.response_mask.cpu(),
                   samples.prompt_length, samples.media)
    hidden, cost = model_width(model), attention_cost(device.type)  # the device the pass runs on, not the host's
    groups = [part for group in prompt_groups(host) for part in _row_parts(group, host, hidden, cost)]
    first = [group[0] for group in groups]
    prompt_part = host.sequences[:, : host.prompt_length]
    prompts = [prompt_part[row][host.attention_mask[row, : host.prompt_length].bool()] for row in first]
    answers = [[host.responses[row][host.response_mask[row].bool()] for row in group] for group in groups]
    packed = to_device(pack(prompts, answers, _pad_id(model)), device)  # packed on the host, moved once
    media = samples.media.select_rows(torch.tensor(first, device=device)) if samples.media is not None else None
    logprobs, logits = packed_logprobs(model, packed, media, temperature, with_logits)  # (S, A), (S, A, V)
    order = torch.tensor([row for group in groups for row in group], device=device)  # answer s is rollout row order[s]
    width = samples.responses.shape[1] - logprobs.shape[1]  # answers are a prefix of each response row
    logprobs = F.pad(logprobs, (0, width))  # (N, T) in packed order
    logprobs = torch.zeros_like(logprobs).index_copy(0, order, logprobs)
    if not with_logits:
        return logprobs
    logits = F.pad(logits, (0, 0, 0, width))  # (N, T, V)
    return logprobs, torch.zeros_like(logits).index_copy(0, order, logits)


def prompt_groups(samples: Samples) -> list[list[int]]:
    """Rows with the same prompt tokens and the same media features, in order of first appearance.

    Equal prompts give equal prompt computations, so grouping by value (not by where rows came
    from) stays correct after `subset` reorders a rollout.
    """
    prompt_part = samples.sequences[:, : samples.prompt_length]
    by_prompt: dict[tuple, list[list[int]]] = {}
    groups: list[list[int]] = []
    media: dict[int, object] = {}  # row -> its one-row media features, built when compared

    def row_media(row: int):
        if row not in media:
            media[row] = samples.media.select_rows(torch.tensor([row])) if samples.media is not None else None
        return media[row]

    for row in range(samples.sequences.shape[0]):
        key = tuple(prompt_part[row][samples.attention_mask[row, : samples.prompt_length].bool()].tolist())
        candidates = by_prompt.setdefault(key, [])
        match = next((g for g in candidates if same_media(row_media(g[0]), row_media(row))), None)
        if match is None:
            match = []
            candidates.append(match)
            groups.append(match)
        match.append(row)
    return groups


MAX_PACKED_TOKENS = 1024  # bounds one packed row's attention cost and memory, which grow with its length squared


def _row_parts(group: list[int], samples: Samples, width: int | None = None, cost: float = 1.0) -> list[list[int]]:
    """A prompt's rows split so that each packed row (prompt + its answers) stays within MAX_PACKED_TOKENS
    and, given the decoder's `width`, holds another answer only while that costs less than a row of its
    own (`packing_pays`, `cost` the attention's for the pass: long answers behind a short prompt are
    cheaper unpacked); then the answers are spread evenly over that many rows (`_balanced`)."""
    prompt = int(samples.attention_mask[group[0], : samples.prompt_length].sum())
    answers = samples.response_mask.sum(1)  # (N,)
    parts, packed = [[]], 0  # packed: answer tokens in the current part
    for row in group:
        length = int(answers[row])
        too_long = prompt + packed + length > MAX_PACKED_TOKENS
        if parts[-1] and (too_long or (width is not None and not packing_pays(prompt, packed, length, width, cost))):
            parts, packed = parts + [[]], 0
        parts[-1].append(row)
        packed += length
    return _balanced(parts, [int(answers[row]) for row in group], group, prompt)


def _balanced(parts: list[list[int]], lengths: list[int], group: list[int], prompt: int) -> list[list[int]]:
    """The group's answers over as many rows as `parts`, longest first onto the row with the fewest answer
    tokens. Packed rows are padded to the longest, so 3 + 1 answers of 160 tokens cost a row of 4 in
    padding where 2 + 2 cost none; and 2 + 2 has less attention (a sum of squares). Kept as the greedy
    split when a balanced row would pass MAX_PACKED_TOKENS."""
    if len(parts) == 1:
        return parts
    balanced, tokens = [[] for _ in parts], [0] * len(parts)
    for length, row in sorted(zip(lengths, group), key=lambda pair: -pair[0]):
        fewest = tokens.index(min(tokens))
        balanced[fewest].append(row)
        tokens[fewest] += length
    return parts if prompt + max(tokens) > MAX_PACKED_TOKENS else [sorted(part) for part in balanced]


def _pad_id(model) -> int:
    """Any id for the padding of packed rows (masked out): the model's pad token, else 0."""
    for config in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        pad = getattr(config, "pad_token_id", None)
        if isinstance(pad, int):
            return pad
    return 0
