"""The pipeline spec: one YAML file, read into frozen dataclasses like every stage config.

Unknown keys are errors naming the file and line; the stage sections (``generate``, ``augment``,
``train``, ``eval``) are the stages' own configs, checked by the stages' own dataclasses, less the
keys the pipeline sets itself (inputs and outputs). docs/pipeline.md documents every key.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from distill.config import ConfigError, Layer, bad, check_layer, field, load_config

# keys of each stage section the pipeline sets (an error when a spec sets them)
OWNED = {
    "generate": {"teacher": "the spec's teacher", "prompts": "the collected prompts", "out": "STORE/runs/RUN/generate",
                 "shard": "one worker per run", "reuse": "the store's corpora", "augment": "the augment section"},
    "augment": {"teacher": "the spec's teacher", "prompts": "the collected prompts", "out": "STORE/runs/RUN/augment"},
    "train": {"student": "the spec's student (or the champion)", "corpus": "the run's corpora (train_on)",
              "out": "STORE/runs/RUN/train", "resume": "always on"},
    "eval": {"models": "challenger, champion, teacher", "out": "STORE/runs/RUN/eval", "teacher": "the spec's teacher",
             "gate": "the spec's gate"},
    "logs": {"logs": "the source's new files", "out": "STORE/runs/RUN/collect/logs-I"},
}
GATE_MODELS = ("challenger", "champion", "teacher")
_TRAIN_ON = re.compile(r"^(new|all|window\s+([1-9][0-9]*))$")


@dataclass(frozen=True)
class Source:
    path: str = field("", help="seed prompts: a file, a folder, a glob, or an s3:// prefix (files ingest reads: "
                               ".jsonl, .csv, .parquet)")
    new: Literal["files", "all"] = field("files", help="files: only files not taken by an earlier finished run (a file "
                                                       "whose content changed counts as new; its old prompts are dropped "
                                                       "as duplicates); all: every file every run, the history dedup "
                                                       "deciding what is new")
    kind: Literal["prompts", "logs"] = field("prompts", help="prompts: seed files (.jsonl, .csv, .parquet); logs: request "
                                                             "logs (OpenAI-format, LiteLLM, Bedrock), read by distill logs")
    logs: dict = field(default_factory=dict, help="kind logs: distill logs' keys (format, model, where, scrub, "
                                                  "max_prompt_tokens, ...), less logs and out")

    def __post_init__(self) -> None:
        if not self.path:
            bad("path", "required")
        if self.logs and self.kind != "logs":
            bad("logs", "only with kind: logs")


@dataclass(frozen=True)
class Promotion:
    alias: str = field("champion", help="the alias promotion moves to the new student")
    keep: int = field(3, help="previous champions kept for rollback")
    registry: Literal["store", "mlflow"] = field("store", help="store: the ledger in the store; mlflow: also an MLflow "
                                                              "registered model (versions, alias, a run per version)")
    mlflow_tracking_uri: str | None = field(None, help="MLflow tracking server (registry: mlflow)", default_text="$MLFLOW_TRACKING_URI")
    mlflow_model_name: str | None = field(None, help="registered model name", default_text="the spec's name")

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", self.alias):
            bad("alias", f"letters, digits, - and _, starting with a letter; got {self.alias!r}")
        if self.keep < 0:
            bad("keep", f"must be >= 0, got {self.keep}")


@dataclass(frozen=True)
class PipelineSpec:
    name: str = field("", help="pipeline name (letters, digits, - and _): the MLflow experiment and model, the work folder")
    store: str = field("", help="where every run lives: a folder, or s3://bucket/prefix (needs distill[s3])")
    store_options: dict = field(default_factory=dict, help="fsspec options of an object store (endpoint_url, profile, ...)")
    work: str | None = field(None, help="local folder mirroring an object store's stages", default_text="~/.cache/distill/pipeline/NAME")
    sources: tuple[Any, ...] = field((), help="prompt sources: a list of {path, new, kind, logs}")
    teacher: str = field("", help="teacher recipe name, recipe YAML or model folder (as generate --teacher)")
    student: str = field("", help="base student (as train --student)")
    warm_start: Literal["base", "champion"] = field("base", help="base: every run trains the base student; champion: "
                                                                "continue from the current champion (the base on the first run)")
    train_on: str = field("new", help="new: this run's rows; all: every finished run's corpus and this run's; "
                                      "window N: the last N finished runs' and this run's")
    near_dup_threshold: float = field(0.7, help="MinHash Jaccard at or above which a new prompt is a near duplicate of "
                                                "an earlier one (0 = exact duplicates only)")
    generate: dict = field(default_factory=dict, help="generate's keys (docs/cli.md), less teacher, prompts, out")
    augment: dict | None = field(None, help="augment's keys (num_prompts, ...); absent: no augmentation")
    train: dict = field(default_factory=dict, help="train's keys, less student, corpus, out")
    eval: dict = field(default_factory=dict, help="eval's keys (suite, limit, ...), less models, out, teacher, gate")
    gate: str = field("challenger.score >= 0.95 * teacher.score", help="promotion rule over challenger, champion and "
                      "teacher metrics; comparisons naming champion hold on the first run")
    promotion: dict = field(default_factory=dict, help="alias, keep, registry, mlflow_tracking_uri, mlflow_model_name")
    lock_stale_after_s: float = field(3600.0, help="object stores: a lock without heartbeat this long is taken over")

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name or ""):
            bad("name", f"letters, digits, '.', '-' and '_' required, got {self.name!r}")
        for name in ("store", "teacher", "student"):
            if not getattr(self, name):
                bad(name, "required")
        if not self.sources:
            bad("sources", "give at least one source: - path: prompts/")
        if not _TRAIN_ON.match(str(self.train_on).strip()):
            bad("train_on", f"new, all or 'window N' (N >= 1), got {self.train_on!r}")
        if not 0 <= self.near_dup_threshold <= 1:
            bad("near_dup_threshold", f"must be in [0, 1], got {self.near_dup_threshold}")
        if self.lock_stale_after_s <= 0:
            bad("lock_stale_after_s", f"must be > 0, got {self.lock_stale_after_s}")

    @property
    def window(self) -> int | None:
        """train_on as a number of earlier runs: None = all, 0 = new only."""
        match = _TRAIN_ON.match(self.train_on.strip())
        assert match
        return 0 if match.group(1) == "new" else (None if match.group(1) == "all" else int(match.group(2)))


def _lines(node: Any, prefix: str = "") -> dict[str, int]:
    """key path ('train.lr', 'sources.0.path') -> 1-based line, through mappings and lists."""
    import yaml

    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            out[key] = key_node.start_mark.line + 1
            out.update(_lines(value_node, key + "."))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[f"{prefix}{i}"] = item.start_mark.line + 1
            out.update(_lines(item, f"{prefix}{i}."))
    return out


def spec_lines(path: str | Path) -> dict[str, int]:
    """The spec's key paths -> lines, read once per version of the file (the stages' errors name them too)."""
    stat = Path(path).stat()
    return _spec_lines(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _spec_lines(path: str, mtime_ns: int, size: int) -> dict[str, int]:
    import yaml

    return _lines(yaml.compose(Path(path).read_bytes().decode("utf-8-sig"), Loader=yaml.SafeLoader))


def section_layer(path: str, values: dict[str, Any], prefix: str) -> Layer:
    """A spec section (``generate``, ``sources.0.logs``) as a config layer whose errors name its lines."""
    return _section(prefix, path, values, spec_lines(path), prefix + ".")


def _section(name: str, path: str, values: dict[str, Any], lines: dict[str, int], prefix: str) -> Layer:
    if not isinstance(values, dict):
        where = f"{path}:{lines.get(prefix.rstrip('.'), '?')}"
        raise ConfigError(f"{where}: {prefix.rstrip('.')}: must be a mapping of keys to values")
    return Layer(path, values, lines, {k: prefix + str(k) for k in values})


def check_stage(stage: str, values: dict[str, Any], layer: Layer, fill: dict[str, Any]) -> Any:
    """Check a stage section with the stage's dataclass: unknown keys, types, ranges; owned keys refused."""
    from distill.augment import AugmentConfig
    from distill.eval import EvalConfig
    from distill.generate import GenerateConfig
    from distill.train import TrainConfig

    from distill.logs import LogsConfig

    cls = {"generate": GenerateConfig, "augment": AugmentConfig, "train": TrainConfig, "eval": EvalConfig,
           "logs": LogsConfig}[stage]
    for key in values:
        norm = str(key).replace("-", "_")
        if norm in OWNED[stage]:
            raise ConfigError(f"{layer.where(str(key))}: set by the pipeline ({OWNED[stage][norm]}); remove it")
    check_layer(cls, layer)
    return load_config(cls, layers=[Layer("pipeline", fill), layer])


