"""KL estimators between the policy and the reference, and the KL coefficient controllers."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k1 = log pi - log pi_ref: unbiased for KL(pi || pi_ref) under samples of pi, high variance."""
    return logprobs - ref_logprobs


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 = (r - 1) - log r with r = pi_ref / pi (Schulman 2020): unbiased, always >= 0.

    GRPO (Shao et al. 2024, eq. 4) uses this estimator for its KL term.
    """
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - 1.0 - log_ratio


def kl_k3_per_answer(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(pi || pi_ref) of each sampled answer: k3 summed over its tokens, (N,) from (N, T) inputs; never < 0.

    The sum of k1 (log pi - log pi_ref) is unbiased too, and is what the KL-penalised reward uses, but
    one batch of it can be negative (answers the reference likes more than the policy does), which
    reads as nonsense in a log; k3 has the same expectation and is >= 0 on every token.
    """
    return (kl_k3(logprobs, ref_logprobs) * mask).sum(-1)


def kl_exact(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_v p_v (log p_v - log q_v) over the vocabulary at each position: (...,) from (..., V).

    p = softmax(logits), q = softmax(ref_logits). Exact (no sampling error) and >= 0 (Gibbs'
    inequality); the clamp removes rounding's -1e-9s.
    """
    logp, logq = torch.log_softmax(logits.float(), -1), torch.log_softmax(ref_logits.float(), -1)
    return (logp.exp() * (logp - logq)).sum(-1).clamp_min(0.0)


@dataclass
class FixedKLController:
    """A constant KL coefficient beta."""

    value: float

    def update(self, observed_kl: float, n_steps: int) -> None:
        return None

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


@dataclass
class AdaptiveKLController:
    """Adaptive beta of Ziegler et al. 2019 (sec. 2.2, "Fine-Tuning LMs from Human Preferences").

        e_t    = clip((KL_t - KL_target) / KL_target, -0.2, 0.2)
        beta  <- beta * (1 + K_beta * e_t * n_steps / horizon)
    """

    value: float
    target: float
    horizon: int = 10_000

    def update(self, observed_kl: float, n_steps: int) -> None:
        error = max(-0.2, min(0.2, observed_kl / self.target - 1.0))
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.target, self.horizon = float(state["value"]), float(state["target"]), int(state["horizon"])
