"""G answers per prompt from one pass over the prompt: its KV cache shared by its G rows.

`generate(num_return_sequences=G)` on B prompts would run every prompt through the model G
times, once per answer row. Here each prompt but its last token runs once (B rows), the KV
cache is repeated to the B * G rows (`Cache.batch_repeat_interleave`, rows b*G .. b*G+G-1
belong to prompt b), and `transformers`' generate continues from it: its first step reads the
last prompt token of every row, then samples as usual. For a vision-language prompt, most of
whose tokens are image tokens, that saves G - 1 of every G prompt passes.

Both model classes (`tinyvlm`, `hf`) use it in their `generate`; `tests/test_rollout.py` and
`tests/test_hf_models.py` check that the answers equal those of the repeated rows.
"""

from __future__ import annotations

from typing import Callable

import torch


def can_share_prompt(input_ids: torch.Tensor, media_token_ids: list[int], repeats: int) -> bool:
    """Worth it and possible: several answers, a prompt of 2+ tokens, and no media token last in a row
    (the continuation reads the last column as plain text)."""
    if repeats < 2 or input_ids.shape[1] < 2:
        return False
    last = input_ids[:, -1]
    return not any(bool((last == token).any()) for token in media_token_ids)


def shared_prompt_cache(forward: Callable, input_ids: torch.Tensor, attention_mask: torch.Tensor, media,
                        repeats: int):
    """The KV cache of every prompt but its last token, computed once per prompt and repeated `repeats`
    times (B rows -> B * repeats rows)."""
    output = forward(input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1], media=media,
                     use_cache=True)
    output.cache.batch_repeat_interleave(repeats)
    return output.cache
