"""Fusion of media tokens into the decoder, and the cacheable media features.

`MediaFeatures` holds every media item of a batch, already projected to the decoder
width, with the batch row each item belongs to. It is what a policy caches per prompt:
rollouts, reference and old-policy passes reuse it instead of encoding pixels again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class MediaFeatures:
    """Encoded media of a batch.

    image: (N_img, P, D) projected image tokens, items in row-major order, or None
    image_rows: (N_img,) batch row of each image
    audio: (N_aud, T, D) projected audio tokens, or None
    audio_rows: (N_aud,) batch row of each clip
    """

    image: torch.Tensor | None = None
    image_rows: torch.Tensor | None = None
    audio: torch.Tensor | None = None
    audio_rows: torch.Tensor | None = None

    def select_rows(self, rows: torch.Tensor) -> "MediaFeatures":
        """Features for a new batch whose row r is old row `rows[r]` (e.g. G samples per prompt)."""
        image, image_rows = _select(self.image, self.image_rows, rows)
        audio, audio_rows = _select(self.audio, self.audio_rows, rows)
        return MediaFeatures(image, image_rows, audio, audio_rows)

    def repeat_interleave(self, times: int, batch_size: int) -> "MediaFeatures":
        rows = torch.arange(batch_size, device=self.device).repeat_interleave(times)
        return self.select_rows(rows)

    @property
    def device(self) -> torch.device:
        """Where the features are (the encoding model's device); the CPU when there are none."""
        rows = self.image_rows if self.image_rows is not None else self.audio_rows
        return rows.device if rows is not None else torch.device("cpu")

    def detach(self) -> "MediaFeatures":
        return MediaFeatures(
            None if self.image is None else self.image.detach(), self.image_rows,
            None if self.audio is None else self.audio.detach(), self.audio_rows,
        )


def _select(items: torch.Tensor | None, item_rows: torch.Tensor | None, rows: torch.Tensor):
    if items is None or item_rows is None:
        return None, None
    # (R, N_items) item i belongs to new row r; nonzero lists them row by row, items in order within a row
    new_rows, order = (item_rows[None, :] == rows.to(item_rows.device)[:, None]).nonzero(as_tuple=True)
    return items[order], new_rows


def place_media_tokens(
    embeds: torch.Tensor, input_ids: torch.Tensor, token_id: int, items: torch.Tensor | None, kind: str
) -> torch.Tensor:
    """Early fusion: write media tokens where the placeholders stand.

    embeds: (B, L, D); items: (N, P, D). Positions of `token_id` in `input_ids` must
    number exactly N * P in the prefill step; decode steps carry no placeholders.
    """
    slots = input_ids == token_id
    n_slots = int(slots.sum())
    if n_slots == 0:
        return embeds
    n_given = 0 if items is None else items.shape[0] * items.shape[1]
    if n_slots != n_given:
        per_item = "?" if items is None else items.shape[1]
        raise ValueError(
            f"{n_slots} {kind} placeholder tokens in input_ids but {n_given} {kind} tokens given "
            f"({per_item} per {kind}); the text and the media of the batch do not match"
        )
    return embeds.masked_scatter(slots.unsqueeze(-1), items.reshape(-1, items.shape[-1]).to(embeds.dtype))


def media_memory(media: MediaFeatures | None, batch_size: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row concatenation of a row's media tokens, right-padded.

    Returns memory (B, M, D) and its mask (B, M) with True on real tokens. M >= 1: a
    row without media gets one masked slot (the caller adds a null token).
    """
    per_row: list[list[torch.Tensor]] = [[] for _ in range(batch_size)]
    if media is not None:
        for items, rows in ((media.image, media.image_rows), (media.audio, media.audio_rows)):
            if items is None:
                continue
            for item, row in zip(items, rows.tolist()):
                per_row[row].append(item)
    rows_cat = [torch.cat(chunks) if chunks else torch.zeros(0, width, device=device) for chunks in per_row]
    longest = max(1, max(chunk.shape[0] for chunk in rows_cat))
    memory = torch.zeros(batch_size, longest, width, device=device)
    mask = torch.zeros(batch_size, longest, dtype=torch.bool, device=device)
    for row, chunk in enumerate(rows_cat):
        memory[row, : chunk.shape[0]] = chunk
        mask[row, : chunk.shape[0]] = True
    return memory, mask


class GatedCrossAttention(nn.Module):
    """Tanh-gated cross-attention block (Flamingo, Alayrac et al. 2022, eq. 1).

    The gates start at 0, so the block begins as the identity and opens as it learns.
    A learned null memory token lets rows without media attend somewhere.
    """

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff_norm = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.ff_gate = nn.Parameter(torch.zeros(1))
        self.null = nn.Parameter(torch.zeros(1, 1, width))

    def forward(self, hidden: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        # hidden: (B, L, D); memory: (B, M, D); memory_mask: (B, M) True = real
        batch = hidden.shape[0]
        keys = torch.cat([self.null.expand(batch, -1, -1), memory], dim=1)
        ignore = torch.cat([torch.zeros(batch, 1, dtype=torch.bool, device=hidden.device), ~memory_mask], dim=1)
        attended, _ = self.attn(self.norm(hidden), keys, keys, key_padding_mask=ignore, need_weights=False)
        hidden = hidden + torch.tanh(self.attn_gate) * attended
        return hidden + torch.tanh(self.ff_gate) * self.ff(self.ff_norm(hidden))


class WeightedSumFusion(nn.Module):
    """Learned per-modality gates over pooled media (weighted-sum fusion).

    Each item is pooled by Q learned queries (attention pooling) and projected to one
    vector; items of a modality in a row are averaged; the modalities present in the
    row are combined with softmax(gates) restricted to them. Output: (B, D), added to
    every token embedding of the row.
    """

    modalities = ("image", "audio")

    def __init__(self, width: int, heads: int, queries: int) -> None:
        super().__init__()
        self.queries = nn.ParameterDict({m: nn.Parameter(torch.randn(queries, width) * 0.02) for m in self.modalities})
        self.pool = nn.ModuleDict({m: nn.MultiheadAttention(width, heads, batch_first=True) for m in self.modalities})
        self.project = nn.ModuleDict({m: nn.Linear(queries * width, width) for m in self.modalities})
        self.gates = nn.Parameter(torch.zeros(len(self.modalities)))

    def forward(self, media: MediaFeatures | None, batch_size: int, width: int, device) -> torch.Tensor:
        pooled = torch.zeros(len(self.modalities), batch_size, width, device=device)  # (M, B, D)
        present = torch.zeros(len(self.modalities), batch_size, dtype=torch.bool, device=device)
        for index, modality in enumerate(self.modalities):
            items = None if media is None else getattr(media, modality)
            if items is None or items.shape[0] == 0:
                continue
            rows = getattr(media, f"{modality}_rows")
            queries = self.queries[modality].unsqueeze(0).expand(items.shape[0], -1, -1)
            summary, _ = self.pool[modality](queries, items, items, need_weights=False)  # (N, Q, D)
            vectors = self.project[modality](summary.flatten(1))  # (N, D)
            totals = torch.zeros(batch_size, width, device=device).index_add(0, rows, vectors)
            counts = torch.zeros(batch_size, device=device).index_add(0, rows, torch.ones_like(rows, dtype=torch.float))
            pooled[index] = totals / counts.clamp(min=1).unsqueeze(-1)
            present[index] = counts > 0
        # A large negative (not -inf) keeps softmax finite for rows without media, whose weights are then zeroed.
        logits = self.gates.unsqueeze(-1).expand(-1, batch_size).masked_fill(~present, -1e4)
        weights = torch.softmax(logits, dim=0) * present  # (M, B)
        return (weights.unsqueeze(-1) * pooled).sum(0)
