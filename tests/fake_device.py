"""A second device for tests on a machine without a GPU: `fakegpu:0`, real values, strict placement.

Why this and not the `meta` device: meta tensors have no values, so sampling, data-dependent
indexing (`nonzero`, boolean masks), `.item()` and the recipes' own checks cannot run on them, and
fused AdamW refuses meta parameters. Here a tensor "on fakegpu:0" is a wrapper subclass
(`OnFakeDevice`) that reports `device == fakegpu:0` and holds a real CPU tensor; torch sees a
separate device type (PyTorch's PrivateUse1 backend, renamed and registered from Python with
`torch.utils.backend_registration._setup_privateuseone_for_python_backend`), so `.to(device)`,
`nn.Module.to`, `x.device`, factories with `device=` and the autograd engine treat it as one.

Every op, forward and backward, goes through `FakeDeviceMode.__torch_dispatch__`, which
- refuses an op whose tensor arguments sit on both devices, as CUDA does (a 0-dim CPU tensor
  is allowed, as torch allows CPU scalars with CUDA tensors; CPU index tensors are allowed in
  indexing, as torch moves them; copies across devices are allowed);
- runs the op on the CPU tensors inside and wraps the results back on fakegpu:0;
- counts the reads back to the host (`.item()`, `.tolist()`, `.cpu()`), as a GPU would sync.
"""

from __future__ import annotations

import contextlib
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode, return_and_correct_aliasing
from torch.utils._pytree import tree_flatten, tree_map

NAME = "fakegpu"
aten = torch.ops.aten
_CROSS_DEVICE = {aten.copy_.default, aten._to_copy.default, aten._copy_from.default,
                 aten._copy_from_and_resize.default}
_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


class MixedDevices(AssertionError):
    """An op got tensors on two devices: a placement is missing."""


_KERNELS = torch.library.Library("aten", "IMPL")


def register() -> None:
    """Make `fakegpu` a device type torch knows (once per process; PrivateUse1 can be renamed once)."""
    if torch._C._get_privateuse1_backend_name() == NAME:
        return
    from torch.utils.backend_registration import _DummyBackendModule, _setup_privateuseone_for_python_backend

    class FakeBackendModule(_DummyBackendModule):
        """What torch asks of a device's module beyond the dummy's: the device stays registered for the rest
        of the process, so later tests' autocast (gradient checkpointing) and `fork_rng` ask it too."""

        def get_amp_supported_dtype(self) -> list:
            return [torch.bfloat16]

        def get_rng_state(self, device=None) -> torch.Tensor:
            return torch.get_rng_state()  # the values live on the CPU: so does their random state

        def set_rng_state(self, state, device=None) -> None:
            torch.set_rng_state(state)

    _setup_privateuseone_for_python_backend(NAME, backend_module=FakeBackendModule())
    # torch.tensor(data, device=...) and indexing with a list build the tensor below the Python dispatch
    # key, so those calls reach the backend's own kernels: allocation and the copy of the values.
    _KERNELS.impl("empty_strided", lambda size, stride, **kw: OnFakeDevice(torch.empty_strided(size, stride,
                                                                                   dtype=kw.get("dtype"))),
                  "PrivateUse1")
    _KERNELS.impl("empty.memory_format", lambda size, **kw: OnFakeDevice(torch.empty(size, dtype=kw.get("dtype"))),
                  "PrivateUse1")
    _KERNELS.impl("_copy_from", _copy_from, "PrivateUse1")
    _KERNELS.impl("_local_scalar_dense", _item, "PrivateUse1")


def _item(tensor: torch.Tensor):
    _active_reads()["item"] += 1
    return tensor.elem.item()


