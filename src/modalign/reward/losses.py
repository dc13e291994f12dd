"""Reward-model losses: pure tensor functions with the paper and equation of each."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    tie: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pairwise Bradley-Terry loss (Bradley & Terry 1952; Ouyang et al. 2022, eq. 1).

        L = -log sigmoid(r_c - r_r - m)

    `margin` m (B,) asks for a larger gap where raters were more certain (Llama 2,
    Touvron et al. 2023, eq. 2). For ties (`tie` (B,) True) the Rao-Kupper-style
    choice of this library is to pull both scores together: L = -log sigmoid(d) - log sigmoid(-d)
    with d = r_c - r_r, minimised at d = 0. chosen, rejected: (B,) scores. Returns the mean.
    """
    diff = chosen - rejected
    if margin is not None:
        diff_with_margin = diff - margin
    else:
        diff_with_margin = diff
    loss = -F.logsigmoid(diff_with_margin)
    if tie is not None:
        tie_loss = -(F.logsigmoid(diff) + F.logsigmoid(-diff))
        loss = torch.where(tie.bool(), tie_loss, loss)
    return loss.mean()


def plackett_luce_loss(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Plackett-Luce ranking loss (Plackett 1975; used for K-way rankings in Zhu et al. 2023).

    scores: (B, K) reward of the candidates in ranked order, best first; mask (B, K) marks
    real candidates (rankings may have fewer than K). The probability of the ranking is
    prod_k exp(s_k) / sum_{j >= k} exp(s_j); the loss is its mean negative log.
    """
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    masked = scores.masked_fill(~mask.bool(), float("-inf"))
    # log sum_{j>=k} exp(s_j): reverse cumulative logsumexp over the ranked list.
    tail = torch.logcumsumexp(masked.flip(-1), dim=-1).flip(-1)
    terms = (scores - tail).masked_fill(~mask.bool(), 0.0)
    return -(terms.sum(-1)).mean()


def rating_regression_loss(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error between predicted and given ratings, per axis (B, K); `mask` skips missing axes."""
    errors = (predicted - target) ** 2
    if mask is None:
        return errors.mean()
    mask = mask.to(errors.dtype)
    return (errors * mask).sum() / mask.sum().clamp(min=1)
