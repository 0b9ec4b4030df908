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
# The deepspeed launcher inserts --local_rank=N after the module name; the rank comes from the
# environment (LOCAL_RANK) anyway, so accept and ignore it.
@click.option("--local_rank", "--local-rank", type=int, hidden=True, expose_value=False)
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
@click.option("--kl-top-k", type=int, help="teacher top-k kept for the KL  [default: 20]")
@click.option("--speed-prompts", type=int, help="prompts timed for speed  [default: 16]")
@click.option("--speed-rounds", type=int, help="timing rounds, models taking turns; median tokens/s  [default: 3]")
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
@click.option("--progress/--no-progress", default=None, help="progress bar  [default: on]")
@click.pass_context
def augment_command(ctx: click.Context, config_path: str | None, **params: Any) -> None:
    """Write new prompts from a few seeds with the teacher; dedup, filter, decontaminate."""
    from distill.augment import AugmentConfig, run
    from distill.config import load_config

    run(load_config(AugmentConfig, config_path, given(ctx, **params)))


@main.command("train")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML file of TrainConfig keys")
@click.option("--student", help="student recipe name/YAML, HF model dir, config .json (random init), or hub id")
@click.option("--corpus", multiple=True, help="corpus directory (repeatable: read as one corpus)")
@click.option("--out", help="output dir: checkpoints/, metrics.jsonl, final/ (and adapter/ with LoRA)")
@click.option("--tokenizer", help="tokenizer overriding the student's")
@click.option("--kd-weight", type=float, help="loss = w*KD + (1-w)*CE; 0 = plain SFT  [default: 0.5]")
@click.option("--prompt-loss-weight", type=float, help="CE on prompt tokens too, each weighted w against a response token  [default: 0]")
@click.option("--divergence", type=click.Choice(["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd"]), help="[default: forward_kl]")
@click.option("--kd-temperature", type=float, help="softens both (k+1)-bin distributions, KD x T^2  [default: 1.0]")
@click.option("--jsd-beta", type=float, help="[default: 0.5]")
@click.option("--skew-alpha", type=float, help="[default: 0.1]")
@click.option("--lora/--full", "lora", default=None, help="LoRA adapter or all weights  [default: the recipe's, else full]")
@click.option("--lora-rank", type=int, help="[default: 16]")
@click.option("--lora-alpha", type=int, help="[default: 32]")
@click.option("--lora-dropout", type=float, help="[default: 0.0]")
@click.option("--lora-targets", help="comma-separated module names  [default: all attention + MLP projections]")
@click.option("--lr", type=float, help="peak learning rate  [default: 1e-5]")
@click.option("--weight-decay", type=float, help="AdamW weight decay  [default: 0.0]")
@click.option("--schedule", type=click.Choice(["cosine", "linear", "constant"]), help="after warmup  [default: cosine]")
@click.option("--warmup-steps", type=int, help="[default: 0]")
@click.option("--min-lr-ratio", type=float, help="final learning rate as a fraction of --lr  [default: 0]")
@click.option("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
@click.option("--epochs", type=int, help="[default: 1]")
@click.option("--tokens-per-batch", type=int, help="padded tokens per micro-batch  [default: 4096]")
@click.option("--batch-size", type=int, help="rows per micro-batch (instead of --tokens-per-batch)")
@click.option("--grad-accum", type=int, help="micro-batches per step and rank  [default: 1]")
@click.option("--max-seq-len", type=int, help="[default: 2048]")
@click.option("--packing/--no-packing", default=None, help="pack rows into max-seq-len sequences, no padding  [default: off]")
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None, help="[default: off]")
@click.option("--max-grad-norm", type=float, help="clipping, 0 = off  [default: 1.0]")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]),
              help="bf16 autocast or fp32; auto = bf16 on a CUDA GPU that has it  [default: auto]")
@click.option("--seed", type=int, help="[default: 0]")
@click.option("--deepspeed", help="zero2, zero3 or a DeepSpeed JSON path")
@click.option("--save-every", type=int, help="checkpoint every N steps  [default: 0 = final only]")
@click.option("--keep-checkpoints", type=int, help="[default: 2]")
@click.option("--resume", is_flag=True, default=None, help="continue from the newest complete checkpoint in --out")
@click.option("--eval-every", type=int, help="held-out eval every N steps  [default: 0]")
@click.option("--eval-rows", type=int, help="corpus rows held out for eval  [default: 0]")
@click.option("--tracker", type=click.Choice(["none", "tensorboard", "mlflow"]), help="[default: none]")
@click.pass_context
def train_command(ctx: click.Context, config_path: str | None, **params: Any) -> None:
    """Train a student on a corpus: KD on the teacher's top-k + CE; full or LoRA; DeepSpeed-ready."""
    from distill.train import load_train_config, run

    overrides = given(ctx, **params)
    if isinstance(overrides.get("lora_targets"), str):
        overrides["lora_targets"] = tuple(t.strip() for t in overrides["lora_targets"].split(",") if t.strip())
    if not overrides.get("corpus"):
        overrides.pop("corpus", None)
    run(load_train_config(config_path, overrides))


