"""The `distill` command line. Each command parses flags, builds its stage config, calls run().

Imports of torch/transformers/vllm/deepspeed happen inside the commands, so `distill --help`
starts fast on a laptop.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from distill import __version__
from distill.config import ConfigError


def given(ctx: click.Context, **params: Any) -> dict[str, Any]:
    """Only the flags the user actually passed, so defaults never override the --config file."""
    out = {}
    for name, value in params.items():
        source = ctx.get_parameter_source(name)
        if source is not None and source != click.core.ParameterSource.DEFAULT:
            out[name] = value
    return out


class DistillGroup(click.Group):
    """Turns user-facing errors (bad config, bad input files) into one clear line and exit 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ConfigError, FileNotFoundError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=DistillGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="distill")
def main() -> None:
    """Distill a large teacher LLM into a small student.

    \b
    distill generate   teacher writes a corpus: prompts, responses, top-k log-probs
    distill train      student learns from it: KD (top-k) + SFT, DeepSpeed-ready
    distill eval       score models on a suite, compare, gate
    distill inspect    summarize a corpus
    """


# Commands are registered below, one block per stage.


@main.command("eval")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML file of EvalConfig keys")
@click.option("--model", "models", multiple=True, metavar="NAME=PATH", help="model to evaluate (repeatable): HF dir, recipe or hub id")
@click.option("--suite", help="suite JSONL file, or the name of a suite in eval/  [default: example]")
@click.option("--out", help="output folder for report.json, report.md, report.png  [default: runs/eval]")
@click.option("--teacher", help="a --model NAME, or a teacher recipe/dir: agreement and KL to it")
@click.option("--judge", help="LLM judge for 'judge' rows (a --model NAME or teacher recipe)  [default: --teacher]")
@click.option("--gate", help="e.g. 'student.score >= 0.95 * teacher.score'; exit 3 when false")
@click.option("--max-new-tokens", type=int, help="greedy generation limit  [default: 128]")
@click.option("--batch-size", type=int, help="generation batch size  [default: 16]")
@click.option("--limit", type=int, help="only the first N suite rows")
@click.option("--kl-top-k", type=int, help="teacher top-k kept for the KL  [default: 64]")
@click.option("--speed-prompts", type=int, help="prompts timed for speed  [default: 16]")
@click.option("--device", help="auto, cpu, cuda, cuda:N  [default: auto]")
@click.option("--dtype", help="auto, float32, bfloat16, float16  [default: auto]")
@click.pass_context
def eval_command(ctx: click.Context, config_path: str | None, **params: Any) -> None:
    """Score models on a suite; agreement, KL and speed vs the teacher; report and gate.

    Exit codes: 0 ok, 2 bad input, 3 gate failed, 4 a model failed to evaluate.
    """
    from distill.config import load_config
    from distill.evaluate import EvalConfig, exit_code, run

    overrides = given(ctx, **params)
    if not overrides.get("models"):
        overrides.pop("models", None)
    report = run(load_config(EvalConfig, config_path, overrides))
    sys.exit(exit_code(report))