def load_spec(path: str | Path) -> PipelineSpec:
    """Read and check a pipeline spec; every error names the file, line and key."""
    from distill.config import read_yaml_layer

    top = read_yaml_layer(path)
    lines = spec_lines(path)
    layer = Layer(str(path), top.values, lines)
    spec = load_config(PipelineSpec, layers=[layer])
    name = str(path)

    sources = []
    if not isinstance(spec.sources, tuple) or not spec.sources:
        raise ConfigError(f"{name}:{lines.get('sources', '?')}: sources: a list of {{path: ...}} entries")
    for i, item in enumerate(spec.sources):
        if isinstance(item, str):
            item = {"path": item}
        source_layer = _section("sources", name, item, lines, f"sources.{i}.")
        source = load_config(Source, layers=[source_layer])
        if source.kind == "logs":
            logs_layer = _section("logs", name, source.logs, lines, f"sources.{i}.logs.")
            check_stage("logs", source.logs, logs_layer, {"logs": ("logs",), "out": "out"})
        sources.append(source)
    promotion = load_config(Promotion, layers=[_section("promotion", name, spec.promotion, lines, "promotion.")])

    placeholders = {"teacher": spec.teacher, "prompts": "collected.jsonl", "out": "out"}
    check_stage("generate", spec.generate, _section("generate", name, spec.generate, lines, "generate."), placeholders)
    if spec.augment is not None:
        check_stage("augment", spec.augment, _section("augment", name, spec.augment, lines, "augment."), placeholders)
    check_stage("train", spec.train, _section("train", name, spec.train, lines, "train."),
                {"student": spec.student, "corpus": ("corpus",), "out": "out"})
    check_stage("eval", spec.eval, _section("eval", name, spec.eval, lines, "eval."), {"models": ("challenger=x",)})

    from distill.eval.gate import parse_gate

    try:
        parse_gate(spec.gate, GATE_MODELS)
    except ConfigError as exc:
        where = f"{name}:{lines['gate']}: gate" if "gate" in lines else f"{name}: gate"
        raise ConfigError(f"{where}: {str(exc).removeprefix('--gate: ')}") from None
    return dataclasses.replace(spec, sources=tuple(sources), promotion=promotion)
