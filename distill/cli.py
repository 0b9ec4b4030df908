"""The `distill` command line. Each command parses flags, builds its stage config, calls run().

The options of generate, augment, train and eval come from their config dataclasses
(distill/options.py): one declaration per option. Imports of torch/transformers/vllm/deepspeed
happen inside the stages, so `distill --help` starts fast on a laptop. Failures a user can cause
print one line and exit with their class's code (distill/errors.py).
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import click

from distill.augment import AugmentConfig
from distill.errors import DistillError, ExitCode, describe_os_error
from distill.eval import EvalConfig
from distill.generate import GenerateConfig
from distill.logs import LogsConfig
from distill.options import given, stage_options
from distill.train import TrainConfig
from distill.train.init_student import InitStudentConfig


class DistillGroup(click.Group):
    """Turns user-facing failures into one clear line and the exit code of their class
    (``--debug`` or DISTILL_DEBUG=1 shows the traceback as well)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DistillError as exc:
            self._fail(ctx, " ".join(str(exc).split()), exc.exit_code)
        except OSError as exc:  # the file system said no: permission, disk full, a missing path
            message, code = describe_os_error(exc)
            self._fail(ctx, message, code)
        except UnicodeDecodeError as exc:
            self._fail(ctx, f"undecodable bytes (not UTF-8) at byte {exc.start}: {exc.reason}", ExitCode.BAD_INPUT)

    @staticmethod
    def _fail(ctx: click.Context, message: str, code: ExitCode) -> None:
        if (ctx.obj or {}).get("debug") or os.environ.get("DISTILL_DEBUG"):
            traceback.print_exc()
        click.echo(f"error: {message}", err=True)
        sys.exit(int(code))


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from distill.build_info import version_text

    click.echo(version_text())
    ctx.exit()


@click.group(cls=DistillGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="print distill's version and those of torch, CUDA, transformers, DeepSpeed, vLLM and the image")
# The deepspeed launcher inserts --local_rank=N after the module name; the rank comes from the
# environment (LOCAL_RANK) anyway, so accept and ignore it.
@click.option("--local_rank", "--local-rank", type=int, hidden=True, expose_value=False)
@click.option("--debug", is_flag=True, help="show the traceback of a failure too (or set DISTILL_DEBUG=1)")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Distill a large teacher LLM into a small student.

    \b
    distill logs       production request logs -> scrubbed, deduplicated prompts
    distill generate   teacher writes a corpus: prompts, responses, top-k log-probs
    distill augment    teacher writes new prompts from seeds (the first step of generate --augment)
    distill init-student   a student from a subset of the teacher's layers
    distill train      student learns from it: KD (top-k) + SFT, DeepSpeed-ready
    distill eval       score models on a suite, compare, gate
    distill inspect    summarize a corpus
    distill pipeline   scheduled re-distillation: run, status, promote, rollback, render
    distill demo       the whole pipeline on the shipped demo teacher (CPU, minutes)

    Exit codes: 0 ok, 1 unexpected error, 2 bad input, 3 gate failed, 4 a model failed to evaluate,
    5 training diverged, 6 lock held, 7 nothing to do, 8 a pipeline stage failed, 74 storage
    refused, 75 preempted (rerun to resume); docs/cli.md.
    """
    ctx.obj = {"debug": debug}


@main.command("logs")
@stage_options(LogsConfig)
@click.pass_context
def logs_command(ctx: click.Context, config_path: str | None, **params: Any) -> None:
    """Production request logs (OpenAI-format, LiteLLM, Bedrock) -> scrubbed, deduplicated prompts."""
    from distill.config import load_config
    from distill.logs import run

    run(load_config(LogsConfig, config_path, given(ctx, params, LogsConfig)))


@main.command("generate")
@stage_options(GenerateConfig)
@click.pass_context
def generate_command(ctx: click.Context, config_path: str | None, **params: Any) -> None:
    """Teacher answers the prompts; writes a corpus with top-k log-probs (resumable, shardable)."""
    from distill.config import load_config
    from distill.generate import run

    run(load_config(GenerateConfig, config_path, given(ctx, params, GenerateConfig)))


@main.command("augment")
@stage_options(AugmentConfig)
@click.pass_context
def augment_command(ctx: click.Context, config_path: str | None, **params: Any) -> None:
    """Write new prompts from a few seeds with the teacher; dedup, filter, decontaminate."""
    from distill.augment import run
    from distill.config import load_config

    run(load_config(AugmentConfig, config_path, given(ctx, params, AugmentConfig)))


@main.command("train")
@stage_options(TrainConfig)
@click.pass_context
def train_command(ctx: click.Context, config_path: str | None, **params: Any) -> None:
    """Train a student on a corpus: KD on the teacher's top-k + CE; full or LoRA; DeepSpeed-ready."""
    from distill.train import load_train_config, run

    run(load_train_config(config_path, given(ctx, params, TrainConfig)))


