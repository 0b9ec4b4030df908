"""Every command-line option maps to exactly one config field and back; --help and docs/cli.md
show each option's real default and explanation; the exit-code table is the one the CLI uses."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from distill.cli import main
from distill.errors import ExitCode
from distill.options import field_default, option_specs, stage_configs

REPO = Path(__file__).resolve().parents[1]
COMMANDS = stage_configs()


def sample_value(spec, tp):
    """A non-default value of the option's type, as typed on the command line and as expected."""
    if spec.kind == "switch":
        return None, None
    if isinstance(spec.value_type, click.Choice):
        choices = list(spec.value_type.choices)
        return choices[-1], choices[-1]
    if spec.value_type is int:
        return "7", 7
    if spec.value_type is float:
        return "0.25", 0.25
    return "x-value", "x-value"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_option_is_one_field_and_every_field_one_option(command):
    cls = COMMANDS[command]
    params = {p.name: p for p in main.commands[command].params if isinstance(p, click.Option)}
    fields = {f.name for f in dataclasses.fields(cls)}
    option_fields = set(params) - {"config_path"}
    assert option_fields - fields == set(), f"options without a {cls.__name__} field: {sorted(option_fields - fields)}"
    assert fields - option_fields == set(), f"{cls.__name__} fields without an option: {sorted(fields - option_fields)}"
    flags = [flag for p in params.values() for flag in (*p.opts, *p.secondary_opts)]
    assert len(flags) == len(set(flags)), "a flag spelt twice"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_option_sets_exactly_its_field(command, monkeypatch):
    """Type every option with a non-default value (switches flipped): the config that reaches run()
    has exactly that field changed, nothing else."""
    import distill.config

    cls = COMMANDS[command]
    hints = typing.get_type_hints(cls)
    captured = {}

    def capture(klass, path=None, overrides=None, **kwargs):
        captured["overrides"] = dict(overrides or {})
        raise SystemExit(0)

    monkeypatch.setattr(distill.config, "load_config", capture)
    if command == "train":
        import distill.train

        monkeypatch.setattr(distill.train, "load_train_config", lambda path, flags: capture(None, path, flags))
    for spec in option_specs(cls):
        f = next(f for f in dataclasses.fields(cls) if f.name == spec.name)
        if spec.kind == "switch":
            default = bool(field_default(f))
            args, expected = [spec.negative if default else spec.flags[-1]], not default
        else:
            typed, expected = sample_value(spec, hints[spec.name])
            args = [spec.flags[-1], typed]
            if spec.kind == "multiple":
                args, expected = args + [spec.flags[-1], typed], (expected, expected)
        captured.clear()
        result = CliRunner().invoke(main, [command, *args])
        assert result.exit_code == 0, (spec.name, result.output)
        assert captured["overrides"] == {spec.name: expected}, spec.name


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_shows_each_real_default_and_explanation(command):
    cls = COMMANDS[command]
    result = CliRunner().invoke(main, [command, "--help"], terminal_width=400)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for spec in option_specs(cls):
        f = next(f for f in dataclasses.fields(cls) if f.name == spec.name)
        assert " ".join(f.metadata["help"].split()) in text, spec.name
        assert f"[default: {spec.default_text}]" in text, spec.name
        if "default_text" not in f.metadata:  # shown as the value itself: it must be the real one
            default = field_default(f)
            if default not in (None, "", ()):
                shown = spec.default_text
                real = ",".join(map(str, default)) if isinstance(default, tuple) else (
                    ("on" if default else "off") if isinstance(default, bool) else str(default))
                assert shown == real, spec.name


def test_literal_choices_are_the_implementations():
    """The choice lists live once, as Literal types: the implementations follow them."""
    from distill import losses
    from distill.train.config import Divergence

    assert tuple(typing.get_args(Divergence)) == tuple(losses.DIVERGENCES)
    params = {p.name: p for p in main.commands["train"].params}
    assert list(params["divergence"].type.choices) == list(losses.DIVERGENCES)


def test_lora_targets_take_a_comma_separated_value(monkeypatch):
    import distill.train

    seen = {}
    monkeypatch.setattr(distill.train, "load_train_config", lambda path, flags: seen.update(flags) or (_ for _ in ()).throw(SystemExit(0)))
    result = CliRunner().invoke(main, ["train", "--lora-targets", "q_proj, v_proj", "--lora-targets", "o_proj"])
    assert result.exit_code == 0, result.output
    assert seen == {"lora_targets": ("q_proj", "v_proj", "o_proj")}


def test_docs_cli_reference_is_generated_from_the_code():
    from distill.options import cli_reference

    path = REPO / "docs" / "cli.md"
    assert path.read_text(encoding="utf-8") == cli_reference(), (
        "docs/cli.md is stale: regenerate it with `python -m distill.options > docs/cli.md`")


def test_exit_code_table():
    codes = [int(c) for c in ExitCode]
    assert len(codes) == len(set(codes))
    assert (ExitCode.OK, ExitCode.BAD_INPUT, ExitCode.GATE_FAILED, ExitCode.MODEL_FAILED) == (0, 2, 3, 4)
    from distill.eval import EXIT_GATE_FAILED, EXIT_MODEL_FAILED

    assert (EXIT_GATE_FAILED, EXIT_MODEL_FAILED) == (ExitCode.GATE_FAILED, ExitCode.MODEL_FAILED)
    # every user-facing error class carries its code, and the CLI exits with it
    from distill.errors import ConfigError, LockHeld, NothingToDo, Preempted, TrainingDiverged
    from distill.corpus import CorpusError
    from distill.ingest import InputError
    from distill.eval.scorers import SuiteError

    assert {cls.exit_code for cls in (ConfigError, CorpusError, InputError, SuiteError)} == {ExitCode.BAD_INPUT}
    assert [cls.exit_code for cls in (TrainingDiverged, LockHeld, NothingToDo, Preempted)] == [5, 6, 7, 75]
    assert ExitCode.IO_ERROR == 74


def test_cli_exits_with_the_error_class_code(monkeypatch):
    import distill.generate
    from distill.errors import LockHeld, Preempted, TrainingDiverged

    for error, code in ((LockHeld("held by pid 1"), 6), (Preempted("SIGTERM"), 75), (TrainingDiverged("nan"), 5)):
        monkeypatch.setattr(distill.generate, "run", lambda config, e=error: (_ for _ in ()).throw(e))
        result = CliRunner().invoke(main, ["generate", "--teacher", "t", "--prompts", "p", "--out", "o"])
        assert result.exit_code == code
        assert result.output == f"error: {error}\n"
