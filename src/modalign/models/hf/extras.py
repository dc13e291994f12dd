"""The inputs some families need besides `inputs_embeds`, rebuilt from the token ids.

The adapter passes `inputs_embeds` (media already in place), so the model no longer sees
`input_ids`. Two families read more than the embeddings:

- Qwen2-VL / Qwen2.5-VL: 3-D M-RoPE positions (Wang et al. 2024, sec. 2.1) computed from the
  image grids; the model's own `get_rope_index` builds them. Without `input_ids` the model
  would otherwise reuse `rope_deltas` cached by the last `generate` call.
- Gemma 3: `token_type_ids` (1 on image tokens) for bidirectional attention inside an image.
"""

from __future__ import annotations

import torch

from modalign.models.hf.families import Family
from modalign.models.hf.features import PlaceholderFeatures


def token_types(input_ids: torch.Tensor, placeholder_id: int) -> torch.Tensor:
    """(B, L) 1 on media placeholder tokens, 0 elsewhere (the processors' `mm_token_type_ids`)."""
    return (input_ids == placeholder_id).long()


def forward_inputs(family: Family, model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                   media: PlaceholderFeatures, placeholder_id: int) -> dict[str, torch.Tensor]:
    """Extra keyword arguments of the model's forward for this batch."""
    if family.positions == "mrope":
        positions, _ = model.model.get_rope_index(
            input_ids, token_types(input_ids, placeholder_id), image_grid_thw=media.grids,
            attention_mask=attention_mask)  # (3, B, L)
        return {"position_ids": positions}
    if family.image_token_types:
        return {"token_type_ids": token_types(input_ids, placeholder_id)}
    return {}


def generation_inputs(family: Family, input_ids: torch.Tensor, media: PlaceholderFeatures,
                      placeholder_id: int) -> dict[str, torch.Tensor]:
    """Extra keyword arguments of `generate`: what its own position / mask preparation reads."""
    if family.positions == "mrope":
        grids = media.grids if media.grids is not None and media.grids.shape[0] else None
        return {"image_grid_thw": grids, "mm_token_type_ids": token_types(input_ids, placeholder_id)}
    if family.image_token_types:
        return {"token_type_ids": token_types(input_ids, placeholder_id)}
    return {}
