"""Policy and value losses: pure tensor functions, one concern each.

Shapes: B sequences, T response tokens; `mask` (B, T) is 1 on real response tokens.
Token losses are averaged over real tokens of the batch (`masked_mean`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


class PolicyLoss(NamedTuple):
    loss: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor


def ppo_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> PolicyLoss:
    """Clipped surrogate objective (Schulman et al. 2017, eq. 7), negated to a loss.

        r_t = exp(log pi(a_t) - log pi_old(a_t))
        L   = -E_t[ min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t) ]

    approx_kl is the k3 estimator of KL(pi_old || pi) (Schulman 2020, "Approximating KL").
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages
    loss = -masked_mean(torch.min(unclipped, clipped), mask)
    clip_fraction = masked_mean(((ratio - 1.0).abs() > clip).to(logprobs.dtype), mask)
    approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
    return PolicyLoss(loss, clip_fraction.detach(), approx_kl.detach())


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> torch.Tensor:
    """PPO's clipped value loss (Schulman et al. 2017 code; Andrychowicz et al. 2021, sec. 3.2).

        V_clip = V_old + clip(V - V_old, -eps, eps)
        L_V    = 0.5 * E_t[ max((V - R)^2, (V_clip - R)^2) ]
    """
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-token entropy H = -sum_v p_v log p_v. logits: (B, T, V) -> (B, T)."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -(log_probs.exp() * log_probs).sum(-1)
