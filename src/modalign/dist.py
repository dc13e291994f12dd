"""Processes: one by default, many under `accelerate launch` (DDP; FSDP or DeepSpeed from its config).

    accelerate launch --config_file configs/accelerate/cpu_ddp.yaml -m modalign.cli dpo ...

The recipes are the same loops either way. What changes with N processes:
- each process takes its share of every global batch (`shard`), so `batch_size` and
  `prompts_per_step` stay global and a run with N processes does the same optimizer steps
  as one process;
- forward passes with gradients go through the engine's wrapper (`prepare`), so gradients
  are averaged across processes by DDP (or sharded by FSDP / DeepSpeed), never by hand;
- token-averaged losses are rescaled by `token_share` so that the average over processes
  is the average over all tokens of the global batch, not a mean of per-process means;
- only the main process writes the run folder (`RunDir` checks `is_main`) and prints.

One process (plain `modalign ...`) gets the model itself back from `prepare`: no wrapper,
no collective, nothing changes.

With an FSDP config (`configs/accelerate/fsdp.yaml`, `cpu_fsdp.yaml`) `prepare` shards the
model with FSDP2 (`torch.distributed.fsdp.fully_shard`: each transformer layer, then the whole)
instead of DDP. Each process then holds 1/N of every weight, gathered only inside the wrapped
`forward`, so:
- every call on the model's weights with gradients goes through the wrapper, `encode_media`
  included (`Wrapped`);
- sampling, which makes a different number of forward passes in each process, runs inside
  `gathered(model)`: the weights are gathered once, every process samples on whole weights
  without collectives, and they are sharded again after;
- checkpoints hold full state dicts (`model_state`, `optimizer_state`; gathered to the main
  process, which writes them) and load into the shards (`load_model_state`, ...);
- `whole(model)` gathers the weights for good after training, for saving and evaluation.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch

T = TypeVar("T")


class Dispatch(torch.nn.Module):
    """Routes any method of `model` through `forward`, so the engine's wrapper sees the call.

    DDP only synchronises gradients of computations run inside the wrapper's `forward`; a
    critic's `token_scores` or a policy's `encode_media` called directly would silently train
    each process apart. `Dispatch(model)("token_scores", ...)` is `model.token_scores(...)`
    inside the wrapper.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, method: str, *args: Any, **kwargs: Any) -> Any:
        target = self.model if method == "forward" else getattr(self.model, method)
        return target(*args, **kwargs)


