"""RL objectives behind one interface, their advantage estimators, and offline preference losses.

Pure tensor functions, no model code. Shapes: B sequences, T answer tokens; `mask` (B, T) is 1 on
real answer tokens. For group methods N = prompts * group_size and the samples of one prompt are
contiguous in the batch.

Online objectives share one signature, `fn(batch: ObjectiveInputs, **hparams) -> ObjectiveOutput`,
and are looked up by name (`get_objective`). Preference losses work on sequence log-probs (sums over
answer tokens), `fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=...)`, and return
(loss, chosen_rewards, rejected_rewards).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from modalign.rl.kl import kl_k3
from modalign.rl.losses import clipped_value_loss, masked_mean, ppo_policy_loss

# --------------------------------------------------------------------------------------------
# Inputs, outputs and registries
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectiveInputs:
    """One batch for an online objective. Every tensor is (B, T); optional ones may be None.

    advantages are sequence-level advantages already broadcast over tokens (`broadcast_to_tokens`)
    or per-token advantages (e.g. GAE); they are treated as constants (detached).
    """

    logprobs: torch.Tensor  # (B, T) log pi_theta of the sampled answer tokens
    old_logprobs: torch.Tensor  # (B, T) log pi_old, the sampling policy
    advantages: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T) float, 1 on real answer tokens
    ref_logprobs: torch.Tensor | None = None  # (B, T) log pi_ref
    values: torch.Tensor | None = None  # (B, T) critic V(s_t)
    returns: torch.Tensor | None = None  # (B, T) critic targets
    old_values: torch.Tensor | None = None  # (B, T) critic at sampling time
    entropy: torch.Tensor | None = None  # (B, T) per-token policy entropy

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value.shape != self.logprobs.shape:
                raise ValueError(f"{f.name} has shape {tuple(value.shape)}, expected {tuple(self.logprobs.shape)}")


@dataclass(frozen=True)
class ObjectiveOutput:
    loss: torch.Tensor  # scalar, to minimise
    stats: dict[str, torch.Tensor]  # detached scalars for logging


Objective = Callable[..., ObjectiveOutput]
OBJECTIVES: dict[str, Objective] = {}


class PreferenceLossOutput(NamedTuple):
    loss: torch.Tensor  # scalar
    chosen_rewards: torch.Tensor  # (B,) detached implicit rewards beta * (log pi - log pi_ref)
    rejected_rewards: torch.Tensor  # (B,)


PreferenceLoss = Callable[..., PreferenceLossOutput]
PREFERENCE_LOSSES: dict[str, PreferenceLoss] = {}


def _register(registry: dict[str, Callable], name: str, kind: str) -> Callable[[Callable], Callable]:
    def decorator(fn: Callable) -> Callable:
        if name in registry:
            raise ValueError(f"{kind} {name!r} is already registered")
        registry[name] = fn
        return fn

    return decorator


def _lookup(registry: dict[str, Callable], name: str, kind: str) -> Callable:
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(sorted(registry))}")
    return registry[name]


def register_objective(name: str) -> Callable[[Objective], Objective]:
    """Decorator adding `fn(batch: ObjectiveInputs, **hparams) -> ObjectiveOutput` to OBJECTIVES."""
    return _register(OBJECTIVES, name, "objective")


def get_objective(name: str) -> Objective:
    return _lookup(OBJECTIVES, name, "objective")


def register_preference_loss(name: str) -> Callable[[PreferenceLoss], PreferenceLoss]:
    """Decorator adding `fn(pc, pr, rc, rr, beta=..., ...) -> PreferenceLossOutput` to PREFERENCE_LOSSES."""
    return _register(PREFERENCE_LOSSES, name, "preference loss")


def get_preference_loss(name: str) -> PreferenceLoss:
    return _lookup(PREFERENCE_LOSSES, name, "preference loss")


# --------------------------------------------------------------------------------------------
# Advantage estimators on sequence scores
# --------------------------------------------------------------------------------------------


def _grouped(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N,) -> (N / group_size, group_size), checking the layout."""
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D (N,), got shape {tuple(scores.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for group baselines, got {group_size}")
    if scores.numel() % group_size != 0:
        raise ValueError(f"number of scores {scores.numel()} is not divisible by group_size {group_size}")
    return scores.view(-1, group_size)


def group_relative_advantages(
    scores: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO outcome advantages (Shao et al. 2024, DeepSeekMath sec. 4.1.2).

        A_i = (r_i - mean(r_group)) / (std(r_group) + eps)

    std is the unbiased sample std (torch.std default, divisor G - 1). scale=False drops the
    division: Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"), A_i = r_i - mean.
    scores: (N,) -> (N,).
    """
    groups = _grouped(scores, group_size)  # (P, G)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (groups.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def leave_one_out_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO advantages (Kool et al. 2019; Ahmadian et al. 2024, eq. 6).

        A_i = r_i - 1/(G-1) * sum_{j != i} r_j

    scores: (N,) -> (N,).
    """
    groups = _grouped(scores, group_size)  # (P, G)
    others_mean = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others_mean).reshape(-1)


def baseline_advantages(scores: torch.Tensor, baseline: float | torch.Tensor) -> torch.Tensor:
    """REINFORCE with a baseline (Williams 1992, sec. 4): A_i = r_i - b_i. scores: (N,), baseline float or (N,)."""
    baseline = torch.as_tensor(baseline, dtype=scores.dtype, device=scores.device)
    if baseline.dim() > 0 and baseline.shape != scores.shape:
        raise ValueError(f"baseline has shape {tuple(baseline.shape)}, expected scalar or {tuple(scores.shape)}")
    return scores - baseline


def broadcast_to_tokens(seq_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Copy a per-sequence value to every real token: (N,), (N, T) -> (N, T), zero on padding."""
    if seq_values.dim() != 1 or seq_values.shape[0] != mask.shape[0]:
        raise ValueError(f"seq_values shape {tuple(seq_values.shape)} does not match mask {tuple(mask.shape)}")
    return seq_values[:, None] * mask.to(seq_values.dtype)


# --------------------------------------------------------------------------------------------
# Online objectives
# --------------------------------------------------------------------------------------------


def _sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's real tokens, then over the sequences that have any: (B, T) -> ()."""
    mask = mask.to(values.dtype)
    lengths = mask.sum(dim=1)  # (B,)
    per_seq = (values * mask).sum(dim=1) / lengths.clamp(min=1)  # (B,)
    present = (lengths > 0).to(values.dtype)
    return (per_seq * present).sum() / present.sum().clamp(min=1)


def _entropy_term(batch: ObjectiveInputs, coef: float) -> torch.Tensor:
    """coef * mean token entropy; 0 when coef == 0. Raises if a bonus is asked for without entropy."""
    if coef == 0.0:
        return batch.logprobs.new_zeros(())
    if batch.entropy is None:
        raise ValueError("entropy_coef > 0 needs batch.entropy")
    return coef * masked_mean(batch.entropy, batch.mask)


def _base_stats(batch: ObjectiveInputs) -> dict[str, torch.Tensor]:
    """Diagnostics every objective logs: mean entropy and k3 estimates (Schulman 2020) of
    KL(pi_old || pi) (as `ppo_policy_loss`, the samples come from pi_old) and KL(pi || pi_ref)."""
    stats = {"approx_kl": masked_mean(kl_k3(batch.old_logprobs, batch.logprobs), batch.mask)}
    if batch.ref_logprobs is not None:
        stats["kl_to_ref"] = masked_mean(kl_k3(batch.logprobs, batch.ref_logprobs), batch.mask)
    if batch.entropy is not None:
        stats["entropy"] = masked_mean(batch.entropy, batch.mask)
    return {k: v.detach() for k, v in stats.items()}


def _require_critic(batch: ObjectiveInputs, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if batch.values is None or batch.returns is None:
        raise ValueError(f"{name} needs batch.values and batch.returns")
    return batch.values, batch.returns


@register_objective("ppo")
def ppo_objective(
    batch: ObjectiveInputs,
    clip: float = 0.2,
    value_clip: float = 0.2,
    value_coef: float = 0.5,
    entropy_coef: float = 0.0,
) -> ObjectiveOutput:
    """PPO (Schulman et al. 2017, eq. 9): clipped surrogate + c1 * value loss - c2 * entropy.

        L = L_clip (eq. 7) + value_coef * L_V (clipped, if batch.values) - entropy_coef * H

    The value loss needs values, returns and old_values. Token losses are averaged over the batch.
    """
    policy = ppo_policy_loss(batch.logprobs, batch.old_logprobs, batch.advantages.detach(), batch.mask, clip)
    loss = policy.loss - _entropy_term(batch, entropy_coef)
    stats = {**_base_stats(batch), "clip_fraction": policy.clip_fraction}
    if batch.values is not None:
        values, returns = _require_critic(batch, "ppo value loss")
        if batch.old_values is None:
            raise ValueError("ppo value loss needs batch.old_values for clipping")
        value_loss = clipped_value_loss(values, batch.old_values, returns, batch.mask, value_clip)
        loss = loss + value_coef * value_loss
        stats["value_loss"] = value_loss.detach()
    return ObjectiveOutput(loss, stats)


@register_objective("grpo")
def grpo_objective(
    batch: ObjectiveInputs, clip: float = 0.2, beta: float = 0.04, normalization: str = "sequence"
) -> ObjectiveOutput:
    """GRPO (Shao et al. 2024, DeepSeekMath eq. 3), negated to a loss.

        r_{i,t} = pi(o_{i,t}) / pi_old(o_{i,t})
        l_{i,t} = min(r A_i, clip(r, 1 - eps, 1 + eps) A_i) - beta * D_KL^{k3}[pi || pi_ref]_{i,t}  (eq. 4)
        L = -1/G sum_i 1/|o_i| sum_t l_{i,t}            normalization="sequence" (the paper)
        L = -1/sum_i |o_i| sum_i sum_t l_{i,t}          normalization="token" (DAPO, Yu et al. 2025)

    batch.advantages hold `group_relative_advantages` broadcast over tokens. beta = 0 drops the
    KL term (as in DAPO and Dr. GRPO) and then ref_logprobs may be None.
    """
    advantages = batch.advantages.detach()  # (B, T)
    ratio = torch.exp(batch.logprobs - batch.old_logprobs)  # (B, T)
    surrogate = torch.min(ratio * advantages, torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages)
    per_token = -surrogate  # (B, T)
    if beta != 0.0:
        if batch.ref_logprobs is None:
            raise ValueError("grpo with beta != 0 needs batch.ref_logprobs")
        per_token = per_token + beta * kl_k3(batch.logprobs, batch.ref_logprobs)
    if normalization == "sequence":
        loss = _sequence_mean(per_token, batch.mask)
    elif normalization == "token":
        loss = masked_mean(per_token, batch.mask)
    else:
        raise ValueError(f"normalization must be 'sequence' or 'token', got {normalization!r}")
    stats = _base_stats(batch)
    stats["clip_fraction"] = masked_mean(((ratio - 1.0).abs() > clip).to(ratio.dtype), batch.mask).detach()
    return ObjectiveOutput(loss, stats)


@register_objective("rloo")
def rloo_objective(batch: ObjectiveInputs, clip: float | None = None) -> ObjectiveOutput:
    """RLOO (Ahmadian et al. 2024, "Back to Basics", eq. 6): REINFORCE on whole answers.

        L = -1/B sum_i A_i * log pi(y_i | x),  log pi(y_i | x) = sum_t log pi(y_{i,t})

    with A_i the leave-one-out advantages (`leave_one_out_advantages`, broadcast over tokens; A_i is
    read back as the mean over the answer's tokens). With `clip`, the sequence ratio
    rho_i = pi(y_i) / pi_old(y_i) is clipped PPO-style, L = -1/B sum_i min(rho A, clip(rho) A): the
    same gradient on-policy, bounded updates when the batch is reused.
    """
    mask = batch.mask.to(batch.logprobs.dtype)
    lengths = mask.sum(dim=1).clamp(min=1)  # (B,)
    advantages = (batch.advantages.detach() * mask).sum(dim=1) / lengths  # (B,)
    seq_logprobs = (batch.logprobs * mask).sum(dim=1)  # (B,)
    stats = _base_stats(batch)
    if clip is None:
        loss = -(advantages * seq_logprobs).mean()
    else:
        ratio = torch.exp(seq_logprobs - (batch.old_logprobs * mask).sum(dim=1))  # (B,)
        clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages
        loss = -torch.min(ratio * advantages, clipped).mean()
        stats["clip_fraction"] = ((ratio - 1.0).abs() > clip).to(ratio.dtype).mean().detach()
    return ObjectiveOutput(loss, stats)


@register_objective("reinforce")
def reinforce_objective(batch: ObjectiveInputs) -> ObjectiveOutput:
    """REINFORCE (Williams 1992, sec. 4; the baseline is folded into A): L = -mean_t A_t log pi(a_t).

    Averaged over the real tokens of the batch, so dL/dlog pi_t = -A_t / #tokens.
    """
    loss = -masked_mean(batch.advantages.detach() * batch.logprobs, batch.mask)
    return ObjectiveOutput(loss, _base_stats(batch))


@register_objective("a2c")
def a2c_objective(batch: ObjectiveInputs, value_coef: float = 0.5, entropy_coef: float = 0.01) -> ObjectiveOutput:
    """Advantage actor-critic (Mnih et al. 2016, A3C, Algorithm S3 with the entropy term of sec. 4).

        L = -mean_t A_t log pi(a_t) + value_coef * mean_t (V_t - R_t)^2 - entropy_coef * mean_t H_t

    Needs batch.values and batch.returns; batch.entropy when entropy_coef > 0.
    """
    values, returns = _require_critic(batch, "a2c")
    policy_loss = -masked_mean(batch.advantages.detach() * batch.logprobs, batch.mask)
    value_loss = masked_mean((values - returns.detach()) ** 2, batch.mask)
    loss = policy_loss + value_coef * value_loss - _entropy_term(batch, entropy_coef)
    stats = {**_base_stats(batch), "policy_loss": policy_loss.detach(), "value_loss": value_loss.detach()}
    return ObjectiveOutput(loss, stats)


# --------------------------------------------------------------------------------------------
# Offline preference losses on sequence log-probs (B,)
# --------------------------------------------------------------------------------------------


def _margin(
    policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """h = (pc - rc) - (pr - rr) and the two log-ratios, all (B,)."""
    chosen, rejected = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    return chosen - rejected, chosen, rejected


def _output(loss: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor, beta: float) -> PreferenceLossOutput:
    return PreferenceLossOutput(loss, (beta * chosen).detach(), (beta * rejected).detach())


@register_preference_loss("dpo")
def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> PreferenceLossOutput:
    """DPO (Rafailov et al. 2023, eq. 7); label_smoothing eps > 0 is conservative DPO (Mitchell 2023).

        h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))
        L = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)

    Implicit rewards: beta (log pi(y) - log pi_ref(y)). All inputs (B,).
    """
    h, chosen, rejected = _margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return _output(losses.mean(), chosen, rejected, beta)


def rpo_nll(policy_chosen: torch.Tensor, chosen_tokens: torch.Tensor, alpha: float) -> torch.Tensor:
    """RPO's NLL term (Pang et al. 2024, "Iterative Reasoning Preference Optimization", eq. 1), added to a
    preference loss: alpha times the chosen answers' negative log-likelihood per answer token, batch mean.

        L_NLL = alpha * mean_i ( -log pi(y_w,i | x_i) / |y_w,i| )

    It keeps the chosen answers likely while the preference term pushes the pair apart (TRL's `rpo_alpha`).
    policy_chosen: summed answer log-probs (B,); chosen_tokens: their answer lengths in tokens (B,).
    """
    return alpha * (-policy_chosen / chosen_tokens.clamp(min=1)).mean()


@register_preference_loss("ipo")
def ipo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> PreferenceLossOutput:
    """IPO (Azar et al. 2024, "A General Theoretical Paradigm...", eq. 17): L = (h - 1/(2 beta))^2.

    beta plays the role of the paper's tau; h as in `dpo_loss`. All inputs (B,).
    """
    h, chosen, rejected = _margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return _output(((h - 1.0 / (2.0 * beta)) ** 2).mean(), chosen, rejected, beta)


@register_preference_loss("hinge")
def hinge_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> PreferenceLossOutput:
    """SLiC calibration hinge (Zhao et al. 2023, SLiC-HF eq. 1) on the reference-normalised margin.

        L = max(0, 1 - beta h)      (margin delta = 1 / beta; h as in `dpo_loss`)
    """
    h, chosen, rejected = _margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return _output(torch.relu(1.0 - beta * h).mean(), chosen, rejected, beta)
