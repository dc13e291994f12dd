"""Media -> one feature vector per placeholder token, through each family's own encoder code."""

from __future__ import annotations

from typing import Sequence

import torch


def flat_features(pooled: torch.Tensor | Sequence[torch.Tensor], width: int) -> torch.Tensor:
    """A family's `pooler_output` (a tensor or one tensor per image) as (N_tok, D) rows, in order."""
    if isinstance(pooled, torch.Tensor):
        return pooled.reshape(-1, width)
    parts = [part.reshape(-1, width) for part in pooled]
    return torch.cat(parts) if parts else torch.zeros(0, width)


def encode_images(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Image features from the model's own `get_image_features` (vision tower + projector): (N_tok, D)."""
    output = model.get_image_features(**inputs, return_dict=True)
    return flat_features(output.pooler_output, model.config.get_text_config().hidden_size)


def encode_qwen2_audio(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Qwen2-Audio features of the real frames of every clip: (N_tok, D).

    transformers has no `get_audio_features` for Qwen2-Audio; these are the steps of
    `Qwen2AudioModel.forward` (audio tower on the padded window with a frame mask, projector,
    then only the frames of each clip's own length), so the tokens equal the model's own.
    """
    from transformers.masking_utils import create_bidirectional_mask

    base = model.model
    features, frame_mask = inputs["input_features"], inputs["feature_attention_mask"]  # (N, M, F), (N, F)
    tower = base.audio_tower
    feat_lengths, out_lengths = tower._get_feat_extract_output_lengths(frame_mask.sum(-1))
    positions = (features.shape[-1] - 2) // 2 + 1  # encoder positions after the stride-2 convolution
    keep = torch.arange(positions, device=features.device)[None] < feat_lengths[:, None]  # (N, T)
    mask = create_bidirectional_mask(config=tower.config,
                                     inputs_embeds=torch.zeros(features.shape[0], positions, 1, dtype=tower.dtype),
                                     attention_mask=keep.long())
    hidden = tower(features.to(tower.dtype), attention_mask=mask).last_hidden_state  # (N, T / 2, d_audio)
    projected = base.multi_modal_projector(hidden)  # (N, T / 2, D)
    real = torch.arange(projected.shape[1], device=features.device)[None] < out_lengths[:, None]
    return projected[real]