def _copy_from(src: torch.Tensor, dst: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
    values = src.elem if isinstance(src, OnFakeDevice) else src
    (dst.elem if isinstance(dst, OnFakeDevice) else dst).copy_(values)
    return dst


register()
DEVICE = torch.device(f"{NAME}:0")


class OnFakeDevice(torch.Tensor):
    """A tensor on fakegpu:0: `elem` holds its values on the CPU."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor) -> "OnFakeDevice":
        made = torch.Tensor._make_wrapper_subclass(cls, elem.size(), strides=elem.stride(), dtype=elem.dtype,
                                                   storage_offset=elem.storage_offset(), layout=elem.layout,
                                                   device=DEVICE, requires_grad=elem.requires_grad)
        made.elem = elem
        return made

    def __repr__(self, **kwargs) -> str:
        return f"OnFakeDevice({self.elem!r})"

    def __tensor_flatten__(self):  # a traceable wrapper: nn.Module.to swaps parameters for it
        return ["elem"], None

    @staticmethod
    def __tensor_unflatten__(inner, meta, size, stride):
        return OnFakeDevice(inner["elem"])

    def tolist(self):  # torch refuses .tolist() on any tensor subclass; a GPU tensor copies to the host
        _active_reads()["tolist"] += 1
        return self.elem.tolist()

    def __reduce_ex__(self, protocol):  # torch.save of a checkpoint: the values, rebuilt on fakegpu:0 by torch.load
        return OnFakeDevice, (self.elem,)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


def _active_reads() -> Counter:
    """The host-read counter of the innermost active `FakeDeviceMode` (a throwaway one outside it)."""
    return _MODES[-1].host_reads if _MODES else Counter()


def _where(t: torch.Tensor) -> str | None:
    """'fake', 'cpu', or None for what may go with either (a 0-dim CPU tensor)."""
    if isinstance(t, OnFakeDevice):
        return "fake"
    return None if t.dim() == 0 and t.device.type == "cpu" else t.device.type


def _check(func, args, kwargs) -> None:
    checked = (args[:1] + args[2:]) if func in _INDEXING else args  # indices may stay on the CPU
    tensors = [t for t in tree_flatten((checked, kwargs))[0] if isinstance(t, torch.Tensor)]
    places = {_where(t) for t in tensors} - {None}
    if len(places) > 1:
        shapes = ", ".join(f"{_where(t) or 'cpu scalar'} {tuple(t.shape)}" for t in tensors)
        raise MixedDevices(f"{func}: tensors on {DEVICE} and on the CPU ({shapes}): a .to(device) is missing")


def _run(func, args, kwargs):
    """The op on the CPU values inside; its results on the device when an input (or `device=`) was there."""
    on_device = any(isinstance(t, OnFakeDevice) for t in tree_flatten((args, kwargs))[0])
    wanted = kwargs.get("device")
    if func not in _CROSS_DEVICE:
        _check(func, args, kwargs)
    if isinstance(wanted, torch.device) and wanted.type == NAME:  # a factory or .to(device)
        kwargs, on_device = {**kwargs, "device": torch.device("cpu")}, True
    elif func is aten._to_copy.default and wanted is not None:  # .to("cpu"), .cpu(): back to the host
        if on_device:
            _active_reads()["cpu"] += 1
        on_device = False
    if func is aten._local_scalar_dense.default:  # .item(), float(t), bool(t)
        if on_device:
            _active_reads()["item"] += 1
        on_device = False
    plain = tree_map(lambda t: t.elem if isinstance(t, OnFakeDevice) else t, (args, kwargs))
    out = func(*plain[0], **plain[1])
    if not on_device:
        return out
    if _MODES:
        _MODES[-1].device_ops += 1
    wrapped = tree_map(lambda t: OnFakeDevice(t) if isinstance(t, torch.Tensor) else t, out)
    return return_and_correct_aliasing(func, args, kwargs, wrapped)


class FakeDeviceMode(TorchDispatchMode):
    """Active while a step runs: factories with `device=fakegpu` are intercepted here."""

    def __init__(self) -> None:
        super().__init__()
        self.host_reads: Counter = Counter()  # reads back to the host: "item", "tolist", "cpu"
        self.device_ops = 0  # ops that ran on the device

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})

    def __enter__(self):
        _MODES.append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        _MODES.remove(self)
        return super().__exit__(*exc)


_MODES: list[FakeDeviceMode] = []


@contextlib.contextmanager
def fake_device():
    """`with fake_device() as mode:` models and tensors may go to `DEVICE`; mixing devices raises."""
    with FakeDeviceMode() as mode:
        yield mode


torch.serialization.add_safe_globals([OnFakeDevice])  # run checkpoints are read with weights_only=True
