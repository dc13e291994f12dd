"""Advantage estimators: pure tensor functions.

Shapes: B sequences, T response tokens. `mask` (B, T) is 1 on real response tokens.
"""

from __future__ import annotations

from typing import Callable

import torch


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016, eq. 16).

        delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)
        A_t     = sum_l (gamma * lam)^l * delta_{t+l}

    The value after the last real token is 0 (the episode ends with the answer).
    rewards, values, mask: (B, T). Returns (advantages, returns), both (B, T), zero on
    padding; returns = advantages + values are the critic's targets.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    deltas = (rewards + gamma * next_values - values) * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        running = deltas[:, t] + gamma * lam * running * mask[:, t]
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
           total: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Normalise `values` over the real tokens to unit variance (and zero mean).

    `total` sums a tensor over processes (`Processes.sum`), so that N processes holding parts
    of one batch normalise with the whole batch's mean and variance.
    """
    total = total or (lambda t: t)
    mask = mask.to(values.dtype)
    count = total(mask.sum()).clamp(min=1)
    mean = total((values * mask).sum()) / count
    var = total((((values - mean) * mask) ** 2).sum()) / count
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask
