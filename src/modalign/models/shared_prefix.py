"""Answer log-probs with the prompt computed once for all answers that share it.

DPO scores a chosen and a rejected answer to one prompt, GRPO and RLOO score G answers to
one prompt; on the ShapesWorld captions the prompt (image tokens included) is 55 of 64 DPO
tokens. Packing one prompt and its K answers into one row,

    [prompt | answer 1 | answer 2 | ... | answer K]

with a mask that lets each answer read the prompt and itself only, and with every answer's
positions starting where the prompt ends, gives each answer token exactly the context and the
position it has in its own unpacked sequence: the same log-probs (up to float summation order)
for (P + sum_k A_k) tokens instead of sum_k (P + A_k). Logits are computed only where an
answer token is predicted (`logits_to_keep`), never over the prompt.

A model opts in with `supports_shared_prefix` and `shared_prefix_positions` (the built-in VLM,
Hugging Face families whose positions follow the attention mask); `answer_logprobs` falls back
to one unpacked row per answer for every other model.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Sequence

import torch


@dataclass(frozen=True)
class PackedRows:
    """R packed rows, one per prompt, with S answers in all (A the longest answer).

    input_ids: (R, L) right-padded
    key_mask: (R, L) 1 on real tokens
    attention: (R, 1, L, L) bool, True where query i may read key j
    shift: (R, L) how far each token's position moves back (0 on prompts; on answer k, the
        lengths of answers 1..k-1 of that row)
    rows, columns: (S, A) packed row and column of the token that predicts each answer token
    targets: (S, A) the answer tokens; valid: (S, A) bool, False past an answer's end
    """

    input_ids: torch.Tensor
    key_mask: torch.Tensor
    attention: torch.Tensor
    shift: torch.Tensor
    rows: torch.Tensor
    columns: torch.Tensor
    targets: torch.Tensor
    valid: torch.Tensor


def pack(prompts: Sequence[torch.Tensor], answers: Sequence[Sequence[torch.Tensor]], pad_token_id: int) -> PackedRows:
    """Pack prompt r (P_r,) and its answers (A_rk,) into row r; answers are numbered row by row.

    An answer that repeats an earlier one of its prompt (a DPO pair cut to equal answers, equal
    GRPO samples) is packed once and read twice: equal answers get bit-equal log-probs, as they
    do in separate rows.
    """
    lengths = [len(p) + sum(len(a) for a in {tuple(a.tolist()): a for a in group}.values())
               for p, group in zip(prompts, answers)]
    count, longest_answer = sum(len(g) for g in answers), max((len(a) for g in answers for a in g), default=0)
    rows_n, width = len(prompts), max(lengths)
    input_ids = torch.full((rows_n, width), pad_token_id, dtype=torch.long)
    segment = torch.full((rows_n, width), -1, dtype=torch.long)  # 0 prompt, k answer k, -1 padding
    shift = torch.zeros((rows_n, width), dtype=torch.long)
    rows = torch.zeros((count, max(longest_answer, 1)), dtype=torch.long)
    columns, targets = torch.zeros_like(rows), torch.zeros_like(rows)
    valid = torch.zeros_like(rows, dtype=torch.bool)
    s = 0
    for r, (prompt, group) in enumerate(zip(prompts, answers)):
        if len(prompt) == 0:
            raise ValueError("shared-prefix packing needs a prompt of at least one token")
        input_ids[r, : len(prompt)], segment[r, : len(prompt)] = prompt, 0
        start, placed = len(prompt), {}  # answer tokens -> its start column (a repeated answer is packed once)
        for answer in group:
            key = tuple(answer.tolist())
            if key not in placed:
                placed[key], end = start, start + len(answer)
                input_ids[r, start:end], segment[r, start:end] = answer, len(placed)
                shift[r, start:end] = start - len(prompt)
                start = end
            # answer token t is predicted at the column before it, the first one by the prompt's last token
            predictors = torch.arange(placed[key] - 1, placed[key] + len(answer) - 1)
            predictors[:1] = len(prompt) - 1
            rows[s, : len(answer)], columns[s, : len(answer)] = r, predictors
            targets[s, : len(answer)], valid[s, : len(answer)] = answer, True
            s += 1
    return PackedRows(input_ids, (segment >= 0).long(), _packed_attention(segment), shift, rows, columns, targets,
                      valid)


def _packed_attention(segment: torch.Tensor) -> torch.Tensor:
    """(R, L) segment ids -> (R, 1, L, L) bool: causal, real keys of the prompt or the query's own answer.

    Padding queries read themselves only (a query with no key would give NaN in the softmax).
    """
    length = segment.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()  # (L, L) key j <= query i
    query, key = segment.unsqueeze(2), segment.unsqueeze(1)  # (R, L, 1), (R, 1, L)
    readable = (key == 0) | (key == query)
    allowed = causal & readable & (key >= 0) & (query >= 0)
    allowed = allowed | torch.eye(length, dtype=torch.bool)
    return allowed.unsqueeze(1)


# What one attention FLOP of a packed row (dense L x L mask) costs against one projection or MLP FLOP, on CPU:
# least squares over 8 scoring passes per precision (bench/packing_rule.py --size compute: d 512, a 55-token
# prompt and 4 answers of 16-160 tokens, packed and one per row, forward + backward): 1.5 in fp32 and 2.9
# under bf16 autocast, where the projections run ~1.7x faster and the masked attention does not.
CPU_ATTENTION_COST = {torch.float32: 1.5, torch.bfloat16: 2.9}


def attention_cost(device_type: str) -> float:
    """The cost of an attention FLOP against a projection FLOP in a pass run now on `device_type` (under the
    autocast in force, if any): `CPU_ATTENTION_COST` on CPU; 1.0 (FLOPs alone) where it was not measured."""
    if device_type != "cpu":
        return 1.0
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32
    return CPU_ATTENTION_COST.get(dtype, 1.0)


def packing_pays(prompt_tokens: int, packed_answer_tokens: int, answer_tokens: int, width: int,
                 attention_flop_cost: float = 1.0) -> bool:
    """Whether appending an answer to a packed row (prompt + answers so far) costs less than its own row.

    Per layer and token a transformer spends ~24 d^2 FLOPs in its projections and MLP and 4 d per key in
    attention (forward; Hoffmann et al. 2022, "Training Compute-Optimal LLMs", Appendix F). Packing the
    answer (A tokens) behind a row whose answers hold S tokens saves its own copy of the prompt, 24 d^2 P,
    and adds 4 d (2 S A - P^2) of attention: the dense (L x L) mask computes the blocks between answers
    too. With k the cost of an attention FLOP against a projection FLOP (`attention_flop_cost`, as
    `attention_cost` measures it), it pays while k (2 S A - P^2) < 6 d P. The first answer of a row (S = 0)
    always does.
    """
    return packing_margin(prompt_tokens, packed_answer_tokens, answer_tokens, width, attention_flop_cost) > 0


def packing_margin(prompt_tokens: int, packed_answer_tokens: int, answer_tokens: int, width: int,
                   attention_flop_cost: float = 1.0) -> float:
    """6 d P - k (2 S A - P^2): what packing saves, in units of 4 d projection FLOPs per layer
    (`packing_pays`); < 0 it costs. With k = 1 it counts FLOPs alone."""
    return 6 * width * prompt_tokens - attention_flop_cost * (2 * packed_answer_tokens * answer_tokens
                                                               - prompt_tokens * prompt_tokens)


def model_width(model: Any) -> int | None:
    """The decoder's hidden size, or None when the model does not say (then packing is not weighed)."""
    return text_config_int(model, "hidden_size")