@main.command("init-student")
@stage_options(InitStudentConfig)
@click.pass_context
def init_student_command(ctx: click.Context, config_path: str | None, **params: Any) -> None:
    """Initialise a student from the teacher: keep a subset of its layers (depth pruning)."""
    from distill.config import load_config
    from distill.train.init_student import run

    run(load_config(InitStudentConfig, config_path, given(ctx, params, InitStudentConfig)))


@main.command("eval")
@stage_options(EvalConfig)
@click.pass_context
def eval_command(ctx: click.Context, config_path: str | None, **params: Any) -> None:
    """Score models on a suite; agreement, KL and speed vs the teacher; report and gate.

    Exit codes: 0 ok, 2 bad input, 3 gate failed, 4 a model failed to evaluate.
    """
    from distill.config import load_config
    from distill.eval import exit_code, run

    report = run(load_config(EvalConfig, config_path, given(ctx, params, EvalConfig)))
    sys.exit(exit_code(report))


@main.command("inspect")
@click.argument("corpus_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of the summary")
@click.option("--samples", type=int, default=2, show_default=True, help="decoded sample rows to show")
@click.option("--verify/--no-verify", default=True, show_default=True, help="check every shard's sha256")
def inspect_command(corpus_dirs: tuple[str, ...], as_json: bool, samples: int, verify: bool) -> None:
    """Summarize a corpus (one dir, or several read as one): rows, tokens, k, size, fingerprints,
    augmentation yield per rejection reason; or a `distill augment` output folder's yield, or a
    `distill logs` output folder's counts per reason."""
    from distill.inspect import run

    run(list(corpus_dirs), as_json=as_json, samples=samples, verify=verify)


@main.group("pipeline", cls=DistillGroup)
def pipeline_group() -> None:
    """Scheduled re-distillation: one idempotent command a scheduler calls (docs/pipeline.md).

    \b
    distill pipeline run SPEC        collect new prompts -> generate -> train -> eval -> gate -> promote
    distill pipeline status SPEC     the champion, the last runs, a plot of their scores
    distill pipeline promote SPEC --run RUN_ID    move the alias by hand
    distill pipeline rollback SPEC   the previous champion back
    distill pipeline render SPEC --target cronjob|argo|sagemaker

    Exit codes of run: 0 promoted, 3 gate failed (not promoted), 7 nothing new, 6 lock held,
    2 bad spec or input, 8 a stage failed, 74 storage refused, 75 stopped (rerun to resume).
    """


_spec_argument = click.argument("spec", type=click.Path(dir_okay=False))
_work_option = click.option("--work", type=click.Path(file_okay=False), default=None,
                            help="local mirror of an object store's stages (default: the spec's work, else ~/.cache/distill/pipeline/NAME)")


