"""Forward + backward of the demo's image encoder on one SFT batch, and of its stem's parts.

    OMP_NUM_THREADS=2 PYTHONPATH=src python bench/demo_image_encoder.py

The built-in model at the demo's size (48-pixel images, 16-pixel patches, width 128, 2 layers), a batch of
32 random images; wall milliseconds per forward + backward after 3 warm-up passes (30 passes). Each stem
part is timed on its own input (with requires_grad where the demo's has it), so the parts add up only
roughly. bench/results/demo_speed.md, Part 6.
"""

from __future__ import annotations

import time

import torch

from modalign.models.tinyvlm.encoders import PatchImageEncoder


def ms_per_pass(module: torch.nn.Module, inputs: torch.Tensor, passes: int = 30) -> float:
    for _ in range(3):
        module(inputs).sum().backward()
    start = time.perf_counter()
    for _ in range(passes):
        module(inputs).sum().backward()
    return (time.perf_counter() - start) / passes * 1000


def main() -> None:
    torch.manual_seed(0)
    encoder = PatchImageEncoder(image_size=48, patch_size=16, width=128, layers=2, dropout=0.0)
    images = torch.randn(32, 3, 48, 48)  # (N, 3, H, W)
    stem = encoder.patchify
    print(f"image encoder: {ms_per_pass(encoder, images):.1f} ms")
    print(f"stem: {ms_per_pass(stem, images):.1f} ms")
    print(f"stem conv1 + GroupNorm + GELU (full resolution): {ms_per_pass(stem[:3], images):.1f} ms")
    first = stem[:3](images).detach().requires_grad_()
    print(f"stem conv2 (3x3, stride 2): {ms_per_pass(stem[3], first):.1f} ms")
    second = stem[3:6](first).detach().requires_grad_()
    print(f"stem conv3 (patches): {ms_per_pass(stem[6], second):.1f} ms")


if __name__ == "__main__":
    main()