@main.command("generate")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML file of GenerateConfig keys")
@click.option("--teacher", help="teacher recipe name, recipe YAML, or local HF model directory")
@click.option("--prompts", multiple=True, help="seed prompts: .jsonl, .csv, .parquet, or a datasets.save_to_disk folder (repeatable: read as one set)")
@click.option("--out", help="corpus output directory (resumable)")
@click.option("--backend", type=click.Choice(["hf", "vllm", "openai"]), help="teacher backend  [default: the recipe's]")
@click.option("--top-k", type=int, help="teacher log-probs stored per response token  [default: 20]")
@click.option("--max-new-tokens", type=int, help="response length limit  [default: 256]")
@click.option("--temperature", type=float, help="sampling temperature, 0 = greedy (stored log-probs stay T=1)  [default: 1.0]")
@click.option("--top-p", type=float, help="nucleus sampling for the response  [default: 1.0]")
@click.option("--samples-per-prompt", type=int, help="responses per prompt  [default: 1]")
@click.option("--seed", type=int, help="base sampling seed  [default: 0]")
@click.option("--batch-size", type=int, help="prompts per teacher batch  [default: the recipe's, else 8]")
@click.option("--stop", multiple=True, help="stop string (repeatable)  [default: EOS only]")
@click.option("--shard", help="i/N: run worker i of N (K8s Indexed Job, SageMaker, Slurm array)  [default: 0/1]")
@click.option("--rows-per-shard", type=int, help="rows per Parquet shard, the unit of resume  [default: 1024]")
@click.option("--skip-invalid", is_flag=True, default=None, help="skip invalid seed records, counted in the manifest  [default: fail]")
@click.option("--progress/--no-progress", default=None, help="progress bar  [default: on]")
@click.option("--augment", type=int, help="first let the teacher write N new prompts from the seeds (docs/augmentation.md)  [default: 0]")
@click.option("--augment-config", type=click.Path(dir_okay=False), help="YAML of augmentation settings (AugmentConfig keys) for --augment")
@click.option("--decontaminate", help="with --augment: eval suite (name in eval/ or JSONL) whose 13-grams synthetic prompts must avoid")
@click.option("--judge-threshold", type=float, help="with --augment: keep synthetic prompts the teacher judges >= this (1-5)  [default: 0 = off]")
@click.option("--responses", type=click.Choice(["teacher", "reference"]), help="reference: each prompt's labelled reference is the response, scored by the teacher  [default: teacher]")
@click.pass_context
def generate_command(ctx: click.Context, config_path: str | None, **params: Any) -> None:
    """Teacher answers the prompts; writes a corpus with top-k log-probs (resumable, shardable)."""
    from distill.config import load_config
    from distill.corpus import CorpusError
    from distill.generate import GenerateConfig, run

    overrides = given(ctx, **params)
    for repeatable in ("stop", "prompts"):
        if not overrides.get(repeatable):
            overrides.pop(repeatable, None)
    if "prompts" in overrides:
        overrides["prompts"] = overrides["prompts"][0] if len(overrides["prompts"]) == 1 else overrides["prompts"]
    try:
        run(load_config(GenerateConfig, config_path, overrides))
    except CorpusError as exc:
        raise ConfigError(str(exc)) from None


@main.command("inspect")
@click.argument("corpus_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of the summary")
@click.option("--samples", type=int, default=2, help="decoded sample rows to show")
@click.option("--verify/--no-verify", default=True, help="check every shard's sha256")
def inspect_command(corpus_dirs: tuple[str, ...], as_json: bool, samples: int, verify: bool) -> None:
    """Summarize a corpus (one dir, or several read as one): rows, tokens, k, size, fingerprints."""
    from distill.corpus import CorpusError
    from distill.inspect import run

    try:
        run(list(corpus_dirs), as_json=as_json, samples=samples, verify=verify)
    except CorpusError as exc:
        raise ConfigError(str(exc)) from None
