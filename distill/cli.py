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
