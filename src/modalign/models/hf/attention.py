"""`modalign_sdpa`: transformers' SDPA attention, with bf16 inputs computed in fp32 on a CPU.

Why: under bf16 autocast (`precision: bf16`) SDPA runs in bf16, and torch's CPU SDPA kernel is
slow in bf16 when one token queries the cache, the shape of every decoding step: 0.34 ms against
0.06-0.09 ms with the same tensors in fp32 (torch 2.13, 8 rows, 8 heads of 64, 120 cached
positions, 2 threads on these machines). For whole sequences fp32 costs the same as bf16. On the
19 M-parameter bench model this takes a bf16 rollout of 8 answers x 64 tokens from 0.50 s to 0.35 s.

HF models loaded with `sdpa` are switched to this registered implementation (`use_fp32_cpu_sdpa`);
it is not saved in their config, so a saved model loads with plain `sdpa` anywhere.
"""

from __future__ import annotations

import torch

NAME = "modalign_sdpa"


def fp32_cpu_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, **kwargs):
    """`transformers.integrations.sdpa_attention.sdpa_attention_forward`, in fp32 under CPU autocast.

    The check is on autocast, not on the query's dtype: rotary embeddings with fp32 cos/sin turn
    the bf16 query and key back into fp32 before they get here, and autocast would then cast
    them to bf16 again inside SDPA.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast("cpu", enabled=False):
        output, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                                 **kwargs)
    return output.to(torch.get_autocast_dtype("cpu")), weights


def use_fp32_cpu_sdpa(model: torch.nn.Module) -> None:
    """Switch a transformers model that attends with `sdpa` to `modalign_sdpa` (same masks, same math)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if model.config._attn_implementation != "sdpa":
        return
    AttentionInterface.register(NAME, fp32_cpu_sdpa_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)


def is_sdpa(implementation: str | None) -> bool:
    """Whether an attention implementation takes SDPA's masks (boolean 4-D masks as they are)."""
    return implementation in ("sdpa", NAME)
