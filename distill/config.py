"""Stage configs: frozen dataclasses built from labelled layers, each value remembering its source.

Every stage (generate, augment, train, eval) declares one frozen dataclass; each field carries its
default, its type (``Literal[...]`` for fixed choices) and its documentation (``field(help=...)``),
from which the command-line options come (distill/options.py). ``load_config`` merges layers in
order, later layers winning:

    defaults  <  recipe defaults (train: the student recipe's ``train:`` block)  <  --config FILE  <  flags

and every error names where the offending value came from: ``run.yaml:3: lr: must be a number``,
``students/x.yaml:12: train.lr: ...``, or ``--lr: ...``. Unknown keys are errors with the nearest
known key suggested. Range checks live in each dataclass's ``__post_init__`` and go through
``bad(field, message)``, so the loader can say which layer set the field.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, NoReturn, TypeVar

from distill.errors import ConfigError

T = TypeVar("T")

__all__ = ["ConfigError", "FieldError", "Layer", "bad", "field", "load_config", "read_yaml_layer"]

COMMAND_LINE = "command line"


class FieldError(ConfigError):
    """A ``__post_init__`` check failed for one field; the loader adds where its value came from."""

    def __init__(self, name: str, message: str):
        super().__init__(f"--{name.replace('_', '-')}: {message}")
        self.name = name
        self.message = message


def bad(name: str, message: str) -> NoReturn:
    """Reject field ``name``'s value (call from ``__post_init__``)."""
    raise FieldError(name, message)


def field(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING,
          flag: str | None = None, short: str | None = None, negative: str | None = None,
          default_text: str | None = None, separator: str | None = None):
    """A config field with its documentation and command-line spelling.

    ``flag``/``short``/``negative`` override the option names derived from the field name
    (``--lora/--full``, ``-n``); ``default_text`` is what --help shows as the default when the
    value alone does not say it ("the recipe's"); ``separator`` lets a repeatable option also take
    one comma-separated value.
    """
    metadata = {"help": help, "flag": flag, "short": short, "negative": negative, "default_text": default_text,
                "separator": separator}
    kwargs: dict[str, Any] = {"metadata": {k: v for k, v in metadata.items() if v is not None}}
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    if default_factory is not dataclasses.MISSING:
        kwargs["default_factory"] = default_factory
    return dataclasses.field(**kwargs)


@dataclass(frozen=True)
class Layer:
    """One source of config values: a file (with the line of each key), a recipe block, or the flags."""

    name: str  # "command line", or the file's path
    values: Mapping[str, Any]
    lines: Mapping[str, int] = dataclasses.field(default_factory=dict)  # key path -> 1-based line
    paths: Mapping[str, str] = dataclasses.field(default_factory=dict)  # key -> its path in the file ("train.lr")

    def where(self, key: str) -> str:
        """Where ``key`` was set, for messages: ``--top-k`` or ``file.yaml:3: top_k``."""
        if self.name == COMMAND_LINE:
            return "--" + key.replace("_", "-")
        path = self.paths.get(key, key)
        line = self.lines.get(path)
        location = f"{self.name}:{line}" if line else self.name
        return f"{location}: {path}"


def _yaml_lines(node: Any, prefix: str = "", depth: int = 2) -> dict[str, int]:
    """key path ("train.lr") -> 1-based line, for mappings nested ``depth`` deep."""
    import yaml

    out: dict[str, int] = {}
    if not isinstance(node, yaml.MappingNode) or depth == 0:
        return out
    for key_node, value_node in node.value:
        key = f"{prefix}{key_node.value}"
        out[key] = key_node.start_mark.line + 1
        out.update(_yaml_lines(value_node, key + ".", depth - 1))
    return out


def read_yaml_layer(path: str | Path) -> Layer:
    """Read a YAML mapping with the line of each key; errors name the file (and line)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
        lines = _yaml_lines(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: invalid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return Layer(str(path), data, lines)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Coerce a YAML/CLI value to the declared type (tuples from lists, floats from ints)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _coerce(non_none[0], value, where)
        if str in non_none and isinstance(value, (list, tuple)):  # str | tuple[str, ...]: one value stays a str
            items = tuple(_coerce(str, v, where) for v in value)
            return items[0] if len(items) == 1 else items
        for option in non_none:
            if isinstance(option, type) and isinstance(value, option):
                return value
        names = " or ".join(getattr(a, "__name__", "list") for a in non_none)
        raise ConfigError(f"{where}: must be {names}, got {type(value).__name__} {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string: a user means the number
            try:
                return float(value.strip())
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: must be a number, got {value!r}")
        return float(value)
    if tp is int and isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value)
    if origin is tuple:
        if isinstance(value, str):
            value = (value,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: must be a list, got {value!r}")
        return tuple(_coerce(args[0], v, where) for v in value)
    if tp is dict and not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a mapping, got {type(value).__name__} {value!r}")
    if tp in (int, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: must be {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _unknown(key: str, names: set[str], where: str, cls: type) -> ConfigError:
    close = difflib.get_close_matches(key, sorted(names), n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(names))}"
    return ConfigError(f"{where}: unknown key for {cls.__name__}; {hint}")


def check_layer(cls: type, layer: Layer) -> dict[str, Any]:
    """``layer``'s values as ``cls`` field names, coerced to their types; ``None`` values dropped.
    Unknown keys and values of the wrong type are errors naming the layer, file, line and key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for raw_key, value in layer.values.items():
        key = str(raw_key).replace("-", "_")
        where = layer.where(str(raw_key))
        if key not in names:
            raise _unknown(key, names, where, cls)
        if value is not None:
            out[key] = _coerce(hints[key], value, where)
    return out


def load_config(cls: type[T], path: str | Path | Layer | None = None,
                overrides: Mapping[str, Any] | None = None, *, layers: list[Layer] | None = None) -> T:
    """Build ``cls`` from its defaults, then ``layers`` in order (or: the YAML at ``path``, then
    ``overrides``, the flags the user typed).

    ``None`` values in a layer are skipped (an unset flag keeps the file's value). Dashes in keys
    are accepted (``max-new-tokens`` == ``max_new_tokens``). Every error names the layer, file,
    line and key that set the bad value.
    """
    if layers is None:
        layers = []
        if isinstance(path, Layer):
            layers.append(path)
        elif path is not None:
            layers.append(read_yaml_layer(path))
        if overrides:
            layers.append(Layer(COMMAND_LINE, dict(overrides)))
    values: dict[str, Any] = {}
    origin: dict[str, Layer] = {}
    for layer in layers:
        for key, value in check_layer(cls, layer).items():
            values[key] = value
            origin[key] = layer
    try:
        return cls(**values)
    except FieldError as exc:
        layer = origin.get(exc.name)
        if layer is None:  # the default itself is rejected: a required value nobody gave
            last = layers[-1] if layers else Layer(COMMAND_LINE, {})
            where = last.where(exc.name) if last.name == COMMAND_LINE else f"{last.name}: {exc.name}"
            raise ConfigError(f"{where}: {exc.message}") from None
        raise ConfigError(f"{layer.where(exc.name)}: {exc.message}") from None
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from None
