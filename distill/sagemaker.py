"""The SageMaker training-job contract: ``docker run IMAGE train`` as SageMaker runs a
bring-your-own-container job.

SageMaker starts the container with the single argument ``train`` and lays out ``/opt/ml``
(``DISTILL_SAGEMAKER_ROOT`` moves it, for tests and local runs):

    input/config/hyperparameters.json   the job's hyperparameters, each value a JSON-encoded string
    input/config/resourceconfig.json    {"current_host": "algo-1", "hosts": ["algo-1", ...]}
    input/data/<channel>/               the input channels
    checkpoints/                        synced with checkpoint_s3_uri: what a restarted job resumes from
    model/                              uploaded as model.tar.gz when the job succeeds
    output/failure                      the failure reason SageMaker shows (first 1,024 characters)

A ``stage`` hyperparameter picks ``generate``, ``augment``, ``train``, ``eval`` or ``pipeline`` (one
``distill pipeline run``: the spec from the ``config`` channel, ``run_id`` / ``scheduled_time`` /
``nothing_new_ok`` its only keys, the work folder under ``checkpoints/``); every other
hyperparameter is a key of that stage's config, validated like a ``--config`` file (errors name
``hyperparameters.json: key``). Channels map to the stage's inputs (``CHANNELS``); the stage writes
its resumable state under ``checkpoints/`` (train resumes automatically; generate keeps its
finished shards there) and its product to ``model/``: the student in Hugging Face format, the
corpus, the augmented prompts, or the eval report.

Multi-node: ``resourceconfig.json``'s hosts, sorted, give the node rank (the current host's index)
and the master (the first host); ``train`` then runs under ``torchrun`` with those arguments and
one process per GPU (``SM_NUM_GPUS``; ``DISTILL_NPROC_PER_NODE`` overrides, e.g. for CPU tests),
rendezvous on port 29500 of the master (``DISTILL_MASTER_PORT`` overrides).

Metrics go to the log one per line as ``metric: NAME=VALUE ...`` (``METRIC_DEFINITIONS`` holds the
regexes for the estimator).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.config import ConfigError, Layer
from distill.errors import DistillError, ExitCode, describe_os_error
from distill.stop import STOP

ROOT_ENV = "DISTILL_SAGEMAKER_ROOT"
DEFAULT_ROOT = "/opt/ml"
STAGES = ("generate", "augment", "train", "eval", "pipeline")
PIPELINE_KEYS = ("spec", "run_id", "scheduled_time", "nothing_new_ok")
FAILURE_CHARS = 1024
# torchrun's wait for its workers to checkpoint after SIGTERM, before it kills them: inside the
# 120 s SageMaker leaves between SIGTERM and SIGKILL (DISTILL_STOP_GRACE_S overrides)
STOP_GRACE_S = 110
# channel -> the stage config key it fills; a channel holding one file gives that file's path
CHANNELS = {
    "generate": {"prompts": "prompts", "teacher": "teacher"},
    "augment": {"prompts": "prompts", "teacher": "teacher"},
    "train": {"corpus": "corpus", "student": "student"},
    "eval": {"suite": "suite"},  # student / teacher channels become --model entries (see _eval_models)
}
# For the SageMaker Python SDK: Estimator(..., metric_definitions=METRIC_DEFINITIONS)
METRIC_DEFINITIONS = [
    {"Name": "train:loss", "Regex": r"metric: step=\d+ .*?\bloss=([-+0-9.eE]+|nan|inf)"},
    {"Name": "train:kd", "Regex": r"metric: step=\d+ .*?\bkd=([-+0-9.eE]+|nan|inf)"},
    {"Name": "train:ce", "Regex": r"metric: step=\d+ .*?\bce=([-+0-9.eE]+|nan|inf)"},
    {"Name": "train:lr", "Regex": r"metric: step=\d+ .*?\blr=([-+0-9.eE]+)"},
    {"Name": "validation:kl", "Regex": r"metric: step=\d+ .*?\beval_kl=([-+0-9.eE]+|nan|inf)"},
    {"Name": "validation:ce", "Regex": r"metric: step=\d+ .*?\beval_ce=([-+0-9.eE]+|nan|inf)"},
    {"Name": "eval:score", "Regex": r"metric: model=(?:student|\S+) score=([-+0-9.eE]+)"},
]


@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def from_env(cls) -> "Layout":
        return cls(Path(os.environ.get(ROOT_ENV, DEFAULT_ROOT)))

    @property
    def hyperparameters(self) -> Path:
        return self.root / "input" / "config" / "hyperparameters.json"

    @property
    def resourceconfig(self) -> Path:
        return self.root / "input" / "config" / "resourceconfig.json"

    def channel(self, name: str) -> Path:
        return self.root / "input" / "data" / name

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def failure(self) -> Path:
        return self.root / "output" / "failure"


def is_job(argv: list[str]) -> bool:
    """Whether this process is a SageMaker job: launched as ``train`` alone, with a hyperparameters file."""
    return argv == ["train"] and Layout.from_env().hyperparameters.is_file()


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from one of SageMaker's config files; errors name the file and line."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return raw


def decode_hyperparameters(path: Path) -> dict[str, Any]:
    """hyperparameters.json -> values: the SDK JSON-encodes each value into a string ("\\"train\\"",
    "0.001", "[\\"a\\"]"); a string that is not JSON is taken as it is."""
    raw = read_json_object(path)
    values = {}
    for key, value in raw.items():
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        values[str(key).replace("-", "_")] = value
    return values


def torchrun_args(resourceconfig: dict[str, Any], nproc_per_node: int, port: int = 29500) -> list[str]:
    """torchrun's multi-node arguments from SageMaker's resourceconfig.json: hosts sorted, the master
    is the first, the node rank is the current host's index."""
    hosts = sorted(resourceconfig.get("hosts") or [])
    current = resourceconfig.get("current_host")
    if not hosts or current not in hosts:
        raise ConfigError(f"resourceconfig.json: current_host {current!r} is not among hosts {hosts}")
    return ["--nnodes", str(len(hosts)), "--node_rank", str(hosts.index(current)), "--nproc_per_node", str(nproc_per_node),
            "--master_addr", hosts[0], "--master_port", str(port)]


