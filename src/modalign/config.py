"""Recipe configs: one dataclass per recipe, loaded from YAML and `--set key=value` overrides.

Every field carries its help text (`field_doc`), which `describe_config` prints and
`save_config` writes as a comment above the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

from modalign.errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    """A config file or override is wrong; the message names the key."""


def field_doc(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with its documentation."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        return dataclasses.field(default_factory=lambda: dataclasses.replace(default), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build `cls` from a YAML mapping (optional) and `key=value` overrides (dotted keys for nesting)."""
    raw: dict[str, Any] = {}
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"config file {path}: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: the top level must be a mapping of keys to values")
        raw = loaded
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {override!r}: expected key=value")
        _set_dotted(raw, key.strip(), yaml.safe_load(value) if value.strip() else "")
    return _build(cls, raw, prefix="")


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        raw = raw.setdefault(part, {})
    raw[parts[-1]] = value


def _build(cls: type[T], raw: Mapping[str, Any], prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]!r}; valid keys: {', '.join(prefix + k for k in fields)}")
    values = {}
    for name, value in raw.items():
        expected = hints[name]
        if dataclasses.is_dataclass(expected) and isinstance(value, Mapping):
            values[name] = _build(expected, value, prefix=f"{prefix}{name}.")
        else:
            values[name] = _coerce(value, expected, f"{prefix}{name}")
    return cls(**values)


def _coerce(value: Any, expected: Any, key: str) -> Any:
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r}: {value!r} is not a {expected}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"config key {key!r}: {value!r} is not one of {args}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: {value!r} is not a list")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, key) for v in value] if inner is not Any else list(value)
        return items if origin is list else tuple(items)
    if expected is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if expected is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if expected in (int, float, str, bool) and not (type(value) is expected):
        raise ConfigError(f"config key {key!r}: {value!r} is not a {expected.__name__}")
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> Path:
    """YAML of the resolved config, each key under its help text."""
    lines = [f"# {type(cfg).__name__}: {(type(cfg).__doc__ or '').strip().splitlines()[0] if type(cfg).__doc__ else ''}"]
    for f in dataclasses.fields(cfg):
        if f.metadata.get("help"):
            lines.append(f"# {f.metadata['help']}")
        value = getattr(cfg, f.name)
        value = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        lines.append(yaml.safe_dump({f.name: value}, default_flow_style=False, sort_keys=False).rstrip())
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def describe_config(cls: type) -> str:
    """A table of the fields, types, defaults and help of a config class."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "")
        type_name = getattr(hints[f.name], "__name__", str(hints[f.name]))
        rows.append(f"  {f.name:<22} {type_name:<8} {default!r:<12} {f.metadata.get('help', '')}")
    return f"{cls.__name__}: {(cls.__doc__ or '').strip()}\n" + "\n".join(rows)
