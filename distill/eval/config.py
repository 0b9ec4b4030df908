"""`distill eval`'s config and its --model NAME=PATH specs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Sequence

from distill.config import ConfigError, bad, field

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class EvalConfig:
    models: tuple[str, ...] = field((), help="model to evaluate, NAME=PATH (HF model dir, recipe name or path, or hub id); "
                                    "repeatable", flag="--model", default_text="required")
    suite: str = field("example", help="suite file (JSONL) or the name of a suite shipped in eval/")
    out: str = field("runs/eval", help="output folder for report.json, report.md, report.png, outputs/")
    teacher: str | None = field(None, help="the teacher for agreement and KL: a --model NAME, or a teacher recipe/dir")
    judge: str | None = field(None, help="LLM judge for 'judge' rows: a --model NAME or teacher recipe/dir", default_text="--teacher")
    gate: str | None = field(None, help="pass/fail expression, e.g. 'student.score >= 0.95 * teacher.score' (exit 3 when false)")
    max_new_tokens: int = field(128, help="greedy generation length limit, the same for every model")
    batch_size: int = field(16, help="generation batch size (scoring, and the batched speed figure)")
    limit: int | None = field(None, help="evaluate only the first N suite rows")
    kl_top_k: int = field(20, help="teacher top-k kept per token for the KL (+1 tail bin), as in the corpus; >= vocab size gives the exact KL")
    speed_prompts: int = field(16, help="prompts timed for tokens/s and latency (after one warm-up call)")
    speed_rounds: int = field(3, help="timing rounds, the models taking turns; tokens/s is the median over rounds")
    judge_max_new_tokens: int = field(16, help="tokens the judge may write for its 'Score: N' reply")
    device: str = field("auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field("auto", help="auto (bfloat16 on cuda, float32 on cpu), float32, bfloat16, float16")
    seed: int = field(0, help="seed of the bootstrap confidence interval")

    def __post_init__(self) -> None:
        if not self.models:
            bad("models", "give at least one --model NAME=PATH")
        if not str(self.suite).strip():
            bad("suite", "must not be empty")
        for name in ("max_new_tokens", "batch_size", "kl_top_k", "speed_prompts", "speed_rounds", "judge_max_new_tokens"):
            if getattr(self, name) < 1:
                bad(name, f"must be >= 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            bad("limit", f"must be >= 1, got {self.limit}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            bad("dtype", f"must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if not (self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", self.device)):
            bad("device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")


def parse_model_specs(specs: Sequence[str]) -> dict[str, str]:
    """``NAME=PATH`` strings to an ordered {name: path}; names must be identifiers (the gate uses them)."""
    models: dict[str, str] = {}
    for spec in specs:
        name, sep, path = str(spec).partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ConfigError(f"--model: expected NAME=PATH, got {spec!r}")
        if not _NAME_RE.match(name):
            raise ConfigError(f"--model {spec}: NAME must be letters, digits and _ (not starting with a digit), for use in --gate")
        if name in models:
            raise ConfigError(f"--model {spec}: the name '{name}' is given twice")
        models[name] = path
    return models
