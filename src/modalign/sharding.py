"""FSDP2 for `dist.Processes` under an FSDP config: shard a model, gather and reshard its weights.

accelerate's FSDP plugin reads the config (`configs/accelerate/fsdp.yaml`, `cpu_fsdp.yaml`);
the sharding itself is torch's `fully_shard`, applied here rather than by
`Accelerator.prepare`, because accelerate only shards on GPUs (on a CPU machine it runs
`MULTI_CPU`, plain DDP) and because modalign's wrapper (`dist.Dispatch`) must be the root:
its `forward` routes `encode_media` and `token_scores`, so their weights are gathered too.
The same calls run on GPUs, with NCCL and the process's device.

What is sharded: each transformer layer (the classes the config names in
`fsdp_transformer_layer_cls_to_wrap`, else the model's own `_no_split_modules`) is its own
unit, gathered for its forward and freed after it (`fsdp_reshard_after_forward`); the rest
(embeddings, encoders, head) is the root unit, gathered for the whole wrapped call.
"""

from __future__ import annotations

from typing import Any

import torch


def fsdp_plugin() -> Any:
    """accelerate's FSDP plugin, as `accelerate launch` configured it (FSDP_* environment variables)."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    from modalign.config import ConfigError

    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ConfigError(f"accelerate config: fsdp_version {plugin.fsdp_version}: modalign shards with FSDP2, "
                          "set fsdp_config.fsdp_version: 2 (configs/accelerate/fsdp.yaml)")
    return plugin


def layer_class_names(model: torch.nn.Module, plugin: Any) -> set[str]:
    """The class names of the layers to shard as their own units: the config's list, else `_no_split_modules`
    of every Hugging Face model inside `model` (the policy wraps one)."""
    named = plugin.transformer_cls_names_to_wrap
    if named:
        return set(named)
    return {name for module in model.modules() for name in (getattr(module, "_no_split_modules", None) or [])}


def shard_model(model: torch.nn.Module, optimizer: torch.optim.Optimizer, plugin: Any) -> tuple[Any, Any]:
    """(engine, optimizer): `model`'s layers and then `dist.Dispatch(model)` sharded in place with `fully_shard`;
    `optimizer` (fresh, no state yet) now steps the sharded parameters."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    from modalign.config import ConfigError
    from modalign.dist import Dispatch
    from modalign.memory import enable_gradient_checkpointing
    from modalign.models.hf.lora import is_lora_policy

    assert not optimizer.state, "shard the model before loading an optimizer state"
    if is_lora_policy(model):  # its KL reference is the same weights with the adapter off: sharded too
        raise ConfigError("a LoRA policy does not run under FSDP here: launch with a DDP config "
                          "(configs/accelerate/cpu_ddp.yaml, or accelerate's multi-GPU DDP); its trainable "
                          "adapter is small, so DDP's whole copy per process is the base model alone")
    # the config's `fsdp_activation_checkpointing: true` is `gradient_checkpointing: true`
    enable_gradient_checkpointing(model, bool(plugin.activation_checkpointing))
    names = {id(p): name for name, p in model.named_parameters()}
    groups = [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]
    layers = layer_class_names(model, plugin)
    skeleton = meta_copy(model)  # before sharding: FSDP modules cannot be copied
    options = {"offload_policy": plugin.cpu_offload} if plugin.cpu_offload is not None else {}
    # bottom up: a layer inside a layer (never in practice) would be sharded first
    for module in reversed(list(model.modules())):
        if type(module).__name__ in layers and not isinstance(module, FSDPModule):
            fully_shard(module, reshard_after_forward=plugin.reshard_after_forward, **options)
    # the root keeps its weights gathered from forward to backward (torch's and accelerate's choice for roots)
    engine = fully_shard(Dispatch(model), reshard_after_forward=False, **options)
    engine.__dict__.update(_modalign_reshard=plugin.reshard_after_forward, _modalign_skeleton=skeleton)
    # the root must be the first to initialise: sampling may run the layers before any wrapped call
    engine._get_fsdp_state()._lazy_init()
    # fully_shard replaced every parameter by a sharded one (a DTensor): the optimizer takes those
    for group, group_names in zip(optimizer.param_groups, groups):
        group["params"] = [model.get_parameter(name) for name in group_names]
    return engine, optimizer


def _units(engine: torch.nn.Module) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [module for module in engine.modules() if isinstance(module, FSDPModule)]


def gather_weights(engine: torch.nn.Module) -> None:
    """All-gather every unit's weights and keep them whole across forward passes (a collective)."""
    for unit in _units(engine):
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)


def reshard_weights(engine: torch.nn.Module) -> None:
    """Back to this process's shards; layers free their gathered weights after each forward again."""
    layers_reshard = engine.__dict__["_modalign_reshard"]
    for unit in _units(engine):
        unit.reshard()
        if unit is not engine:
            unit.set_reshard_after_forward(layers_reshard, recurse=False)



def meta_copy(model: torch.nn.Module) -> torch.nn.Module:
    """`model`'s structure with every weight on the meta device (no memory): the unsharded model to fill at
    the end (`unsharded`), with the original classes and without FSDP's hooks. Tied weights stay tied."""
    import copy

    memo: dict[int, Any] = {}
    for param in model.parameters():
        memo[id(param)] = torch.nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
    for buffer in model.buffers():
        memo[id(buffer)] = buffer.to("meta")
    return copy.deepcopy(model, memo)


def unsharded(skeleton: torch.nn.Module, model: torch.nn.Module, full_state: dict) -> torch.nn.Module:
    """`skeleton` (a `meta_copy`) holding the sharded `model`'s full state: a plain model to save and evaluate."""
    skeleton.load_state_dict(full_state, strict=False, assign=True)
    for name, buffer in model.named_buffers():  # FSDP shards no buffer; non-persistent ones are in no state dict
        owner, _, leaf = name.rpartition(".")
        skeleton.get_submodule(owner)._buffers[leaf] = buffer
    for module in skeleton.modules():  # assign=True gave each name its own tensor
        if callable(getattr(module, "tie_weights", None)):
            module.tie_weights()
    missing = [name for name, param in skeleton.named_parameters() if param.is_meta]
    assert not missing, f"weights missing from the gathered state: {missing[:5]}"
    return skeleton.train(model.training)
