"""Guards that keep media from being lost silently.

`reject_raw_media`: the family's own processor outputs (`image_grid_thw`, `input_features`, ...)
passed straight to the adapter would be ignored next to `inputs_embeds`; they are refused.

Debug mode: prove that the media reach the decoder, on every forward and every generation prefill.
Off by default (it costs a comparison per call). Turn it on per model (`model.debug_media =
True`) or for a whole run with the environment variable `MODALIGN_DEBUG_MEDIA=1`. The check
sits on the decoder's own input (a forward pre-hook), so it also catches a family's forward
that would overwrite or drop the features after the adapter placed them.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from modalign.models.hf.features import PlaceholderFeatures

DEBUG_ENV = "MODALIGN_DEBUG_MEDIA"
# Media inputs of the families' own processors; the adapter takes them packed (`packing`) instead.
RAW_MEDIA_KEYS = ("image_grid_thw", "pixel_attention_mask", "input_features", "feature_attention_mask",
                  "mm_token_type_ids", "token_type_ids", "image_sizes", "pixel_values_videos", "video_grid_thw")


def reject_raw_media(kwargs: dict, where: str) -> None:
    """Refuse a family's raw processor inputs: the model runs on `inputs_embeds` and would drop them unseen."""
    raw = sorted(key for key in RAW_MEDIA_KEYS if kwargs.get(key) is not None)
    if raw:
        raise ValueError(f"{where}: got the Hugging Face processor's own inputs {raw}; pass the batch of the "
                         f"processor that `load_policy` returns (media packed into pixel_values / input_values)")


def debug_from_env() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


@contextmanager
def media_reach_decoder(decoder: nn.Module, input_ids: torch.Tensor, placeholder_id: int,
                        media: PlaceholderFeatures, where: str) -> Iterator[None]:
    """Raise unless the decoder runs and reads, at every placeholder of `input_ids` (B, L), its media feature."""
    calls: list[int] = []

    def check(module, args, kwargs) -> None:
        embeds = kwargs.get("inputs_embeds")
        if embeds is None or embeds.shape[:2] != input_ids.shape:
            return  # a decoding step (one new token) or a call this check does not cover
        calls.append(1)
        placed = embeds[input_ids == placeholder_id]  # (N_tok, D)
        expected = media.tokens.to(placed.dtype)
        if placed.shape != expected.shape or not torch.allclose(placed, expected):
            raise AssertionError(f"{where}: the decoder's input at the {int(placed.shape[0])} media placeholder "
                                 f"tokens is not the {expected.shape[0]} media feature tokens: the media were lost")

    handle = decoder.register_forward_pre_hook(check, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
    if not calls:
        raise AssertionError(f"{where}: the decoder never read the prompt with its media")