def _channel_input(layout: Layout, name: str) -> str | None:
    folder = layout.channel(name)
    if not folder.is_dir():
        return None
    files = [p for p in folder.iterdir() if not p.name.startswith(".")]
    # a channel with one data file (seeds.jsonl, suite.jsonl) names the file; otherwise the folder
    if len(files) == 1 and files[0].is_file():
        return str(files[0])
    return str(folder)


def _eval_models(layout: Layout, values: dict[str, Any]) -> dict[str, Any]:
    """The eval stage's --model entries: the hyperparameters' ``models`` (or ``model``), then the
    teacher and student channels."""
    models = []
    for key in ("models", "model"):
        given = values.pop(key, None) or []
        models += [given] if isinstance(given, str) else list(given)
    for name in ("teacher", "student"):
        path = _channel_input(layout, name)
        if path is not None:
            models.append(f"{name}={path}")
            if name == "teacher":
                values.setdefault("teacher", "teacher")
    values["models"] = tuple(models)
    return values


def _nproc_per_node() -> int:
    if os.environ.get("DISTILL_NPROC_PER_NODE"):
        return int(os.environ["DISTILL_NPROC_PER_NODE"])
    if os.environ.get("SM_NUM_GPUS"):
        return max(1, int(os.environ["SM_NUM_GPUS"]))
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except Exception:
        return 1


