"""PPO with a critic for language policies (Ziegler et al. 2019; Ouyang et al. 2022), as functions.

Shapes: N sampled answers, T response tokens. The recipe (`modalign.recipes.ppo`) calls
these in order: token rewards -> GAE -> several minibatch epochs of `ppo_minibatch_loss`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from modalign.reward.model import ScalarHeadModel
from modalign.rl.kl import kl_k1
from modalign.rl.losses import clipped_value_loss, entropy_from_logits, masked_mean, ppo_policy_loss
from modalign.rl.rollout import Samples, response_logprobs


def token_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """r_t = -beta * (log pi - log pi_ref) on every token, plus the answer's score on its last token.

    scores: (N,); logprobs, ref_logprobs, mask: (N, T). Returns (rewards, kl), both (N, T).
    (Ziegler et al. 2019, eq. 2: R(x, y) = r(x, y) - beta * log(pi(y|x) / rho(y|x)).)
    """
    kl = kl_k1(logprobs, ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask.long().cumsum(1) == mask.long().sum(1, keepdim=True)) & mask.bool()  # (N, T) one-hot
    rewards = rewards + last.to(rewards.dtype) * scores.unsqueeze(1)
    return rewards, kl


def critic_values(critic: ScalarHeadModel, samples: Samples) -> torch.Tensor:
    """V(s_t) before each response token: (N, T)."""
    values = critic.token_scores(samples.sequences, samples.attention_mask, media=samples.media)[..., 0]
    return values[:, samples.prompt_length - 1 : -1]


class PPOStats(NamedTuple):
    loss: torch.Tensor
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    entropy: torch.Tensor
    approx_kl: torch.Tensor
    clip_fraction: torch.Tensor


def ppo_minibatch_loss(
    policy, critic: ScalarHeadModel, samples: Samples, old_logprobs: torch.Tensor, old_values: torch.Tensor,
    advantages: torch.Tensor, returns: torch.Tensor, temperature: float, clip: float, value_clip: float,
    value_coef: float, entropy_coef: float,
) -> PPOStats:
    """L = L_clip + c_v * L_V - c_e * H (Schulman et al. 2017, eq. 9), on one minibatch."""
    mask = samples.response_mask
    logprobs, logits = response_logprobs(policy, samples, temperature, with_logits=True)
    policy_terms = ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip)
    values = critic_values(critic, samples)
    value_loss = clipped_value_loss(values, old_values, returns, mask, value_clip)
    finite_logits = logits.masked_fill(torch.isinf(logits), -1e9)
    entropy = masked_mean(entropy_from_logits(finite_logits), mask)
    loss = policy_terms.loss + value_coef * value_loss - entropy_coef * entropy
    return PPOStats(loss, policy_terms.loss.detach(), value_loss.detach(), entropy.detach(),
                    policy_terms.approx_kl, policy_terms.clip_fraction)


def critic_minibatch_loss(critic: ScalarHeadModel, samples: Samples, old_values: torch.Tensor,
                          returns: torch.Tensor, value_clip: float, value_coef: float) -> PPOStats:
    """c_v * L_V alone, for critic warm-up iterations: the policy terms are zero and get no gradient."""
    value_loss = clipped_value_loss(critic_values(critic, samples), old_values, returns, samples.response_mask,
                                    value_clip)
    zero = value_loss.new_zeros(())
    return PPOStats(value_coef * value_loss, zero, value_loss.detach(), zero, zero, zero)


def explained_variance(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[target - predicted] / Var[target] over real tokens (1 is perfect, <= 0 is useless)."""
    target_var = masked_mean((target - masked_mean(target, mask)) ** 2, mask)
    residual = target - predicted
    residual_var = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return float(1.0 - residual_var / target_var.clamp(min=1e-8))


def subset(samples: Samples, rows: torch.Tensor) -> Samples:
    """The rows of a rollout, with their media features."""
    media = samples.media.select_rows(rows) if samples.media is not None else None
    return Samples(samples.sequences[rows], samples.attention_mask[rows], samples.response_mask[rows],
                   samples.prompt_length, media)
