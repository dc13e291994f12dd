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
