"""Win rate of policy A against policy B: a judge scores both answers to each prompt."""

from __future__ import annotations

import math
from typing import Sequence

import torch


def win_rate(scores_a: torch.Tensor, scores_b: torch.Tensor, same_answer: Sequence[bool] | None = None,
             tolerance: float = 1e-6) -> dict[str, float]:
    """Wins, ties and losses of A over B, as counts and rates with binomial standard errors.

    A wins a prompt when its score beats B's by more than `tolerance`; equal scores (or the same
    answer text, `same_answer`) are a tie. `win_rate_ties_half` counts a tie as half a win. Each
    rate r over n prompts has the binomial standard error sqrt(r (1 - r) / n) (for `win_rate_ties_half`,
    whose outcomes are 0, 1/2 or 1, an upper bound).
    """
    if scores_a.shape != scores_b.shape:
        raise ValueError(f"win_rate: {tuple(scores_a.shape)} scores of A but {tuple(scores_b.shape)} of B")
    n = scores_a.numel()
    margin = scores_a.float() - scores_b.float()
    tie = margin.abs() <= tolerance
    if same_answer is not None:
        tie = tie | torch.tensor(list(same_answer), dtype=torch.bool)
    wins, ties = int(((margin > 0) & ~tie).sum()), int(tie.sum())
    counts = {"wins": wins, "ties": ties, "losses": n - wins - ties}
    rates = {"win_rate": wins / max(1, n), "tie_rate": ties / max(1, n), "loss_rate": (n - wins - ties) / max(1, n),
             "win_rate_ties_half": (wins + 0.5 * ties) / max(1, n)}
    out: dict[str, float] = {"n_prompts": float(n), **{k: float(v) for k, v in counts.items()}}
    for key, rate in rates.items():
        out[key] = rate
        out[f"{key}_se"] = math.sqrt(rate * (1.0 - rate) / max(1, n))
    return out
