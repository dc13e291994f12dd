"""Every output of a Hugging Face processor, carried per batch row: the generic path's media.

A model that modalign has no fast path for reads its processor's outputs as they are
(`pixel_values`, `image_sizes`, `image_grid_thw`, `pixel_attention_mask`, `input_features`,
`feature_attention_mask`, ...). modalign batches examples by concatenating their media
(`collate_sft`, reward pairs) and repeats a prompt's media for its G samples, so these outputs
are kept per batch row (`ProcessorMedia.rows`) and turned into the model's keyword arguments
only at the call (`model_inputs`): the row tensors are concatenated along dim 0, zero-padded
where their other sizes differ (as the processors pad several images of one batch).

Per-token outputs (`token_type_ids`, `mm_token_type_ids`: (B, L) like `input_ids`) are not
stored: they are a function of the token id in every processor (1 on image tokens, ...), so the
processor records that table (`token_types`) and `token_type_inputs` rebuilds them for any ids,
padding and answer tokens included (0 there, as TRL extends them over generated tokens).
Per-position outputs that are no function of the id (Mllama's `cross_attention_mask` (1, L, N, T),
Kosmos-2's `image_embeds_position_mask` (1, L)) are kept per row (`positional`) and laid over the
row's real tokens from its first one, extended with their last value over answer and sampled tokens
(as the models' own `generate` extends them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F


@dataclass
class ProcessorMedia:
    """Processor outputs of B rows.

    rows: one dict per batch row of its own media tensors, or one-entry lists (a processor output that is a
        list over the texts, Fuyu's patches); empty for a text-only row
    token_types: per-token output name -> {token id: value} (ids not listed get 0)
    positional: names of the rows' per-position outputs ((1, L_row, ...) from the row's first real token)
    """

    rows: list[dict[str, torch.Tensor]]
    token_types: dict[str, dict[int, int]] = field(default_factory=dict)
    positional: frozenset[str] = frozenset()

    @property
    def batch_size(self) -> int:
        return len(self.rows)

    def select_rows(self, rows: torch.Tensor) -> "ProcessorMedia":
        """Media for a new batch whose row r is old row `rows[r]`."""
        return ProcessorMedia([self.rows[r] for r in rows.tolist()], self.token_types, self.positional)

    def repeat_interleave(self, times: int, batch_size: int) -> "ProcessorMedia":
        """Each row repeated `times` times in place (rows b*times .. b*times+times-1 are row b)."""
        if batch_size != self.batch_size:
            raise ValueError(f"media hold {self.batch_size} rows, not {batch_size}")
        return self.select_rows(torch.arange(batch_size).repeat_interleave(times))

    def detach(self) -> "ProcessorMedia":
        return self

    def to(self, device: torch.device | str) -> "ProcessorMedia":
        def move(value):
            return value.to(device) if isinstance(value, torch.Tensor) else [move(v) for v in value]

        return ProcessorMedia([{k: move(v) for k, v in row.items()} for row in self.rows], self.token_types,
                              self.positional)

    def model_inputs(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The model's media keyword arguments for the B rows (floating tensors cast to `dtype`)."""
        names = list(dict.fromkeys(name for row in self.rows for name in row if name not in self.positional))
        inputs = {name: _join([row[name] for row in self.rows if name in row]) for name in names}
        if dtype is not None:
            inputs = {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                      for k, v in inputs.items()}
        return inputs

    def token_type_inputs(self, input_ids: torch.Tensor,
                          attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """(B, L, ...) per-token outputs for `input_ids` (B, L): from the recorded id -> value tables, and the
        rows' per-position outputs laid from each row's first real token (`attention_mask`; none: column 0)."""
        inputs = {}
        for name, table in self.token_types.items():
            values = torch.zeros_like(input_ids)
            for token, value in table.items():
                values = values.masked_fill(input_ids == token, value)
            inputs[name] = values
        for name in sorted(self.positional):
            inputs[name] = self._positional(name, input_ids, attention_mask)
        return inputs

    def _positional(self, name: str, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, L, ...) the rows' `name` values (1, L_row, ...) from their first real token on, the last value
        repeated after them (answer and sampled tokens), zeros before them (padding) and in rows without one."""
        given = [row[name][0] for row in self.rows if name in row]  # (L_row, ...)
        length = input_ids.shape[1]
        trailing = [max(g.shape[d] for g in given) for d in range(1, given[0].dim())]
        values = torch.zeros(input_ids.shape[0], length, *trailing, dtype=given[0].dtype, device=input_ids.device)
        starts = (attention_mask.long().argmax(1) if attention_mask is not None
                  else torch.zeros(input_ids.shape[0], dtype=torch.long))
        for r, row in enumerate(self.rows):
            if name not in row:
                continue
            value, start = row[name][0], int(starts[r])
            value = F.pad(value, [a for d in reversed(range(1, value.dim()))
                                  for a in (0, trailing[d - 1] - value.shape[d])])
            count = min(value.shape[0], length - start)
            values[r, start : start + count] = value[:count]
            values[r, start + count :] = value[-1]
        return values


def _join(parts: list):
    """Rows' values of one output: tensors concatenated (`pad_cat`), lists (one item per image) chained."""
    if isinstance(parts[0], torch.Tensor):
        return pad_cat(parts)
    return [item for part in parts for item in part]


def pad_cat(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate along dim 0, zero-padding every other dim to the largest size (processors pad so too)."""
    if len(parts) == 1:
        return parts[0]
    sizes = [max(p.shape[d] for p in parts) for d in range(1, parts[0].dim())]
    padded = []
    for part in parts:
        pad = [amount for d in reversed(range(1, part.dim())) for amount in (0, sizes[d - 1] - part.shape[d])]
        padded.append(F.pad(part, pad) if any(pad) else part)
    return torch.cat(padded)


def concat_media(parts: Sequence) -> torch.Tensor | ProcessorMedia | None:
    """The media of several examples' batches as one batch's (rows in order), for every processor's media.

    Tensors (the built-in model, the fast-path families' packed layouts) concatenate along dim 0;
    `ProcessorMedia` (the generic path) concatenate their rows. None parts (no media) are skipped.
    """
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    if isinstance(parts[0], ProcessorMedia):
        tables: dict[str, dict[int, int]] = {}
        for part in parts:
            for name, table in part.token_types.items():
                tables.setdefault(name, {}).update(table)
        positional = frozenset().union(*(part.positional for part in parts))
        return ProcessorMedia([row for part in parts for row in part.rows], tables, positional)
    return torch.cat(parts)
