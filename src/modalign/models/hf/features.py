"""Cached media features of a Hugging Face model: one vector per placeholder token.

Every supported family merges media the same way: the encoder's output vectors replace the
placeholder tokens of the text, in order (`inputs_embeds.masked_scatter`). So the cache is
the flat list of those vectors plus how many belong to each batch row, which is all that
`select_rows` needs to build the features of a new batch (G samples per prompt, reward pairs).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class PlaceholderFeatures:
    """Encoded media of a batch of B rows.

    tokens: (N_tok, D) features of every placeholder token, rows in order, left to right
    counts: (B,) placeholder tokens in each row
    grids: (N_img, 3) (t, h, w) grid of each image, rows in order (Qwen2-VL M-RoPE), or None
    grid_rows: (N_img,) batch row of each grid, or None
    """

    tokens: torch.Tensor
    counts: torch.Tensor
    grids: torch.Tensor | None = None
    grid_rows: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.counts.shape[0]

    def select_rows(self, rows: torch.Tensor) -> "PlaceholderFeatures":
        """Features for a new batch whose row r is old row `rows[r]`."""
        rows = rows.to(self.counts.device)
        starts = torch.cumsum(self.counts, 0) - self.counts  # (B,) first token of each row
        index = [torch.arange(starts[r], starts[r] + self.counts[r], device=self.tokens.device) for r in rows.tolist()]
        tokens = self.tokens[torch.cat(index)] if index else self.tokens[:0]
        grids = grid_rows = None
        if self.grids is not None:
            picked = [(self.grid_rows == old).nonzero(as_tuple=True)[0] for old in rows.tolist()]
            grids = self.grids[torch.cat(picked)]
            grid_rows = torch.cat([torch.full_like(p, new) for new, p in enumerate(picked)])
        return PlaceholderFeatures(tokens, self.counts[rows], grids, grid_rows)

    def repeat_interleave(self, times: int, batch_size: int) -> "PlaceholderFeatures":
        """Each row repeated `times` times in place (rows b*times .. b*times+times-1 are row b)."""
        if batch_size != self.batch_size:
            raise ValueError(f"media features hold {self.batch_size} rows, not {batch_size}")
        return self.select_rows(torch.arange(batch_size).repeat_interleave(times))

    def detach(self) -> "PlaceholderFeatures":
        return replace(self, tokens=self.tokens.detach())
