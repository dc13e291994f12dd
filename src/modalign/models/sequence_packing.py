"""Sequence packing for SFT: several examples per row instead of one padded row each.

A random batch of ShapesWorld examples pads to ~1.56x its real tokens (one-word answers beside
twenty-word captions). Packing puts several examples into one row of at most `capacity` tokens,

    [example 1 | example 2 | example 3 | pad]

with a block-diagonal causal mask (each token reads only the earlier tokens of its own example)
and positions restarting at 0 for every example, so each token has exactly the context and the
position it has in its own padded row: the same loss (up to float summation order) for fewer
tokens. The next-token loss never crosses examples: an example's first token is a prompt token
(label -100), so the last token of the example before it predicts nothing.

Models opt in with `supports_sequence_packing` (the built-in VLM with early fusion: it takes a 4-D
boolean mask and `position_ids`, and each example's media sit in its own tokens); for any other
model `collate_sft_batch` pads as `collate_sft`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from modalign.device import to_device
from modalign.models.hf.media import concat_media
from modalign.models.inputs import EncodedExample, collate_sft


def can_pack(model) -> bool:
    """True when `model` can train on packed rows (`supports_sequence_packing`)."""
    return bool(getattr(model, "supports_sequence_packing", False))


def pack_examples(batch: Sequence[EncodedExample], capacity: int) -> list[list[EncodedExample]]:
    """First-fit decreasing: examples (longest first) into the first row with room, rows of <= `capacity`
    tokens (an example longer than it gets a row of its own)."""
    rows: list[list[EncodedExample]] = []
    room: list[int] = []
    for item in sorted(batch, key=lambda e: -e.input_ids.shape[0]):
        length = item.input_ids.shape[0]
        slot = next((r for r, free in enumerate(room) if free >= length), None)
        if slot is None:
            rows.append([item])
            room.append(capacity - length)
        else:
            rows[slot].append(item)
            room[slot] -= length
    return rows


def collate_packed(rows: Sequence[Sequence[EncodedExample]], pad_token_id: int,
                   device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Packed rows as model inputs: input_ids, labels, position_ids (R, L), attention_mask (R, 1, L, L).

    Media are concatenated in the order their placeholders appear (row by row, example by example),
    which is the order the model fills placeholders in.
    """
    longest = max(sum(e.input_ids.shape[0] for e in row) for row in rows)
    input_ids = torch.full((len(rows), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), longest), -100, dtype=torch.long)
    positions = torch.zeros((len(rows), longest), dtype=torch.long)
    segment = torch.zeros((len(rows), longest), dtype=torch.long)  # 0 on padding, k on the row's k-th example
    for r, row in enumerate(rows):
        start = 0
        for k, item in enumerate(row, start=1):
            length = item.input_ids.shape[0]
            input_ids[r, start : start + length] = item.input_ids
            labels[r, start + item.prompt_length : start + length] = item.input_ids[item.prompt_length :]
            positions[r, start : start + length] = torch.arange(length)
            segment[r, start : start + length] = k
            start += length
    index = torch.arange(longest)
    causal = index[None, :] <= index[:, None]  # (L, L) key j <= query i
    same = (segment[:, :, None] == segment[:, None, :]) & (segment[:, None, :] > 0)  # (R, L, L)
    # padding queries read themselves only (a query without any key gives NaN in softmax)
    allowed = (same & causal) | torch.eye(longest, dtype=torch.bool)
    out = {"input_ids": input_ids, "attention_mask": allowed.unsqueeze(1), "position_ids": positions,
           "labels": labels}
    ordered = [item for row in rows for item in row]
    for key in ("pixel_values", "input_values"):
        media = concat_media([getattr(item, key) for item in ordered])
        if media is not None:
            out[key] = media
    return to_device(out, device)


def collate_sft_batch(batch: Sequence[EncodedExample], pad_token_id: int, device: torch.device | str, pack: bool,
                      capacity: int) -> dict[str, torch.Tensor]:
    """The SFT step's inputs: packed rows of <= `capacity` tokens when `pack`, else one padded row per example."""
    if pack:
        # rows no longer than the batch's longest example: fewer rows at the padded length (measured: rows of
        # max_length=128 cost as much as padding, their attention masks being 4x larger)
        longest = max(item.input_ids.shape[0] for item in batch)
        return collate_packed(pack_examples(batch, min(capacity, longest)), pad_token_id, device)
    return collate_sft(batch, pad_token_id, device)