def _copy_product(source: Path, dest: Path) -> None:
    """Copy a stage's product into model/ (what SageMaker uploads), replacing what is there."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name.startswith(".") or item.name == "checkpoints":
            continue
        target = dest / item.name
        if item.is_dir():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(item, target)
        else:
            shutil.copy2(item, target)


def run_job(layout: Layout | None = None) -> int:
    """Run the job the hyperparameters describe; returns the exit code. Any failure is also written
    to output/failure (what SageMaker shows as the reason)."""
    layout = layout or Layout.from_env()
    try:
        return _run(layout)
    except DistillError as exc:
        return _fail(layout, " ".join(str(exc).split()), exc.exit_code)
    except OSError as exc:
        message, code = describe_os_error(exc)
        return _fail(layout, message, code)
    except Exception as exc:  # the failure file must say something whatever went wrong
        return _fail(layout, f"{type(exc).__name__}: {exc}", ExitCode.INTERNAL)


def _fail(layout: Layout, message: str, code: ExitCode) -> int:
    print(f"error: {message}", file=sys.stderr)
    try:
        layout.failure.parent.mkdir(parents=True, exist_ok=True)
        layout.failure.write_text(message[:FAILURE_CHARS], encoding="utf-8")
    except OSError as exc:
        print(f"error: cannot write {layout.failure}: {exc.strerror}", file=sys.stderr)
    return int(code)


def _run(layout: Layout) -> int:
    values = decode_hyperparameters(layout.hyperparameters)
    where = "hyperparameters.json"
    stage = values.pop("stage", None)
    if stage not in STAGES:
        raise ConfigError(f"{where}: stage: must be one of {', '.join(STAGES)}, got {stage!r}")
    if stage == "pipeline":
        return _pipeline(layout, values, where)
    for channel, key in CHANNELS[stage].items():
        path = _channel_input(layout, channel)
        if path is not None:
            values[key] = (path,) if key == "corpus" else path
    state = layout.checkpoints / stage
    values["out"] = str(state)
    values.pop("progress", None)
    os.environ["DISTILL_PRINT_METRICS"] = "1"
    if stage == "train":
        from distill.train import load_train_config
        from distill.train import run as train

        config = load_train_config(Layer(where, {**values, "resume": values.get("resume", True)}), {})
        hosts = read_json_object(layout.resourceconfig) if layout.resourceconfig.is_file() else None
        nproc = _nproc_per_node()
        if (hosts and len(hosts.get("hosts", [])) > 1) or nproc > 1:
            return _torchrun_train(layout, hosts or {"current_host": "local", "hosts": ["local"]}, nproc, config)
        train(config)
        _copy_product(state / "final", layout.model)
        return 0
    from distill.config import load_config

    if stage == "eval":
        from distill.eval import EvalConfig
        from distill.eval.runner import exit_code as eval_exit_code
        from distill.eval.runner import run as evaluate

        config = load_config(EvalConfig, Layer(where, _eval_models(layout, values)))
        report = evaluate(config)
        for name, entry in report["models"].items():
            if entry.get("status") == "ok":
                print(f"metric: model={name} score={entry['score']:.6f}")
        _copy_product(state, layout.model)
        code = eval_exit_code(report)
        if code:  # the report is in model/ either way; the failure file says why the job failed
            from distill.eval.gate import gate_summary

            failed = [f"{n}: {e.get('error')}" for n, e in report["models"].items() if e.get("status") != "ok"]
            reason = gate_summary(report["gate"]) if code == ExitCode.GATE_FAILED else "; ".join(
                failed + [report.get("teacher_error") or "", report.get("judge_error") or ""]).strip("; ")
            return _fail(layout, reason, ExitCode(code))
        return 0
    if stage == "generate":
        from distill.generate import GenerateConfig
        from distill.generate import run as generate

        generate(load_config(GenerateConfig, Layer(where, {**values, "progress": False})))
    else:
        from distill.augment import AugmentConfig
        from distill.augment import run as augment

        augment(load_config(AugmentConfig, Layer(where, {**values, "progress": False})))
    _copy_product(state, layout.model)
    return 0


def _pipeline(layout: Layout, values: dict[str, Any], where: str) -> int:
    """``stage: pipeline``: one ``distill pipeline run`` (a scheduled run) in the job. The spec is the
    ``config`` channel's one file (or the ``spec`` hyperparameter's path); the run's local work folder
    is under checkpoints/ (synced to S3), so a restarted spot job resumes where it stopped. The store
    holds the product; model/outcome.json says which run it was and how it ended."""
    from distill.pipeline.run import run_pipeline

    unknown = sorted(set(values) - set(PIPELINE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]}: unknown key for stage pipeline; known: {', '.join(PIPELINE_KEYS)}")
    spec = values.get("spec") or _channel_input(layout, "config")
    if not spec or not Path(spec).is_file():
        raise ConfigError(f"{where}: stage pipeline needs the spec: one YAML file in the 'config' channel, or a 'spec' path")
    report: dict[str, Any] = {}
    os.environ["DISTILL_PRINT_METRICS"] = "1"
    code = run_pipeline(str(spec), run_id=values.get("run_id"), scheduled=values.get("scheduled_time"),
                        work=str(layout.checkpoints / "pipeline"), nothing_new_ok=bool(values.get("nothing_new_ok", True)),
                        report=report)
    layout.model.mkdir(parents=True, exist_ok=True)
    (layout.model / "outcome.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if code == ExitCode.GATE_FAILED:
        return _fail(layout, f"pipeline run {report.get('run')}: the gate failed; the champion is unchanged "
                             f"(decision: {report.get('store')}/runs/{report.get('run')}/decision.json)", ExitCode.GATE_FAILED)
    return code


def _run_forwarding_stop(cmd: list[str]) -> int:
    """Run ``cmd``; a SIGTERM this process gets is passed on to it once. torchrun then sends SIGTERM
    to its workers (they are in sessions of their own, out of reach of a signal to our group) and
    waits ``--shutdown_timeout`` seconds for them to checkpoint before it kills them."""
    proc = subprocess.Popen(cmd)
    forwarded = False
    while True:
        try:
            return proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            if STOP.requested and not forwarded:
                proc.send_signal(signal.SIGTERM)
                forwarded = True


def _torchrun_train(layout: Layout, resourceconfig: dict[str, Any], nproc: int, config: Any) -> int:
    """``distill train`` under torchrun on this node, with the job's validated config as a file."""
    import dataclasses

    import yaml

    state = Path(config.out)
    state.mkdir(parents=True, exist_ok=True)
    config_file = state / ".sagemaker-train.yaml"
    plain = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()}
    config_file.write_text(yaml.safe_dump(plain, sort_keys=True))
    port = int(os.environ.get("DISTILL_MASTER_PORT", "29500"))
    grace = int(os.environ.get("DISTILL_STOP_GRACE_S", STOP_GRACE_S))
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args(resourceconfig, nproc, port),
           "--shutdown_timeout", str(grace), "-m", "distill", "train", "--config", str(config_file)]
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    code = _run_forwarding_stop(cmd)
    if STOP.requested:  # the workers saw SIGTERM at a step boundary and checkpointed together
        raise STOP.preempted(f"the workers' checkpoint is in {state / 'checkpoints'}", "rerun the same job to resume")
    if code != 0:
        reason = f"distill train under torchrun exited {code}; see the log above"
        if layout.failure.exists():
            return code
        _fail(layout, reason, ExitCode(code) if code in {c.value for c in ExitCode} else ExitCode.INTERNAL)
        return code
    if resourceconfig.get("current_host") == sorted(resourceconfig.get("hosts") or ["local"])[0]:
        _copy_product(state / "final", layout.model)
    return 0