class Wrapped:
    """The model for every attribute; its calls with gradients go through the engine's wrapper.

    Calls without gradients (sampling, reference and evaluation passes) go to the model
    itself: processes make different numbers of them, and the wrapper's collectives would
    wait forever for the others.

    Sharded (FSDP), the model's own weights are shards: every call goes through the wrapper,
    which gathers them (`encode_media` too), except inside `Processes.gathered`, where they
    are whole and the model is called directly.
    """

    _routed = ("token_scores",)
    # FSDP: these read sharded weights too, so they go through the wrapper, which gathers them
    _routed_sharded = ("token_scores", "encode_media")

    def __init__(self, model: torch.nn.Module, engine: torch.nn.Module, sharded: bool = False) -> None:
        self.__dict__.update(_model=model, _engine=engine, _sharded=sharded, _gathered=False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._route("forward", *args, **kwargs)

    def _route(self, method: str, *args: Any, **kwargs: Any) -> Any:
        # sharded: always the wrapper (every process makes the same training and no-grad update passes),
        # except inside `gathered`, where the weights are whole and no collective may run
        through_engine = not self._gathered if self._sharded else torch.is_grad_enabled()
        if through_engine:
            return self._engine(method, *args, **kwargs)
        target = self._model if method == "forward" else getattr(self._model, method)
        return target(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in (self._routed_sharded if self._sharded else self._routed):
            return functools.partial(self._route, name)
        return getattr(self._model, name)


class Processes:
    """This process's place among the others, and the few collectives the recipes need."""

    def __init__(self) -> None:
        from accelerate import Accelerator, DistributedDataParallelKwargs

        # cpu=True unless there is a GPU: under torchrun on a CPU machine accelerate then picks
        # gloo (MULTI_CPU); without it every process would train alone. find_unused_parameters:
        # a batch without audio leaves the audio encoder without gradients.
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        # `accelerate launch` with an FSDP config sets this (on a CPU machine accelerate itself stays in
        # MULTI_CPU mode: the sharding is ours, `shard_model`, on CPU and GPU alike)
        self.sharded = self.many and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"

    @property
    def many(self) -> bool:
        return self.world > 1

    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
        """(model to call, optimizer to step): the model itself with one process, a `Wrapped` engine with many."""
        if not self.many:
            return model, optimizer
        if self.sharded:
            from modalign.sharding import fsdp_plugin, shard_model

            engine, optimizer = shard_model(model, optimizer, fsdp_plugin())
            return Wrapped(model, engine, sharded=True), optimizer
        engine, optimizer = self.accelerator.prepare(Dispatch(model), optimizer)
        return Wrapped(model, engine), optimizer

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def clip_grad_norm(self, model: Any, max_norm: float) -> torch.Tensor:
        """Clip the (already averaged) gradients; returns their norm before clipping."""
        params = model.parameters()
        if self.sharded:  # the norm over every shard (a DTensor, replicated): a plain tensor for logging
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        if self.many:
            return self.accelerator.clip_grad_norm_(params, max_norm)
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    @contextlib.contextmanager
    def gathered(self, model: Any) -> Iterator[None]:
        """Whole weights inside: sampling and other passes that processes make different numbers of.

        FSDP: gathers every shard once on entry (all processes must enter together), runs the body
        on whole weights without collectives, shards again on exit. Otherwise nothing.
        """
        if not (self.sharded and isinstance(model, Wrapped)):
            yield
            return
        from modalign.sharding import gather_weights, reshard_weights

        gather_weights(model._engine)
        model.__dict__["_gathered"] = True
        try:
            yield
        finally:
            model.__dict__["_gathered"] = False
            reshard_weights(model._engine)

    def whole(self, model: Any) -> Any:
        """After training: the trained model with whole weights, for the main process to save and evaluate
        (every process must call it). FSDP: a plain copy (original classes, no FSDP hooks: no collective
        in the main process's evaluation) of the gathered full state, in the main process only; otherwise
        the model itself."""
        if not isinstance(model, Wrapped):
            return model
        if not self.sharded:
            return model._model
        from modalign.sharding import unsharded

        full_state = self.model_state(model._model)  # the tensors in the main process only
        if not self.is_main:
            return model._model
        return unsharded(model._engine.__dict__["_modalign_skeleton"], model._model, full_state)

    def model_state(self, model: torch.nn.Module) -> dict:
        """The model's state dict for a checkpoint: with FSDP the full one, gathered (every process must call
        it; the main process, which writes checkpoints, gets the tensors)."""
        if not self.sharded:
            return model.state_dict()
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(model, options=_full_state())

    def optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """`optimizer`'s state dict for a checkpoint (FSDP: full, keyed by parameter name, as `model_state`)."""
        if not self.sharded:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer, options=_full_state())

    def load_model_state(self, model: torch.nn.Module, state: dict) -> None:
        """`model_state`'s dict back into the model (FSDP: each process keeps its shard of it)."""
        if not self.sharded:
            model.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(model, state, options=_full_state(load=True))

    def load_optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        if not self.sharded:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=_full_state(load=True))

    def share(self, count: int, what: str = "batch") -> int:
        """This process's part of a global size `count` (N must divide it; `what` names it in the error)."""
        if count % self.world:
            from modalign.config import ConfigError

            raise ConfigError(f"{what} of {count} does not split over {self.world} processes: "
                              f"make it a multiple of {self.world}")
        return count // self.world

    def shard(self, items: Sequence[T], what: str = "batch") -> list[T]:
        """This process's rows of a global batch: rows rank, rank + N, ... (N must divide it)."""
        self.share(len(items), what)
        return list(items[self.rank :: self.world])

    def unshard(self, mine: Sequence[T], count: int) -> list[T]:
        """All `count` items in order, each process holding `mine`: its items rank, rank + N, ...
        (`items[rank::N]` of any length: sampling shared out, gathered back)."""
        if not self.many:
            return list(mine)
        parts = self.gather_objects(list(mine))
        return [parts[i % self.world][i // self.world] for i in range(count)]

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum over processes (the value itself with one process). NCCL reduces GPU tensors only: the value goes
        to this process's device first (a no-op under gloo on the CPU)."""
        return self.accelerator.reduce(value.detach().clone().to(self.accelerator.device), "sum") if self.many \
            else value

    def mean(self, value: torch.Tensor | float) -> float:
        tensor = torch.as_tensor(value, dtype=torch.float64)
        return float(self.sum(tensor) / self.world)

    def std(self, values: torch.Tensor) -> float:
        """Sample standard deviation over every process's values (each holds as many)."""
        count = values.numel() * self.world
        mean, square = self.mean(values.mean()), self.mean((values.double() ** 2).mean())
        return max(0.0, (square - mean * mean) * count / max(1, count - 1)) ** 0.5

    def all_true(self, flag: bool) -> bool:
        """True only if `flag` holds in every process (a step skipped anywhere is skipped everywhere)."""
        return bool(self.sum(torch.tensor(0 if flag else 1)) == 0)

    def token_share(self, mask: torch.Tensor) -> torch.Tensor:
        """N * (this process's tokens) / (all tokens): scales a token mean so DDP's average is the global one.

        DDP averages gradients over processes. A loss averaged over this process's n_i tokens,
        times N * n_i / sum_j n_j, averages to sum over all tokens / sum_j n_j.
        """
        if not self.many:
            return torch.tensor(1.0)
        tokens = mask.sum().to(torch.float64)
        return (self.world * tokens / self.sum(tokens).clamp(min=1)).float()

    def gather_rows(self, compute: Callable[[list[int]], torch.Tensor], count: int) -> torch.Tensor:
        """compute(rows) for rows 0..count-1, split over processes and gathered: every process gets all."""
        mine = list(range(self.rank, count, self.world))
        if not self.many:
            return compute(mine)
        return torch.stack(self.unshard(list(compute(mine)) if mine else [], count))

    def gather_objects(self, item: Any) -> list[Any]:
        """[item of process 0, item of process 1, ...] on every process."""
        if not self.many:
            return [item]
        from accelerate.utils import gather_object

        return gather_object([item])

    def rng_states(self) -> Any:
        """`runs.rng_state()` for a checkpoint: this process's, or with many processes a list of every one's
        (`runs.set_rng_state(saved, rank)` takes either)."""
        from modalign.runs import rng_state

        states = self.gather_objects(rng_state())
        return states if self.many else states[0]

    def broadcast(self, item: T) -> T:
        """The main process's `item`, on every process."""
        if not self.many:
            return item
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([item])[0]

    def main_first(self, make: Callable[[], T]) -> T:
        """`make()` in the main process, then in the others: files it writes (a dataset, an imported store)
        exist before they look for them."""
        if self.is_main:
            made = make()
        self.wait()
        if not self.is_main:
            made = make()
        self.wait()
        return made

    def wait(self) -> None:
        if self.many:
            self.accelerator.wait_for_everyone()


def _full_state(load: bool = False):
    """Full (unsharded) state dicts; on saving, gathered to the main process's CPU memory only."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=not load)


@functools.lru_cache(maxsize=1)
def processes() -> Processes:
    """The one `Processes` of this interpreter (accelerate's state is per process anyway)."""
    return Processes()
