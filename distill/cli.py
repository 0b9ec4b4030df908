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


@main.command("augment")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML file of AugmentConfig keys")
@click.option("--teacher", help="teacher recipe name, recipe YAML, or local HF model dir")
@click.option("--prompts", help="seed prompts (JSONL/CSV/Parquet/datasets folder)")
@click.option("--out", help="output folder: prompts.jsonl, rejected.jsonl, augment.json, rounds/")
@click.option("-n", "--num-prompts", type=int, help="synthetic prompts to accept  [default: 1000]")
@click.option("--backend", help="hf, vllm or openai  [default: the recipe's]")
@click.option("--seed", type=int, help="random seed  [default: 0]")
@click.option("--max-rounds", type=int, help="round budget  [default: 50]")
@click.option("--requests-per-round", type=int, help="teacher generations per round, 0 = auto  [default: 0]")
@click.option("--few-shot", type=int, help="examples per request  [default: 3]")
@click.option("--synthetic-fraction", type=float, help="share of examples drawn from accepted synthetic prompts  [default: 0.0]")
@click.option("--prompts-per-request", type=int, help="new prompts asked for per generation  [default: 5]")
@click.option("--temperature", type=float, help="sampling temperature  [default: 1.0]")
@click.option("--top-p", type=float, help="nucleus sampling  [default: 0.95]")
@click.option("--generation-max-tokens", type=int, help="tokens the teacher may write per request  [default: 512]")
@click.option("--max-new-tokens", type=int, help="response budget to leave in the context (as for generate)  [default: 256]")
@click.option("--min-words", type=int, help="reject shorter prompts  [default: 3]")
@click.option("--near-dup-threshold", type=float, help="Jaccard at or above which prompts are near duplicates  [default: 0.7]")
@click.option("--shingle", type=click.Choice(["word", "char"]), help="near-dup shingle kind  [default: word]")
@click.option("--shingle-size", type=int, help="words (or chars) per shingle  [default: 3]")
@click.option("--decontaminate", help="eval suite name in eval/ or JSONL path: no shared n-gram with its prompts")
@click.option("--decontaminate-ngram", type=int, help="n-gram size in words  [default: 13]")
@click.option("--judge-threshold", type=float, help="teacher judge: keep prompts scored >= this (1-5); 0 = off  [default: 0]")
@click.pass_context
def augment_command(ctx: click.Context, config_path: str | None, **params: Any) -> None:
    """Write new prompts from a few seeds with the teacher; dedup, filter, decontaminate."""
    from distill.augment import AugmentConfig, run
    from distill.config import load_config

    run(load_config(AugmentConfig, config_path, given(ctx, **params)))
