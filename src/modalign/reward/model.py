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

HEAD_FILE = "scalar_head.safetensors"
HEAD_CONFIG = "scalar_head.json"


class ScalarHeadModel(nn.Module):
    """backbone (a policy model) + Linear(hidden, K) on its last hidden states.

    `normalizer` holds (mean, std) per head, measured on the training data, so that
    saved reward models give roughly standard-normal scores to the RL stage.
    """

    def __init__(self, backbone: nn.Module, head_names: Sequence[str] = ("reward",)) -> None:
        super().__init__()
        self.backbone = backbone
        self.head_names = tuple(head_names)
        width = backbone.config.get_text_config().hidden_size
        self.head = nn.Linear(width, len(self.head_names))
        nn.init.normal_(self.head.weight, std=1.0 / (width + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("norm_mean", torch.zeros(len(self.head_names)))
        self.register_buffer("norm_std", torch.ones(len(self.head_names)))

    def token_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **media: Any) -> torch.Tensor:
        """Scores for every position: (B, L, K). A critic reads its values here."""
        output = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **media)
        return self.head(output.hidden_states[-1]).float()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalize: bool = False, **media: Any
    ) -> torch.Tensor:
        """Scores of whole sequences at their last real token: (B, K). Works for left or right padding."""
        scores = self.token_scores(input_ids, attention_mask, **media)  # (B, L, K)
        last = last_token_index(attention_mask)
        pooled = scores[torch.arange(scores.shape[0], device=scores.device), last]
        if normalize:
            pooled = (pooled - self.norm_mean) / self.norm_std.clamp(min=1e-6)
        return pooled

    def save(self, path: str | Path, processor=None) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        self.backbone.save_pretrained(path)
        if processor is not None:
            processor.save_pretrained(path)
        tensors = {"weight": self.head.weight.detach().contiguous(), "bias": self.head.bias.detach().contiguous(),
                   "norm_mean": self.norm_mean.contiguous(), "norm_std": self.norm_std.contiguous()}
        save_file(tensors, str(path / HEAD_FILE))
        (path / HEAD_CONFIG).write_text(json.dumps({"head_names": list(self.head_names)}))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ScalarHeadModel":
        from safetensors.torch import load_file

        from modalign.models.policy import load_policy

        path = Path(path)
        if not (path / HEAD_FILE).is_file():
            raise FileNotFoundError(f"{path} has no {HEAD_FILE}: not a saved reward model or critic")
        policy = load_policy(path)
        head_names = json.loads((path / HEAD_CONFIG).read_text())["head_names"]
        model = cls(policy.model, head_names)
        tensors = load_file(str(path / HEAD_FILE))
        with torch.no_grad():
            model.head.weight.copy_(tensors["weight"])
            model.head.bias.copy_(tensors["bias"])
            model.norm_mean.copy_(tensors["norm_mean"])
            model.norm_std.copy_(tensors["norm_std"])
        return model


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, for left- or right-padded (B, L) masks."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=1)
