"""Stage configs: frozen dataclasses built from a YAML file, then CLI flags on top.

Every stage (generate, augment, train, eval) declares one frozen dataclass whose fields carry a
default and are documented in the field's ``metadata["help"]``. ``load_config`` merges, in order:
the dataclass defaults, the YAML file given with ``--config``, then the flags the user actually
passed. Unknown keys are errors naming the file; type and range checks live in each dataclass's
``__post_init__`` and raise ``ValueError`` naming the field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config problem a user can fix; the message names the file, key or flag."""


def field(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING):
    """A dataclass field with its documentation attached (shown by --help and in docs)."""
    kwargs: dict[str, Any] = {"metadata": {"help": help}}
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    if default_factory is not dataclasses.MISSING:
        kwargs["default_factory"] = default_factory
    return dataclasses.field(**kwargs)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file (and the line, for syntax errors)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def _coerce(cls_name: str, name: str, tp: Any, value: Any, source: str) -> Any:
    """Coerce YAML/CLI values to the declared field type (tuples from lists, floats from ints)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _coerce(cls_name, name, non_none[0], value, source)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: field '{name}' of {cls_name} must be a number, got {value!r}")
        return float(value)
    if origin is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    if tp is tuple and isinstance(value, list):
        return tuple(value)
    if tp in (int, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ConfigError(
            f"{source}: field '{name}' of {cls_name} must be {tp.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def load_config(cls: type[T], path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> T:
    """Build ``cls`` from defaults, then the YAML at ``path``, then ``overrides`` (flags given).

    ``overrides`` holds only what the user set; ``None`` values are ignored so unset flags keep
    the file's value. Dashes in keys are accepted (``max-new-tokens`` == ``max_new_tokens``).
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    sources: list[tuple[str, Mapping[str, Any]]] = []
    if path is not None:
        sources.append((str(path), read_yaml(path)))
    if overrides:
        sources.append(("command line", {k: v for k, v in overrides.items() if v is not None}))
    for source, mapping in sources:
        for raw_key, value in mapping.items():
            key = str(raw_key).replace("-", "_")
            if key not in names:
                close = ", ".join(sorted(names))
                raise ConfigError(f"{source}: unknown key '{raw_key}' for {cls.__name__}; known keys: {close}")
            values[key] = _coerce(cls.__name__, key, hints[key], value, source)
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        where = str(path) if path is not None else "config"
        raise ConfigError(f"{where}: {exc}") from None


def describe(cls: type) -> list[tuple[str, Any, str]]:
    """(name, default, help) for every field: used by --help texts and docs."""
    out = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        out.append((f.name, default, f.metadata.get("help", "")))
    return out
