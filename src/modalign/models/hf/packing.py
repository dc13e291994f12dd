"""Media tensors of Hugging Face processors in one row-per-item layout that `torch.cat` batches.

modalign moves media through two slots, `pixel_values` and `input_values`, and batches
examples with `torch.cat` along dim 0 (`collate_sft`, reward pairs, rollouts). Most families
need a side tensor too (Qwen2-VL `image_grid_thw`, Idefics3 `pixel_attention_mask`,
Qwen2-Audio `feature_attention_mask`), so the adapter's processor packs each side tensor into
its media tensor, item by item, and the adapter's model unpacks it:

- `images`  (LLaVA, Gemma 3): pixel_values (N, 3, H, W) as the processor gives them.
- `patches` (Qwen2-VL, Qwen2.5-VL): per image a header row [t, h, w, 0, ...] followed by its
  t*h*w patch rows: (sum_i (1 + t_i h_i w_i), C * tp * p * p).
- `tiles`   (Idefics3): the real tiles of every image with the pixel mask as a 4th channel:
  (N_tiles, 4, H, W); the processor's padding tiles (all zero) are dropped.
- `mel`     (Qwen2-Audio): log-mel features with the frame mask as one more mel row:
  (N_clips, n_mels + 1, frames).

Concatenating packed tensors of several examples along dim 0 packs the union, in order.
"""

from __future__ import annotations

import torch

LAYOUTS = ("images", "patches", "tiles", "mel")
_NOT_PACKED = ("is not in modalign's packed layout {layout!r}: build batches with the processor that "
               "`load_policy` returns, not with the bare Hugging Face processor ({detail})")


def pack(layout: str, output: dict) -> torch.Tensor:
    """The packed media tensor of a processor `output` (a dict of its tensors)."""
    if layout == "images":
        return output["pixel_values"]
    if layout == "patches":
        return _pack_patches(output["pixel_values"], output["image_grid_thw"])
    if layout == "tiles":
        return _pack_tiles(output["pixel_values"], output["pixel_attention_mask"])
    if layout == "mel":
        mask = output["feature_attention_mask"].to(output["input_features"].dtype).unsqueeze(1)  # (N, 1, F)
        return torch.cat([output["input_features"], mask], dim=1)  # (N, M + 1, F)
    raise ValueError(f"unknown media layout {layout!r} (known: {', '.join(LAYOUTS)})")


def unpack(layout: str, packed: torch.Tensor) -> dict[str, torch.Tensor]:
    """The family's own input tensors from a packed media tensor."""
    if layout == "images":
        return {"pixel_values": packed}
    if layout == "patches":
        return _unpack_patches(packed)
    if layout == "tiles":
        if packed.dim() != 4 or packed.shape[1] != 4:
            raise ValueError("pixel_values " + _NOT_PACKED.format(layout=layout, detail=f"shape {tuple(packed.shape)}"))
        # Idefics3 reads (B, N, 3, H, W); one row of all tiles gives the same features in the same order.
        return {"pixel_values": packed[None, :, :3], "pixel_attention_mask": packed[None, :, 3].bool()}
    if layout == "mel":
        mask = packed[:, -1] if packed.dim() == 3 else None  # (N, F), ones then zeros
        if mask is None or not bool(((mask == 0) | (mask == 1)).all()) or bool((mask[:, 1:] > mask[:, :-1]).any()):
            detail = f"shape {tuple(packed.shape)}, its last mel row is no frame mask"
            raise ValueError("input_values " + _NOT_PACKED.format(layout=layout, detail=detail))
        return {"input_features": packed[:, :-1], "feature_attention_mask": mask.long()}
    raise ValueError(f"unknown media layout {layout!r} (known: {', '.join(LAYOUTS)})")


def _pack_patches(pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
    """(P, D) patches + (N, 3) grids -> (N + P, D) with a header row before each image's patches."""
    parts, start = [], 0
    for grid in grid_thw.tolist():
        header = pixel_values.new_zeros(1, pixel_values.shape[1])
        header[0, :3] = torch.tensor(grid, dtype=pixel_values.dtype)
        count = grid[0] * grid[1] * grid[2]
        parts += [header, pixel_values[start : start + count]]
        start += count
    if start != pixel_values.shape[0]:
        raise ValueError(f"image_grid_thw covers {start} patches but pixel_values holds {pixel_values.shape[0]}")
    return torch.cat(parts) if parts else pixel_values


def _unpack_patches(packed: torch.Tensor) -> dict[str, torch.Tensor]:
    """Inverse of `_pack_patches`: {"pixel_values": (P, D), "image_grid_thw": (N, 3)}."""
    if packed.dim() != 2 or packed.shape[1] < 3:
        raise ValueError("pixel_values " + _NOT_PACKED.format(layout="patches", detail=f"shape {tuple(packed.shape)}"))
    grids, rows, position = [], [], 0
    while position < packed.shape[0]:
        header = packed[position, :3]
        grid = [int(v) for v in header.tolist()]
        count = grid[0] * grid[1] * grid[2]
        if not torch.equal(header, header.round()) or min(grid) < 1 or position + 1 + count > packed.shape[0]:
            detail = f"row {position} is no [t, h, w] header: {header.tolist()}"
            raise ValueError("pixel_values " + _NOT_PACKED.format(layout="patches", detail=detail))
        grids.append(grid)
        rows.append(packed[position + 1 : position + 1 + count])
        position += 1 + count
    return {"pixel_values": torch.cat(rows), "image_grid_thw": torch.tensor(grids, dtype=torch.long, device=packed.device)}


def _pack_tiles(pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """(B, N, 3, H, W) + (B, N, H, W) -> (N_real, 4, H, W), dropping the all-zero padding tiles."""
    tiles = pixel_values.flatten(0, 1)  # (B * N, 3, H, W)
    masks = pixel_mask.flatten(0, 1).to(tiles.dtype).unsqueeze(1)  # (B * N, 1, H, W)
    real = (tiles != 0).flatten(1).any(1)  # Idefics3's own test for padding tiles
    return torch.cat([tiles, masks], dim=1)[real]
