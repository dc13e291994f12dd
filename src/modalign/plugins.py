"""User functions named in configs: `py:mypkg.rewards:brevity` or `py:path/to/file.py:brevity`.

One loader for every plug-in kind (rewards in `rl.rewards`, judges in `feedback.collect`), so a
spec means the same thing everywhere and every mistake is one `PluginError` line naming the spec.

A module path is imported as Python imports it (the package must be installed or on
`PYTHONPATH`); a file path (ending in `.py`, relative to the working directory) is loaded
from the file, once per process.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from modalign.config import ConfigError

PREFIX = "py:"


class PluginError(ConfigError):
    """A `py:` spec cannot be loaded or its function broke the contract; the message names the spec."""


def is_plugin(spec: str) -> bool:
    return spec.strip().startswith(PREFIX)


def load_callable(spec: str, positional: int = 2) -> Callable[..., Any]:
    """The function a `py:module:fn` or `py:file.py:fn` spec names, checked to take `positional` arguments."""
    target, _, name = spec.strip().removeprefix(PREFIX).rpartition(":")
    if not target or not name:
        raise PluginError(f"{spec!r}: write py:<module>:<function> or py:<file.py>:<function>")
    module = _load_file(spec, target) if target.endswith(".py") or "/" in target else _import(spec, target)
    fn = getattr(module, name, None)
    if fn is None:
        found = sorted(k for k, v in vars(module).items() if inspect.isfunction(v) and not k.startswith("_"))
        raise PluginError(f"{spec!r}: {target} has no function {name!r} (functions: {', '.join(found) or 'none'})")
    if not callable(fn):
        raise PluginError(f"{spec!r}: {name!r} in {target} is a {type(fn).__name__}, not a function")
    _check_arity(spec, fn, positional)
    return fn


def _import(spec: str, module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):  # not a dependency
            raise PluginError(f"{spec!r}: no module named {module_name!r} (install it, add its folder to "
                              f"PYTHONPATH, or name a file: py:path/to/file.py:<function>)") from None
        raise PluginError(f"{spec!r}: importing {module_name} failed: {type(err).__name__}: {err}") from None
    except Exception as err:  # the user's module raised while importing: say where, in one line
        raise PluginError(f"{spec!r}: importing {module_name} failed: {type(err).__name__}: {err}") from None


def _load_file(spec: str, file: str):
    path = Path(file).expanduser().resolve()
    if not path.is_file():
        raise PluginError(f"{spec!r}: no file {file} (looked at {path})")
    # one module per file, so loading a spec twice (reward and judge, or two terms) runs the file once
    module_name = f"modalign_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise PluginError(f"{spec!r}: loading {file} failed: {type(err).__name__}: {err}") from None
    return module


def _check_arity(spec: str, fn: Callable, positional: int) -> None:
    """`fn` must accept `positional` positional arguments (extra ones need defaults)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin without a signature: the call will tell
    try:
        signature.bind(*range(positional))
    except TypeError:
        raise PluginError(f"{spec!r}: {getattr(fn, '__name__', 'the function')}{signature} must take "
                          f"{positional} positional arguments") from None


def check_scores(spec: str, scores: Any, expected: int, what: str) -> list[float]:
    """`scores` as `expected` finite floats, else a PluginError naming the spec and the fault.

    `what`: the arguments the function got, for the message (e.g. "4 completions").
    """
    try:
        values = [float(s) for s in _as_list(scores)]
    except (TypeError, ValueError):
        raise PluginError(f"{spec!r} returned {type(scores).__name__} {_short(scores)}: expected a list of "
                          f"{expected} numbers, one per completion") from None
    if len(values) != expected:
        raise PluginError(f"{spec!r} returned {len(values)} scores for {what}: expected {expected}, one per completion")
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        raise PluginError(f"{spec!r} returned a non-finite score ({values[bad[0]]}) at position {bad[0]} for {what}")
    return values


def _as_list(scores: Any) -> Sequence:
    if hasattr(scores, "tolist"):  # numpy arrays, torch tensors
        scores = scores.tolist()
    if isinstance(scores, (str, bytes)) or not isinstance(scores, Sequence):
        raise TypeError
    return scores


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
