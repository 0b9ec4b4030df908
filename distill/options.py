"""Command-line options generated from the stage config dataclasses: each option is declared once.

A stage's frozen config dataclass is the single source of every option: the field's type gives
the click type (``Literal[...]`` a choice, ``bool`` an on/off pair, ``tuple[...]`` a repeatable
option), its default is the default shown in ``--help``, and its ``help`` metadata is the
explanation. ``docs/cli.md`` is generated from the same declarations (``python -m distill.options``)
and a test keeps it equal.

Every generated option has ``default=None`` so a value the user did not type never overrides the
``--config`` file or a recipe; the default shown is the dataclass's.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal

import click

CONFIG_OPTION = "config_path"


@dataclass(frozen=True)
class OptionSpec:
    """One command-line option derived from one config field."""

    name: str  # the dataclass field
    flags: tuple[str, ...]  # e.g. ("--top-k",) or ("-n", "--num-prompts")
    kind: Literal["value", "switch", "multiple"]
    value_type: Any  # int, float, str or a click.Choice
    help: str
    default_text: str
    negative: str | None = None  # "--no-progress" for a switch
    separator: str | None = None  # a repeatable option that also splits one value on this separator

    def decl(self) -> str:
        """The option as --help and the docs write it."""
        if self.kind == "switch":
            return f"{self.flags[-1]}/{self.negative}"
        return ", ".join(self.flags)


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
        # str | tuple[str, ...]: one or several values, given as a repeatable option
        tuples = [a for a in args if typing.get_origin(a) is tuple]
        if tuples:
            return tuples[0]
    return tp


def _click_type(tp: Any) -> Any:
    if typing.get_origin(tp) is Literal:
        return click.Choice([str(v) for v in typing.get_args(tp)])
    if tp in (int, float, str):
        return tp
    raise TypeError(f"no command-line type for {tp!r}")


def _format_default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) if value else "none"
    if isinstance(value, str) and value == "":
        return "required"
    return str(value)


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def option_specs(cls: type) -> list[OptionSpec]:
    """The options of a stage config, in field order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    specs = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        tp = _strip_optional(hints[f.name])
        long = meta.get("flag") or "--" + f.name.replace("_", "-")
        flags = (meta["short"], long) if meta.get("short") else (long,)
        default_text = meta.get("default_text") or _format_default(field_default(f))
        if tp is bool:
            negative = meta.get("negative") or "--no-" + long[2:]
            specs.append(OptionSpec(f.name, flags, "switch", bool, meta["help"], default_text, negative=negative))
        elif typing.get_origin(tp) is tuple:
            item = typing.get_args(tp)[0]
            specs.append(OptionSpec(f.name, flags, "multiple", _click_type(item), meta["help"], default_text,
                                    separator=meta.get("separator")))
        else:
            specs.append(OptionSpec(f.name, flags, "value", _click_type(tp), meta["help"], default_text))
    return specs


def _click_option(spec: OptionSpec) -> Callable:
    help_text = f"{spec.help}  [default: {spec.default_text}]"
    if spec.kind == "switch":
        decls = [f"{spec.flags[-1]}/{spec.negative}", *spec.flags[:-1], spec.name]
        return click.option(*decls, default=None, help=help_text, show_default=False)
    metavar = None
    if isinstance(spec.value_type, click.Choice):
        metavar = "[" + "|".join(spec.value_type.choices) + "]"
    return click.option(*spec.flags, spec.name, type=spec.value_type, multiple=spec.kind == "multiple",
                        default=None, help=help_text, show_default=False, metavar=metavar)


def stage_options(cls: type) -> Callable:
    """Decorate a click command with ``--config FILE`` and one option per field of ``cls``."""

    def decorate(command: Callable) -> Callable:
        for spec in reversed(option_specs(cls)):
            command = _click_option(spec)(command)
        return click.option("--config", CONFIG_OPTION, type=click.Path(dir_okay=False), default=None,
                            help=f"YAML file of {cls.__name__} keys (the option names); flags given override it")(command)

    return decorate


def given(ctx: click.Context, params: dict[str, Any], cls: type) -> dict[str, Any]:
    """The options the user actually typed, as config keys; repeatable options with a separator
    also split each value (``--lora-targets q_proj,v_proj``)."""
    specs = {s.name: s for s in option_specs(cls)}
    out: dict[str, Any] = {}
    for name, value in params.items():
        source = ctx.get_parameter_source(name)
        if source is None or source == click.core.ParameterSource.DEFAULT:
            continue
        spec = specs[name]
        if spec.kind == "multiple" and spec.separator:
            value = tuple(part.strip() for v in value for part in v.split(spec.separator) if part.strip())
        out[name] = value
    return out


def docs_table(cls: type) -> str:
    """A Markdown table of ``cls``'s options: option, default, meaning."""
    lines = ["| option | default | meaning |", "| --- | --- | --- |"]
    for spec in option_specs(cls):
        text = spec.help.replace("|", "\\|")
        if isinstance(spec.value_type, click.Choice):
            text += "; one of " + ", ".join(f"`{c}`" for c in spec.value_type.choices)
        lines.append(f"| `{spec.decl()}` | {spec.default_text.replace('|', chr(92) + '|')} | {text} |")
    return "\n".join(lines)


def stage_configs() -> dict[str, type]:
    """The commands whose options come from a config dataclass, and that dataclass."""
    from distill.augment import AugmentConfig
    from distill.eval import EvalConfig
    from distill.generate import GenerateConfig
    from distill.logs import LogsConfig
    from distill.train.config import TrainConfig
    from distill.train.init_student import InitStudentConfig

    return {"logs": LogsConfig, "generate": GenerateConfig, "augment": AugmentConfig, "init-student": InitStudentConfig,
            "train": TrainConfig, "eval": EvalConfig}


def cli_reference() -> str:
    """The text of docs/cli.md."""
    from distill.errors import markdown_table

    parts = [
        "# Command-line reference",
        "",
        "Generated from the stage config dataclasses by `python -m distill.options > docs/cli.md`; a test keeps",
        "this file equal to the code. Every command also takes `--config FILE.yaml`, whose keys are the option",
        "names (with `_` or `-`); options typed on the command line override the file, which overrides the",
        "recipe's defaults (for `train`, the student recipe's `train:` block), which override the defaults below.",
        "",
    ]
    for command, cls in stage_configs().items():
        parts += [f"## distill {command}", "", docs_table(cls), ""]
    parts += ["## Exit codes", "", "Every command exits with one of these (`distill/errors.py`).", "", markdown_table(), ""]
    return "\n".join(parts)


if __name__ == "__main__":
    print(cli_reference(), end="")
