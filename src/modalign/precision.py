"""Mixed precision: forward passes under bf16 autocast; weights, gradients and optimizer state stay fp32.

This is what `accelerate`'s `mixed_precision="bf16"` and TRL's `bf16=True` (its default) do.
The recipes wrap each forward pass (sampling, old-policy, reference and critic passes, the
training forward) in `autocast(cfg.precision, model)` and run backward and the optimizer step
outside it. Each region is short on purpose: autocast keeps the bf16 copy of every trainable
weight until the outermost region exits, so a region that spans an optimizer step would
compute the next forward with the weights from before it. Inside one `generate` call the
copies are made once and reused by every decoding step; that is where bf16 saves the most
on a CPU with AVX512-BF16, where a decoding step's few-row matmuls read every weight
(`docs/scale.md`: in fp32 they run far below the matmul peak).

Log-probs and losses are taken from logits cast to fp32 (`logits.float()` before every
log-softmax), so only the matmuls run in bf16.
"""

from __future__ import annotations

import contextlib
from typing import Literal

Precision = Literal["fp32", "bf16"]
PRECISION_HELP = ("fp32, or bf16: forward passes under bf16 autocast (weights, gradients and optimizer state "
                  "stay fp32; TRL's bf16=True).")


def autocast_settings(precision: str, device) -> tuple[str, object] | None:
    """(device type, dtype) of the autocast `precision` asks for on `device` (a torch.device or its name),
    or None for fp32. The same mapping on every device: bf16 -> bfloat16 autocast on 'cpu', 'cuda', ...
    (accelerate's `mixed_precision="bf16"`). A CUDA GPU without bf16 (before Ampere) is refused by name.

    fp16 is not offered: float16 activations need dynamic loss scaling (a GradScaler around every
    backward and optimizer step) to keep small gradients from underflowing; bf16 has fp32's range.
    """
    import torch  # lazily: configs import this module, and `modalign <command> --help` should not load torch

    if precision == "fp32":
        return None
    if precision != "bf16":
        raise ValueError(f"precision {precision!r}: expected 'fp32' or 'bf16'")
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        from modalign.config import ConfigError

        raise ConfigError(f"precision bf16: the GPU {torch.cuda.get_device_name(device)} has no bf16; "
                          "set precision=fp32")
    return device.type, torch.bfloat16


def autocast(precision: str, model) -> contextlib.AbstractContextManager:
    """bf16 autocast on the device of `model`'s parameters for 'bf16' (`autocast_settings`); nothing for 'fp32'."""
    import torch

    from modalign.device import model_device

    settings = autocast_settings(precision, model_device(model))
    if settings is None:
        return contextlib.nullcontext()
    device_type, dtype = settings
    return torch.autocast(device_type=device_type, dtype=dtype)