@pipeline_group.command("run")
@_spec_argument
@click.option("--run-id", default=None, help="the run's id (a rerun with the same id resumes it, or does nothing when it finished)")
@click.option("--scheduled-time", default=None, help="the schedule's time for this run (ISO 8601): the run id becomes scheduled-YYYYMMDDTHHMMSSZ")
@_work_option
@click.option("--nothing-new-ok", is_flag=True, help="exit 0 instead of 7 when there is nothing new (for schedulers that alert on any non-zero exit)")
@click.option("--only", type=click.Choice(["prepare", "generate", "train"]), default=None,
              help="one step, for workflows that spread a run over pods: prepare (collect, augment), generate "
                   "(with --shard: one worker), train (every torchrun rank); a plain run then finishes the rest")
@click.option("--shard", default=None, help="with --only generate: i/N, or auto ($JOB_COMPLETION_INDEX of $DISTILL_SHARD_COUNT)")
@click.option("--outcome-file", type=click.Path(dir_okay=False), default=None,
              help="write one word here: promoted, gate_failed, nothing_new, prepared, generated, trained (workflow conditions)")
def pipeline_run(spec: str, run_id: str | None, scheduled_time: str | None, work: str | None, nothing_new_ok: bool,
                 only: str | None, shard: str | None, outcome_file: str | None) -> None:
    """Run (or resume) one scheduled run: new prompts -> corpus -> student -> gate -> promotion.

    Without --run-id or --scheduled-time the id is a hash of the spec and the source files, so a
    scheduler that calls again with nothing new gets "already finished" (or exit 7)."""
    from distill.pipeline.run import run_pipeline

    sys.exit(run_pipeline(spec, run_id=run_id, scheduled=scheduled_time, work=work, only=only, shard=shard,
                          nothing_new_ok=nothing_new_ok, outcome_file=outcome_file))


