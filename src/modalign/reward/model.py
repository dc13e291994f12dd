"""Scalar-head models: reward models and critics on any policy backbone.

The backbone is the whole multimodal model (media encoders included), so the image
and the audio reach the score: `forward` takes the same inputs as the policy
(pixel_values / input_values, or cached `media`). A head of K outputs gives K reward
axes (e.g. accuracy, fluency, safety) or one value per token for a critic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from modalign.device import model_device

HEAD_FILE = "scalar_head.safetensors"
HEAD_CONFIG = "scalar_head.json"


class ScalarHeadModel(nn.Module):
    """backbone (a policy model) + Linear(hidden, K) on its last hidden states.

    `normalizer` holds (mean, std) per head, measured on the training data, so that
    saved reward models give roughly standard-normal scores to the RL stage.
    """

    def __init__(self, backbone: nn.Module, head_names: Sequence[str] = ("reward",),
                 likelihood_feature: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head_names = tuple(head_names)
        self.likelihood_feature = likelihood_feature
        # Score += w * mean log p(answer | prompt, media) under the backbone's own LM head: a
        # generative-verifier feature (Zhang et al. 2024) that starts the reward model from what
        # the SFT backbone already knows about the image and the audio.
        self.likelihood_weight = nn.Parameter(torch.ones(len(self.head_names))) if likelihood_feature else None
        width = backbone.config.get_text_config().hidden_size
        self.head = nn.Linear(width, len(self.head_names))
        # With the likelihood feature the head starts at zero: the first scores are the backbone's own.
        nn.init.normal_(self.head.weight, std=0.0 if likelihood_feature else 1.0 / (width + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("norm_mean", torch.zeros(len(self.head_names)))
        self.register_buffer("norm_std", torch.ones(len(self.head_names)))
        self.to(model_device(backbone))  # the head on the backbone's device (a critic copied from a placed policy)

    def token_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **media: Any) -> torch.Tensor:
        """Scores for every position: (B, L, K). A critic reads its values here."""
        output = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **media)
        return self.head(output.hidden_states[-1]).float()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalize: bool = False,
        answer_mask: torch.Tensor | None = None, **media: Any,
    ) -> torch.Tensor:
        """Scores of whole sequences at their last real token: (B, K). Works for left or right padding.

        `answer_mask` (B, L) marks the answer tokens; the likelihood feature needs it.
        """
        return self.dense_scores(input_ids, attention_mask, normalize, answer_mask, **media).sum(1)

    def dense_scores(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalize: bool = False,
        answer_mask: torch.Tensor | None = None, **media: Any,
    ) -> torch.Tensor:
        """The score spread over positions: (B, L, K), summing to `forward`'s score.

        The head's score sits on the last real token; the likelihood feature's share
        w * log p(token_j) / |answer| sits on each answer token j, so RL can credit the
        very token that made an answer unlikely (dense rewards) at no extra cost.
        """
        output = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **media)
        scores = self.head(output.hidden_states[-1]).float()  # (B, L, K)
        last = last_token_index(attention_mask)
        dense = torch.zeros_like(scores)
        rows = torch.arange(scores.shape[0], device=scores.device)
        dense[rows, last] = scores[rows, last]
        if normalize:
            dense[rows, last] = dense[rows, last] - self.norm_mean
        if self.likelihood_feature:
            if answer_mask is None:
                raise ValueError("this reward model reads the answer's likelihood: pass answer_mask (B, L)")
            token_logprobs = answer_token_logprobs(output.logits, input_ids, answer_mask)  # (B, L), 0 off the answer
            share = token_logprobs / answer_mask.float().sum(1, keepdim=True).clamp(min=1)
            dense = dense + share[..., None] * self.likelihood_weight
        if normalize:
            dense = dense / self.norm_std.clamp(min=1e-6)
        return dense

    def score_features(self, last_hidden: torch.Tensor, mean_logprob: torch.Tensor) -> torch.Tensor:
        """`forward`'s (unnormalised) scores from cached features: last hidden (N, H), mean answer log p (N,) -> (N, K).

        With a frozen backbone these features never change, so a reward model trains on them
        without running the backbone again (`reward.train.sequence_features`).
        """
        scores = self.head(last_hidden).float()
        if self.likelihood_feature:
            scores = scores + mean_logprob[:, None].float() * self.likelihood_weight
        return scores

    def save(self, path: str | Path, processor=None) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        self.backbone.save_pretrained(path)
        if processor is not None:
            processor.save_pretrained(path)
        tensors = {"weight": self.head.weight.detach().contiguous(), "bias": self.head.bias.detach().contiguous(),
                   "norm_mean": self.norm_mean.contiguous(), "norm_std": self.norm_std.contiguous()}
        if self.likelihood_weight is not None:
            tensors["likelihood_weight"] = self.likelihood_weight.detach().contiguous()
        save_file({k: v.cpu() for k, v in tensors.items()}, str(path / HEAD_FILE))  # from any device
        (path / HEAD_CONFIG).write_text(json.dumps({"head_names": list(self.head_names),
                                                    "likelihood_feature": self.likelihood_feature}))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ScalarHeadModel":
        from safetensors.torch import load_file

        from modalign.models.policy import load_policy

        path = Path(path)
        if not (path / HEAD_FILE).is_file():
            raise FileNotFoundError(f"{path} has no {HEAD_FILE}: not a saved reward model or critic")
        policy = load_policy(path)
        head_config = json.loads((path / HEAD_CONFIG).read_text())
        model = cls(policy.model, head_config["head_names"], head_config.get("likelihood_feature", False))
        tensors = load_file(str(path / HEAD_FILE))
        with torch.no_grad():
            if model.likelihood_weight is not None:
                model.likelihood_weight.copy_(tensors["likelihood_weight"])
            model.head.weight.copy_(tensors["weight"])
            model.head.bias.copy_(tensors["bias"])
            model.norm_mean.copy_(tensors["norm_mean"])
            model.norm_std.copy_(tensors["norm_std"])
        return model


def answer_token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """log p(token_j | tokens < j) at each answer position j, 0 elsewhere: logits (B, L, V), ids/mask (B, L) -> (B, L)."""
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # position j-1 predicts token j
    token_logprobs = logprobs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, L-1)
    token_logprobs = torch.cat([torch.zeros_like(token_logprobs[:, :1]), token_logprobs], dim=1)  # (B, L)
    return token_logprobs * answer_mask.to(token_logprobs.dtype)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, for left- or right-padded (B, L) masks."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=1)