def text_config_int(model: Any, name: str) -> int | None:
    """An integer field of the model's text (decoder) config - the built-in's own config, a Hugging Face
    VLM's `get_text_config()` - or None when it has none."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, name, None)
    return value if isinstance(value, int) else None


def supports_shared_prefix(model: Any) -> bool:
    """True when `model` takes a packed (R, 1, L, L) mask with explicit positions (`shared_prefix_positions`)."""
    return bool(getattr(model, "supports_shared_prefix", False))


def packed_logprobs(
    model: Any, packed: PackedRows, media: Any, temperature: float = 1.0, with_logits: bool = False,
    sampled: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi of every answer token: (S, A), 0 past each answer's end; optionally the logits (S, A, V).

    `sampled`: the answers came from `generate`, so the tokens it never samples (the model's
    `suppress_tokens`) get no probability mass; False scores them under the full vocabulary (DPO).
    """
    positions = model.shared_prefix_positions(packed.input_ids, packed.key_mask, media, packed.shift)
    keep = torch.unique(packed.columns[packed.valid])  # (U,) sorted columns where logits are needed
    if keep.numel() == 0:  # no answer token at all: run the last column only
        keep = torch.tensor([packed.input_ids.shape[1] - 1])
    output = model(input_ids=packed.input_ids, attention_mask=packed.attention, media=media,
                   position_ids=positions, logits_to_keep=keep)
    index = torch.searchsorted(keep, packed.columns).clamp(max=keep.numel() - 1)  # (S, A) into the kept columns
    logits = output.logits[packed.rows, index]  # (S, A, V)
    suppressed = getattr(getattr(model, "generation_config", None), "suppress_tokens", None) if sampled else None
    return target_logprobs(logits, packed.targets, packed.valid, temperature, suppressed, with_logits)


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, temperature: float,
                    suppressed: list[int] | None, with_logits: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Temperature, suppressed tokens, log-softmax at the targets; zeros where `valid` is False.

    logits (S, A, V) predicting targets (S, A); the log-probs (S, A) and, with `with_logits`, the
    tempered logits (S, A, V) fp32, both packed and unpacked (`rl.rollout.response_logprobs`)."""
    logits = logits.float() / temperature
    if suppressed:  # generate never samples these, so they carry no probability mass
        logits[..., suppressed] = float("-inf")
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    logprobs = logprobs.masked_fill(~valid, 0.0)
    return logprobs, (logits.masked_fill(~valid.unsqueeze(-1), 0.0) if with_logits else None)


def same_media(first: Any, second: Any) -> bool:
    """True when two one-row media features (a dataclass of tensors) hold the same values."""
    if first is None or second is None:
        return first is second
    for f in fields(first):
        a, b = getattr(first, f.name), getattr(second, f.name)
        if (a is None) != (b is None) or (a is not None and (a.shape != b.shape or not torch.equal(a, b))):
            return False
    return True