@pipeline_group.command("status")
@_spec_argument
@click.option("--runs", default=10, show_default=True, type=int, help="the last N runs")
@click.option("--plot", default=None, type=click.Path(dir_okay=False), help="PNG of challenger/champion/teacher scores over runs (default: STORE/status.png for a folder store)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@_work_option
def pipeline_status(spec: str, runs: int, plot: str | None, as_json: bool, work: str | None) -> None:
    """The champion, the last runs with their stages, decisions and scores, and a plot."""
    from distill.pipeline.status import status

    status(spec, runs=runs, plot=plot, as_json=as_json, work=work)


@pipeline_group.command("promote")
@_spec_argument
@click.option("--run", "run_id", required=True, help="the finished run whose student becomes the champion")
@_work_option
def pipeline_promote(spec: str, run_id: str, work: str | None) -> None:
    """Move the alias to a finished run's student (also one whose gate failed)."""
    from distill.pipeline.status import move_alias

    sys.exit(move_alias(spec, run_id, work))


@pipeline_group.command("rollback")
@_spec_argument
@_work_option
def pipeline_rollback(spec: str, work: str | None) -> None:
    """Move the alias back to the previous champion."""
    from distill.pipeline.status import move_alias

    sys.exit(move_alias(spec, None, work))


@pipeline_group.command("render")
@_spec_argument
@click.option("--target", required=True, type=click.Choice(["cronjob", "argo", "sagemaker"]), help="the scheduler")
@click.option("--image", default=None, help="the distill image (cronjob, argo: default distill-gpu, set by kustomize; sagemaker: the ECR URI, required)")
@click.option("--schedule", default="0 2 * * *", show_default=True, help="cron: minute hour day month weekday")
@click.option("--timezone", default="Etc/UTC", show_default=True, help="the schedule's time zone")
@click.option("--namespace", default="distill", show_default=True, help="Kubernetes namespace")
@click.option("--gpus", default=8, show_default=True, type=int, help="GPUs per pod (generate workers, train nodes, the cronjob's one pod)")
@click.option("--nodes", default=2, show_default=True, type=int, help="argo: training nodes (PyTorchJob Master + Workers)")
@click.option("--shards", default=4, show_default=True, type=int, help="argo: generate workers at once")
@click.option("--data-pvc", default="distill-data", show_default=True, help="the shared volume (mounted at /data) for folder stores and sources")
@click.option("--secret", default="distill-store", show_default=True, help="Secret with the store's AWS_* credentials (optional; IRSA otherwise)")
@click.option("--role-arn", default=None, help="sagemaker: the training job's execution role (required)")
@click.option("--scheduler-role-arn", default=None, help="sagemaker: the role EventBridge Scheduler assumes (default: --role-arn)")
@click.option("--s3-prefix", default=None, help="sagemaker: s3:// prefix for config/, output/, checkpoints/ (required)")
@click.option("--instance-type", default="ml.p4d.24xlarge", show_default=True, help="sagemaker: the instance")
def pipeline_render(spec: str, target: str, **options: Any) -> None:
    """Print a scheduler's definition of the pipeline: a Kubernetes CronJob, an Argo CronWorkflow
    (sharded generate, PyTorchJob training), or a SageMaker training job + EventBridge schedule."""
    from distill.pipeline.render import RenderOptions, render

    for key in ("gpus", "nodes", "shards"):
        if options[key] < (0 if key == "gpus" else 1):
            from distill.errors import ConfigError

            raise ConfigError(f"--{key}: must be >= {0 if key == 'gpus' else 1}, got {options[key]}")
    click.echo(render(spec, target, RenderOptions(**options)), nl=False)


@main.command("demo")
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(), help="folder for everything the demo writes")
@click.option("--seed", default=0, show_default=True, type=int, help="seed of augmentation and training")
@click.option("--smoke", is_flag=True, help="a run of seconds that takes every step: 16 prompts, 4 train steps, 8 suite prompts")
def demo_command(out: str, seed: int, smoke: bool) -> None:
    """The whole pipeline on the shipped demo teacher, on CPU: generate, train, eval (minutes).

    Runs the shipped scripts/demo.sh (what `make demo` runs): plain `distill` calls you can copy.
    """
    import shutil

    from distill.recipes import shipped_dir

    bash = shutil.which("bash")
    if bash is None:
        raise DistillError("distill demo: bash not found on PATH (the demo is a bash script of distill calls)")
    script = shipped_dir("scripts") / "demo.sh"
    bin_dir = os.path.dirname(sys.executable)  # the `distill` next to this Python
    env = {**os.environ, "RUN": out, "SEED": str(seed), "DATA": str(shipped_dir("data")),
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    if smoke:
        env.update({"AUGMENT": "16", "STEPS": "4", "LIMIT": "8"})
    sys.stdout.flush()
    os.execve(bash, [bash, str(script)], env)  # the script's exit status is the command's


def entry() -> None:
    """The console script and ``python -m distill``: the CLI, or, when launched as a SageMaker
    training job (the single argument ``train`` and a hyperparameters file), that job's contract."""
    from distill import sagemaker
    from distill.stop import STOP

    # SIGTERM (docker stop, a SageMaker stop or spot interruption, a Kubernetes eviction): every
    # stage that polls the flag stops at its next safe point and exits 75. Installed here, for the
    # process that runs the command, not in ``main``, so code that calls ``main`` in-process keeps
    # its own handling; and only for those stages: any other command (inspect, init-student) keeps
    # the default, so a SIGTERM ends it at once instead of being recorded and never looked at.
    job = sagemaker.is_job(sys.argv[1:])
    if job or _command(sys.argv[1:]) in STOP_AWARE:
        STOP.install()
    if job:
        sys.exit(sagemaker.run_job())
    main()


# the commands that poll distill.stop.STOP at their safe points
STOP_AWARE = {"generate", "augment", "train", "eval", "logs", "pipeline run"}


def _command(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (after any global options): ``pipeline run`` for the
    pipeline group's commands, which differ (status, render... never poll the flag)."""
    words = [arg for arg in argv if not arg.startswith("-")]
    if not words:
        return None
    if words[0] == "pipeline" and len(words) > 1:
        return f"pipeline {words[1]}"
    return words[0]
