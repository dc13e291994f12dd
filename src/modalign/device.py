"""One device rule: every tensor lives on the device of the model that consumes it.

The device is chosen once per run (`--set device=auto|cpu|cuda|cuda:N`, `resolve_device`):
`auto` is accelerate's device for this process (cuda:LOCAL_RANK when there is a GPU, else
the CPU). Models are moved there when a recipe loads them; every batch, media feature, packed
row, rollout and reward a recipe builds is built on the CPU (tokenizers and media decoders
live there) and moved with `to_device` where it is handed to a model, to the device that
model's parameters are on (`model_device`). `tests/test_device_discipline.py` runs the steps
with the models on a second device and fails on any op that mixes devices.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, TypeVar

import torch

T = TypeVar("T")

DEVICE_HELP = ("Device of the models and tensors: auto (accelerate's: cuda:LOCAL_RANK with a GPU, else cpu), "
               "cpu, cuda or cuda:N.")


@functools.lru_cache(maxsize=None)
def resolve_device(spec: str = "auto") -> torch.device:
    """The `device` config value as a torch device, resolved once per process; a ConfigError names a device
    this machine lacks."""
    from modalign.config import ConfigError

    if spec in ("", "auto"):
        from modalign.dist import processes

        return processes().accelerator.device
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"device={spec!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None)  # torch.cuda, torch.mps, torch.xpu, a registered backend
    if backend is None or not backend.is_available():
        raise ConfigError(f"device={spec!r}: this machine has no {device.type} device (use auto or cpu)")
    if device.index is None and device.type == "cuda":
        from modalign.dist import processes

        device = processes().accelerator.device  # cuda:LOCAL_RANK: each process its own GPU
    if device.index is not None and device.index >= backend.device_count():
        raise ConfigError(f"device={spec!r}: this machine has {backend.device_count()} {device.type} device(s)")
    return device


def model_device(model: Any) -> torch.device:
    """The device of `model`'s parameters (any wrapper with `parameters()`), else its `device` (a view
    such as a LoRA policy's `AdapterDisabled`); the CPU if it has neither."""
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    if param is not None:
        return param.device
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else torch.device("cpu")


def to_device(value: T, device: torch.device | str) -> T:
    """`value` with every tensor in it on `device`: tensors, dicts, lists, tuples, dataclasses (e.g.
    `MediaFeatures`, `PackedRows`) and objects with their own `.to` (`BatchFeature`, `ProcessorMedia`).

    A tensor already there is returned as is (no copy)."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a NamedTuple
        return type(value)(*(to_device(v, device) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    if hasattr(value, "to") and callable(value.to) and not isinstance(value, torch.nn.Module):
        return value.to(device)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: to_device(getattr(value, f.name), device)
                                             for f in dataclasses.fields(value) if f.init})
    return value


def placed(policy: T, spec: str) -> T:
    """`policy` (a `Policy`) with its model moved to the device of `spec` (`resolve_device`), as loaded."""
    policy.model.to(resolve_device(spec))
    return policy
