"""Token-level credit: which answer tokens raise or lower the score.

- leave-one-out (reward models): f(answer) - f(answer with token j deleted), one batched forward of
  one row per answer token; positive = the token raises the score. Deleted, not replaced by a pad
  token: with the likelihood feature an out-of-place pad would dominate every token's credit.
- dense (reward models with the likelihood feature): the share of the score the reward model
  itself puts on each answer token (`ScalarHeadModel.dense_scores`, what dense-reward RL uses);
  the head's own score sits on the last token.
- for a policy: each answer token's log-probability (what makes the answer unlikely).
"""

from __future__ import annotations

from typing import Any

import torch

from modalign.eval.explain.target import Subject, Target
from modalign.reward.model import ScalarHeadModel, answer_token_logprobs

LOO_BASELINE = "each answer token in turn deleted from the answer"


@torch.no_grad()
def token_credit(target: Target, subject: Subject, tokenizer) -> dict[str, Any]:
    """Per answer token: leave-one-out credit (reward models) and the dense score or log-probability."""
    positions = subject.answer_positions
    ids = subject.input_ids[0, positions].tolist()
    out: dict[str, Any] = {"tokens": [tokenizer.decode([i]) for i in ids]}
    if target.kind == "reward":
        out["leave_one_out"] = leave_one_out(target, subject)
        out["baseline"] = LOO_BASELINE
    dense = dense_credit(target, subject)
    if dense is not None:
        out["dense" if target.kind == "reward" else "logprob"] = dense
    return out


def leave_one_out(target: Target, subject: Subject) -> list[float]:
    """f(answer) - f(answer without token j) for each answer token j: one batch of rows one token shorter."""
    positions = subject.answer_positions
    keep = [torch.cat([torch.arange(p), torch.arange(p + 1, subject.input_ids.shape[1])]) for p in positions]
    input_ids = torch.stack([subject.input_ids[0, k] for k in keep])  # (T, L - 1)
    answer_mask = torch.stack([subject.answer_mask[0, k] for k in keep])
    rows = len(positions)
    full = target(subject.input_ids, subject.answer_mask, **subject.media())
    shorter = target(input_ids, answer_mask, **subject.media(rows))
    return (full - shorter).tolist()


def dense_credit(target: Target, subject: Subject) -> list[float] | None:
    """Per answer token: the reward model's dense score (likelihood feature only) or the policy's log-prob."""
    positions = subject.answer_positions
    media = subject.media()
    if target.kind == "policy":
        logits = target.model(input_ids=subject.input_ids, attention_mask=subject.attention_mask, **media).logits
        return answer_token_logprobs(logits, subject.input_ids, subject.answer_mask)[0, positions].tolist()
    model: ScalarHeadModel = target.model
    if not model.likelihood_feature:
        return None
    dense = model.dense_scores(subject.input_ids, subject.attention_mask, normalize=True,
                               answer_mask=subject.answer_mask, **media)[0, :, target.head]  # (L,)
    return dense[positions].tolist()
