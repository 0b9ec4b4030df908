"""`distill eval`: score models on a suite, compare them with the teacher, time them, gate.

For every ``--model NAME=PATH`` (one at a time, so one model that fails to load never loses the
others' results) the suite's prompts are answered by greedy decoding, batched, with the same
``max_new_tokens`` and batch size for every model, and scored by each row's scorer
(``distill.scorers``). With ``--teacher`` the report adds, per model:

- ``agreement``: the share of rows where the model's extracted answer (by the row's scorer:
  regex group, last number, normalized text) equals the teacher's greedy answer; rows where the
  teacher gave no answer are not counted.
- ``kl_to_teacher``: forward KL(teacher ‖ model) in nats per token, on the teacher's greedy
  responses to the suite prompts (held-out teacher outputs), teacher-forced through the model.
  The teacher's side is its top-``kl_top_k`` log-probs at each response position plus one tail
  bin holding the remaining mass; the model's side is its full softmax over its own vocabulary,
  folded onto the same k+1 bins. With k ≥ the vocabulary size this is the exact full-vocabulary
  KL; with a smaller k it is a lower bound (merging bins never increases a KL). Teacher ids
  beyond the model's vocabulary fall into the tail bin. Models whose tokenizer differs from the
  teacher's get no KL (token-level KL across tokenizers is meaningless).

Speed is measured after every model is scored, on the first ``speed_prompts`` suite prompts
after one excluded warm-up call: at batch 1 (``tokens_per_s``, ``latency_p50_ms``,
``latency_p95_ms``) and in full batches of ``batch_size`` (the same names with ``_batch``; the
timed prompts repeat to fill a batch). The models take turns over ``speed_rounds`` rounds and
tokens/s is the median over rounds, so the ratios between models survive a noisy machine. Tokens are generated tokens up to and including EOS; padding
after EOS in a batch is not counted. ``params`` counts unique parameters (tied embeddings once).

The score is the mean row score with a 95% confidence interval: Wilson's interval when every row
score is 0 or 1, else a percentile bootstrap (2,000 resamples, fixed seed).

Exit codes (see ``exit_code``): 0 all good; 3 the ``--gate`` expression is false (or names a
value that is unavailable); 4 a model failed to evaluate (its failure is in the report); 2 (from
the CLI) bad input found before any model ran: suite, gate, model spec.
"""

from __future__ import annotations

import ast
import datetime as _dt
import gc
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

import numpy as np

from distill.atomic import atomic_write_bytes, atomic_write_with
from distill.config import ConfigError, bad, field
from distill.errors import ExitCode
from distill.scorers import (
    Suite,
    SuiteRow,
    answers_agree,
    extract_answer,
    judge_prompt,
    judge_result,
    load_suite,
    score_output,
)

EXIT_OK = int(ExitCode.OK)
EXIT_GATE_FAILED = int(ExitCode.GATE_FAILED)
EXIT_MODEL_FAILED = int(ExitCode.MODEL_FAILED)

# The per-model numbers a --gate expression may name (model.metric).
GATE_METRICS = (
    "score",
    "score_ci_low",
    "score_ci_high",
    "agreement",
    "kl_to_teacher",
    "tokens_per_s",
    "latency_p50_ms",
    "latency_p95_ms",
    "tokens_per_s_batch",
    "latency_p50_ms_batch",
    "latency_p95_ms_batch",
    "params",
    "rows",
    "failed_rows",
)

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BOOTSTRAP_RESAMPLES = 2000
_Z95 = 1.959963984540054


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


# ---------------------------------------------------------------- model specs


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


def resolve_model(spec: str) -> tuple[str, str]:
    """(model, backend) for a ``--model`` PATH: a local model dir, a recipe (teacher or student,
    by name or path) whose ``model`` is a dir or hub id, or a hub id ``org/name``. The backend is
    "hf" (loaded here with transformers) unless a teacher recipe names vllm or openai: such a
    model is then run through its Teacher backend. A spec that names nothing is a ConfigError; a
    dir that exists but does not load is reported later as that model's failure."""
    from distill.recipes import find_recipe, looks_like_hub_id
    from distill.teachers import teacher_recipe

    path = Path(spec)
    if path.is_dir() and not (path / "recipe.yaml").is_file():
        if not (path / "config.json").is_file() and (path / "final" / "config.json").is_file():
            return str(path / "final"), "hf"  # a `distill train` output folder: its merged model
        return str(path), "hf"
    teacher_path, student_path = find_recipe("teachers", spec), find_recipe("students", spec)
    if teacher_path is not None:
        try:
            recipe = teacher_recipe(spec)
            return recipe.model, recipe.backend
        except ConfigError:
            if student_path != teacher_path:  # a recipe YAML path may be either kind: try the other
                raise
            try:
                return _student_model(spec), "hf"
            except ConfigError:
                pass
            raise
    if student_path is not None:
        return _student_model(spec), "hf"
    if looks_like_hub_id(spec):
        return spec, "hf"  # e.g. Qwen/Qwen2.5-0.5B-Instruct
    raise ConfigError(f"--model: '{spec}' is not a model directory, a teacher/student recipe, or a hub id (org/name)")


def _student_model(spec: str) -> str:
    from distill.train.student import resolve_student

    source, _ = resolve_student(spec)
    if source.model is None:
        raise ConfigError(f"--model {spec}: student recipe {source.origin} names no 'model' to evaluate (train "
                          "it first, then pass the output dir)")
    return source.model


# ---------------------------------------------------------------- gate


class GateUnavailable(Exception):
    """A value the gate names is missing (model failed, no teacher, ...)."""


_COMPARE_OPS = {
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
}
_BIN_OPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


def parse_gate(expr: str, model_names: Iterable[str]) -> ast.Expression:
    """Parse and check a gate expression: ``model.metric`` names, numbers, + - * /, comparisons,
    and/or/not, parentheses. Nothing is ever passed to eval(); every node is whitelisted."""
    names = set(model_names)
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        raise ConfigError(f"--gate: invalid expression {expr!r}: {exc.msg} (column {exc.offset})") from None

    def check(node: ast.AST) -> None:
        if isinstance(node, ast.BoolOp) and isinstance(node.op, (ast.And, ast.Or)):
            for value in node.values:
                check(value)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub, ast.UAdd)):
            check(node.operand)
        elif isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
            check(node.left)
            check(node.right)
        elif isinstance(node, ast.Compare) and all(type(op) in _COMPARE_OPS for op in node.ops):
            check(node.left)
            for comparator in node.comparators:
                check(comparator)
        elif isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            pass
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id not in names:
                raise ConfigError(f"--gate: unknown model '{node.value.id}' in {expr!r}; models: {', '.join(sorted(names))}")
            if node.attr not in GATE_METRICS:
                raise ConfigError(f"--gate: unknown metric '{node.attr}' in {expr!r}; metrics: {', '.join(GATE_METRICS)}")
        else:
            snippet = ast.get_source_segment(expr.strip(), node) or type(node).__name__
            raise ConfigError(
                f"--gate: '{snippet}' is not allowed in {expr!r}; use model.metric names, numbers, "
                "+ - * /, comparisons, and/or/not"
            )

    check(tree.body)
    if not (
        isinstance(tree.body, (ast.Compare, ast.BoolOp))
        or (isinstance(tree.body, ast.UnaryOp) and isinstance(tree.body.op, ast.Not))
    ):
        raise ConfigError(f"--gate: {expr!r} must be a comparison (e.g. 'student.score >= 0.9')")
    return tree


def evaluate_gate(tree: ast.Expression, models: dict[str, dict[str, Any]]) -> tuple[bool, dict[str, Any], str | None]:
    """(passed, {"model.metric": value}, why-unavailable). A missing value fails the gate."""
    values: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            values[f"{node.value.id}.{node.attr}"] = models.get(node.value.id, {}).get(node.attr)

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Attribute):
            key = f"{node.value.id}.{node.attr}"  # type: ignore[attr-defined]
            if values[key] is None:
                entry = models.get(node.value.id, {})  # type: ignore[attr-defined]
                why = entry.get("error") or "not measured"
                raise GateUnavailable(f"{key} is unavailable ({why})")
            return values[key]
        if isinstance(node, ast.BoolOp):
            if isinstance(node.op, ast.And):
                return all(value(v) for v in node.values)
            return any(value(v) for v in node.values)
        if isinstance(node, ast.UnaryOp):
            operand = value(node.operand)
            if isinstance(node.op, ast.Not):
                return not operand
            return -operand if isinstance(node.op, ast.USub) else +operand
        if isinstance(node, ast.BinOp):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Div) and right == 0:
                raise GateUnavailable("division by zero")
            return _BIN_OPS[type(node.op)](left, right)
        if isinstance(node, ast.Compare):
            left = value(node.left)
            for op, comparator in zip(node.ops, node.comparators):
                right = value(comparator)
                if not _COMPARE_OPS[type(op)](left, right):
                    return False
                left = right
            return True
        raise AssertionError(type(node).__name__)  # parse_gate allows nothing else

    try:
        return bool(value(tree)), values, None
    except GateUnavailable as exc:
        return False, values, str(exc)


# ---------------------------------------------------------------- statistics


def wilson_interval(successes: float, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, center - half)  # exact at the ends, not 1e-19 off
    high = 1.0 if successes == n else min(1.0, center + half)
    return (low, high)


def bootstrap_interval(scores: np.ndarray, seed: int, resamples: int = _BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(scores), size=(resamples, len(scores)))
    means = scores[idx].mean(axis=1)
    return (float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))


def score_with_ci(scores: Sequence[float], seed: int = 0) -> tuple[float, tuple[float, float], str]:
    """(mean, 95% CI, method): Wilson when all scores are 0/1, else bootstrap."""
    arr = np.asarray(scores, dtype=np.float64)
    if len(arr) == 0:
        return 0.0, (0.0, 1.0), "none"
    mean = float(arr.mean())
    if np.all((arr == 0) | (arr == 1)):
        return mean, wilson_interval(float(arr.sum()), len(arr)), "wilson"
    return mean, bootstrap_interval(arr, seed), "bootstrap"


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


# ---------------------------------------------------------------- models


@dataclass
class Generation:
    """One greedy response: ids up to and including EOS, decoded text (special tokens removed),
    and, when captured, the raw top-k log-probs at each response position."""

    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    topk_ids: np.ndarray | None = None
    topk_logprobs: np.ndarray | None = None


def _torch_device_dtype(config: EvalConfig) -> tuple[Any, Any]:
    import torch

    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype_name = config.dtype
    if dtype_name == "auto":
        dtype_name = "bfloat16" if device.startswith("cuda") else "float32"
    return torch.device(device), getattr(torch, dtype_name)


def load_model(path: str, device: Any, dtype: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if Path(path).is_dir() and not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model directory (nor a `distill train` output with final/)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.to(device)
    model.eval()
    return model, tokenizer


def eos_and_pad(model: Any, tokenizer: Any) -> tuple[list[int], int]:
    eos: list[int] = []
    for source in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        for token in source if isinstance(source, (list, tuple)) else [source]:
            if token is not None and int(token) not in eos:
                eos.append(int(token))
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = getattr(model.generation_config, "pad_token_id", None)
    if pad is None:
        pad = eos[0] if eos else 0
    return eos, int(pad)


def count_params(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _sync(device: Any) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def _topk_capture(k: int):
    """A LogitsProcessor that keeps the top-k of the raw next-token log-softmax at each step and
    leaves the scores untouched: [B, k] per step instead of output_logits' [B, vocab]."""
    import torch
    from transformers import LogitsProcessor

    class _Capture(LogitsProcessor):
        def __init__(self) -> None:
            self.steps: list[tuple[Any, Any]] = []

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            logprobs = torch.log_softmax(scores.float(), dim=-1)
            values, ids = torch.topk(logprobs, min(k, logprobs.shape[-1]), dim=-1)
            self.steps.append((ids.cpu(), values.cpu()))
            return scores

    return _Capture()


def generate_greedy(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    *,
    batch_size: int,
    max_new_tokens: int,
    capture_top_k: int = 0,
    desc: str | None = None,
    sort_by_length: bool = True,
) -> list[Generation]:
    """Greedy responses to ``prompts`` (token id lists), batched with left padding.

    With ``capture_top_k`` > 0 the raw (temperature-1, unprocessed: the generation config has no
    warpers or penalties) log-probs at each generated position are kept as top-k ids/log-probs:
    the teacher's side of the KL.
    """
    import torch
    from tqdm import tqdm
    from transformers import GenerationConfig, LogitsProcessorList

    device = next(model.parameters()).device
    eos, pad = eos_and_pad(model, tokenizer)
    gen_config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=pad,
        num_beams=1, temperature=None, top_p=None, top_k=None,
    )
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i])) if sort_by_length else list(range(len(prompts)))
    results: list[Generation | None] = [None] * len(prompts)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    eos_set = set(eos)
    for batch in tqdm(batches, desc=desc, unit="batch", disable=desc is None, leave=False):
        width = max(len(prompts[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids = prompts[i]
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids) :] = 1
        capture = _topk_capture(capture_top_k) if capture_top_k > 0 else None
        with torch.no_grad():
            sequences = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=gen_config,
                logits_processor=LogitsProcessorList([capture] if capture is not None else []),
            )
        new_tokens = sequences[:, width:].cpu().tolist()
        if capture is not None:
            top_ids = torch.stack([ids for ids, _ in capture.steps], dim=1).numpy().astype(np.int32)  # [B, steps, k]
            top_logprobs = torch.stack([v for _, v in capture.steps], dim=1).numpy()
        for row, i in enumerate(batch):
            ids = new_tokens[row]
            end = next((t + 1 for t, tok in enumerate(ids) if tok in eos_set), len(ids))
            response = ids[:end]
            text_ids = response[:-1] if response and response[-1] in eos_set else response
            generation = Generation(
                prompt_ids=list(prompts[i]), response_ids=response,
                text=tokenizer.decode(text_ids, skip_special_tokens=True),
            )
            if capture is not None:
                generation.topk_ids = top_ids[row, :end]
                generation.topk_logprobs = top_logprobs[row, :end]
            results[i] = generation
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def measure_speed(
    run_batch: Any, prompts: Sequence[Any], *, batch_size: int, max_new_tokens: int, desc: str, sync: Any = None,
    warm_up: bool = True,
) -> dict[str, Any]:
    """Tokens/s and per-request latency at batch 1 and at ``batch_size``, warm-up excluded.

    ``run_batch(prompts) -> list[Generation]`` generates greedily for one batch; ``sync()``
    waits for the device so the clock measures finished work. The batched figure always runs full
    batches of ``batch_size`` rows: with fewer timed prompts they are repeated to fill one batch.
    """
    from tqdm import tqdm

    sync = sync or (lambda: None)
    full_batches = max(1, len(prompts) // batch_size)
    batch_rows = [prompts[i % len(prompts)] for i in range(full_batches * batch_size)]
    if warm_up:
        run_batch(batch_rows[:batch_size])  # allocator, kernels, caches
        run_batch([prompts[0]])
        sync()
    single_latency, single_tokens, single_time = [], 0, 0.0
    for prompt in tqdm(prompts, desc=f"{desc}: speed b=1", unit="req", leave=False):
        start = time.perf_counter()
        out = run_batch([prompt])
        sync()
        elapsed = time.perf_counter() - start
        single_latency.append(elapsed * 1000)
        single_tokens += len(out[0].response_ids)
        single_time += elapsed
    batch_latency, batch_tokens, batch_time = [], 0, 0.0
    chunks = [batch_rows[i : i + batch_size] for i in range(0, len(batch_rows), batch_size)]
    for chunk in tqdm(chunks, desc=f"{desc}: speed b={batch_size}", unit="batch", leave=False):
        start = time.perf_counter()
        out = run_batch(chunk)
        sync()
        elapsed = time.perf_counter() - start
        batch_latency += [elapsed * 1000] * len(chunk)
        batch_tokens += sum(len(g.response_ids) for g in out)
        batch_time += elapsed
    return {
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "batch_1": {
            "tokens_per_s": single_tokens / single_time,
            "latency_ms": single_latency,
            "tokens": single_tokens,
        },
        "batch": {
            "batch_size": len(chunks[0]),
            "tokens_per_s": batch_tokens / batch_time,
            "latency_ms": batch_latency,
            "tokens": batch_tokens,
        },
    }


def combine_speed_rounds(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One speed entry from several rounds: tokens/s is the median over rounds (a round slowed by
    a noisy neighbour does not move it), latency percentiles pool every timed request."""
    out: dict[str, Any] = {"prompts": rounds[0]["prompts"], "max_new_tokens": rounds[0]["max_new_tokens"],
                           "rounds": len(rounds)}
    for key in ("batch_1", "batch"):
        latencies = [ms for r in rounds for ms in r[key]["latency_ms"]]
        out[key] = {
            "tokens_per_s": float(np.median([r[key]["tokens_per_s"] for r in rounds])),
            "tokens_per_s_rounds": [r[key]["tokens_per_s"] for r in rounds],
            "latency_p50_ms": percentile(latencies, 50),
            "latency_p95_ms": percentile(latencies, 95),
            "tokens": sum(r[key]["tokens"] for r in rounds),
        }
        if key == "batch":
            out[key]["batch_size"] = rounds[0][key]["batch_size"]
    return out


def measure_speeds(models: dict[str, str], suite: Suite, config: EvalConfig, entries: dict[str, dict[str, Any]],
                   on_update: Callable[[], None]) -> None:
    """Time every model that evaluated, interleaved: ``speed_rounds`` rounds, each opening and
    timing the models in turn (alternating the order), so a slow spell of the machine lands on
    all of them alike and the ratios between models hold. A model served by a backend (vLLM,
    HTTP) is opened once and timed all its rounds in its first slot: restarting a server per
    round would cost minutes. Failures go into ``errors.speed``; the scores stay."""
    from distill.prompts import encode_prompt

    names = [n for n in models if entries.get(n, {}).get("status") == "ok"]
    rounds: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    failed: set[str] = set()
    for r in range(config.speed_rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            served = resolve_model(models[name])[1] != "hf"
            if name in failed or (served and r > 0):
                continue
            try:
                opened, _ = _open(models[name], config)
                try:
                    prompts = [(encode_prompt(opened.tokenizer, row.messages), row.messages)
                               for row in suite.rows[: config.speed_prompts]]
                    for i in range(config.speed_rounds if served else 1):
                        rounds[name].append(measure_speed(
                            lambda batch: opened.generate(batch, 0, None), prompts, batch_size=config.batch_size,
                            max_new_tokens=config.max_new_tokens, desc=f"{name} ({r + i + 1}/{config.speed_rounds})",
                            sync=opened.sync, warm_up=i == 0,
                        ))
                finally:
                    opened.close()
            except Exception as exc:
                failed.add(name)
                entries[name]["errors"]["speed"] = f"{type(exc).__name__}: {exc}"
                print(f"warning: model '{name}': speed not measured: {entries[name]['errors']['speed']}", file=sys.stderr)
    for name in names:
        if name in failed or not rounds[name]:
            continue
        speed = combine_speed_rounds(rounds[name])
        entries[name]["speed"] = speed
        entries[name].update(
            tokens_per_s=speed["batch_1"]["tokens_per_s"],
            latency_p50_ms=speed["batch_1"]["latency_p50_ms"],
            latency_p95_ms=speed["batch_1"]["latency_p95_ms"],
            tokens_per_s_batch=speed["batch"]["tokens_per_s"],
            latency_p50_ms_batch=speed["batch"]["latency_p50_ms"],
            latency_p95_ms_batch=speed["batch"]["latency_p95_ms"],
            batch_size=speed["batch"]["batch_size"],
        )
    on_update()


@dataclass
class TeacherRef:
    """The teacher's greedy answers to the suite (for agreement) and its responses with top-k
    log-probs (for the KL). ``generations`` is None for a black-box teacher's KL."""

    name: str
    texts: list[str]
    tokenizer_fingerprint: str | None
    generations: list[Generation] | None


def kl_to_teacher(
    model: Any, ref: TeacherRef, *, batch_size: int, desc: str | None = None
) -> tuple[float, int]:
    """Forward KL(teacher ‖ model) per token over the teacher's responses: (kl_mean, num_tokens).

    See the module docstring for the (k+1)-bin definition. The model's logits over its full
    vocabulary are computed only at response positions, one batch at a time.
    """
    import torch
    from tqdm import tqdm

    assert ref.generations is not None
    device = next(model.parameters()).device
    vocab = model.get_output_embeddings().weight.shape[0]
    rows = [g for g in ref.generations if g.response_ids and g.topk_ids is not None]
    rows.sort(key=lambda g: -(len(g.prompt_ids) + len(g.response_ids)))
    kl_sum, num_tokens = 0.0, 0
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    for batch in tqdm(batches, desc=desc, unit="batch", disable=desc is None, leave=False):
        width = max(len(g.prompt_ids) + len(g.response_ids) for g in batch)
        input_ids = torch.zeros((len(batch), width), dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, g in enumerate(batch):
            ids = g.prompt_ids + g.response_ids
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[row, : len(ids)] = 1
        with torch.no_grad():
            hidden = model.get_decoder()(input_ids=input_ids.to(device), attention_mask=attention.to(device)).last_hidden_state
            for row, g in enumerate(batch):
                start, num = len(g.prompt_ids) - 1, len(g.response_ids)
                logits = model.get_output_embeddings()(hidden[row, start : start + num]).float()
                logq = torch.log_softmax(logits, dim=-1).double()
                ids = torch.from_numpy(g.topk_ids.astype(np.int64)).to(device)
                logp = torch.from_numpy(g.topk_logprobs.astype(np.float64)).to(device)
                valid = ids < vocab
                p = torch.where(valid, logp.exp(), torch.zeros_like(logp))
                logq_s = torch.gather(logq, 1, torch.where(valid, ids, torch.zeros_like(ids)))
                q_s = torch.where(valid, logq_s.exp(), torch.zeros_like(logq_s))
                head = torch.where(valid, p * (logp - logq_s), torch.zeros_like(p)).sum(dim=1)
                tail_p = (1 - p.sum(dim=1)).clamp_min(0)
                tail_q = (1 - q_s.sum(dim=1)).clamp_min(1e-30)
                tail = torch.where(tail_p > 1e-12, tail_p * (tail_p.clamp_min(1e-30).log() - tail_q.log()), torch.zeros_like(tail_p))
                kl_sum += float((head + tail).sum())
                num_tokens += num
    if num_tokens == 0:
        return float("nan"), 0
    return kl_sum / num_tokens, num_tokens


# ---------------------------------------------------------------- the run


def _agreement_answer(row: SuiteRow, text: str) -> Any:
    return extract_answer(row.scorer, text) if text.strip() else None


def _judge_replies(judge: Any, suite: Suite, outputs: list[str], max_new_tokens: int) -> dict[str, str]:
    from distill.prompts import encode_prompt
    from distill.teachers.base import GenerationRequest, SamplingParams

    requests = []
    for row, text in zip(suite.rows, outputs):
        if row.scorer.kind == "judge" and text.strip():
            messages = tuple(judge_prompt(row, text))
            requests.append(GenerationRequest(key=row.id, prompt_ids=tuple(encode_prompt(judge.tokenizer, messages)),
                                              seed=0, messages=messages))
    if not requests:
        return {}
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, top_k_logprobs=0)
    return {out.key: out.text for out in judge.generate(requests, params)}


class _Judge:
    """Loads the judge teacher on first use and keeps it for the other models."""

    def __init__(self, spec: str | None):
        self.spec = spec
        self.teacher: Any = None
        self.error: str | None = None

    def get(self) -> Any:
        if self.teacher is None and self.error is None and self.spec is not None:
            from distill.teachers import load_teacher

            try:
                self.teacher = load_teacher(self.spec)
            except Exception as exc:
                self.error = f"judge '{self.spec}' failed to load: {type(exc).__name__}: {exc}"
                print(f"warning: {self.error}", file=sys.stderr)
        return self.teacher

    def close(self) -> None:
        if self.teacher is not None:
            self.teacher.close()


# A prompt as every backend needs it: token ids (chat template applied once, here) and the chat
# messages they came from (for chat-API endpoints that template server-side).
Prompt = tuple[list[int], tuple[dict[str, str], ...]]


@dataclass
class _Opened:
    """A model ready to answer: ``generate(prompts, capture_top_k, desc)`` greedy-decodes
    (prompt ids, chat messages) pairs; ``kl`` is None when the backend exposes no full distribution."""

    via: str
    tokenizer: Any
    params: int | None
    generate: Callable[[Sequence[Prompt], int, str | None], list[Generation]]
    kl: Callable[[TeacherRef, str | None], tuple[float, int]] | None
    sync: Callable[[], None]
    close: Callable[[], None]


def _open_hf(model_path: str, config: EvalConfig) -> _Opened:
    import torch

    device, dtype = _torch_device_dtype(config)
    try:
        model, tokenizer = load_model(model_path, device, dtype)
    except Exception as exc:
        raise RuntimeError(f"cannot load model: {type(exc).__name__}: {exc}") from exc

    def generate(prompts: Sequence[Prompt], capture_top_k: int, desc: str | None) -> list[Generation]:
        return generate_greedy(model, tokenizer, [ids for ids, _ in prompts], batch_size=config.batch_size,
                               max_new_tokens=config.max_new_tokens, capture_top_k=capture_top_k, desc=desc,
                               sort_by_length=desc is not None)

    def close() -> None:
        nonlocal model
        model = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    return _Opened(
        via="transformers", tokenizer=tokenizer, params=count_params(model), generate=generate,
        kl=lambda ref, desc: kl_to_teacher(model, ref, batch_size=config.batch_size, desc=desc),
        sync=lambda: _sync(device), close=close,
    )


def params_from_safetensors(model_dir: str | Path) -> int | None:
    """Parameter count from the safetensors headers of a local model dir (no weights read)."""
    files = sorted(Path(model_dir).glob("*.safetensors")) if Path(model_dir).is_dir() else []
    if not files:
        return None
    total = 0
    for path in files:
        with path.open("rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(header_len))
        total += sum(int(np.prod(t["shape"])) for key, t in header.items() if key != "__metadata__")
    return total


def _open_backend(spec: str, model_path: str, config: EvalConfig) -> _Opened:
    """A model served by its Teacher backend (vLLM, OpenAI-compatible HTTP): greedy through the
    protocol; its speed includes the backend's own overheads; no KL (no full distribution)."""
    from tqdm import tqdm

    from distill.teachers import load_teacher
    from distill.teachers.base import GenerationRequest, SamplingParams

    try:
        teacher = load_teacher(spec)
    except Exception as exc:
        raise RuntimeError(f"failed to start '{spec}': {type(exc).__name__}: {exc}") from exc

    def generate(prompts: Sequence[Prompt], capture_top_k: int, desc: str | None) -> list[Generation]:
        # Messages too: a chat-API endpoint applies its own template server-side.
        requests = [
            GenerationRequest(key=str(i), prompt_ids=tuple(ids), seed=0, messages=tuple(messages))
            for i, (ids, messages) in enumerate(prompts)
        ]
        # Backends reject k beyond the vocabulary; the tail bin carries whatever is left.
        k = min(capture_top_k, len(teacher.tokenizer))
        params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=0.0, top_k_logprobs=k)
        outputs: dict[str, Any] = {}
        for out in tqdm(teacher.generate(requests, params), total=len(requests), desc=desc, unit="req",
                        disable=desc is None, leave=False):
            outputs[out.key] = out
        return [
            Generation(
                prompt_ids=list(prompts[i][0]), response_ids=[int(t) for t in outputs[str(i)].response_ids],
                text=outputs[str(i)].text, topk_ids=outputs[str(i)].topk_ids,
                topk_logprobs=outputs[str(i)].topk_logprobs,
            )
            for i in range(len(prompts))
        ]

    return _Opened(
        via=str(teacher.backend), tokenizer=teacher.tokenizer, params=params_from_safetensors(model_path),
        generate=generate, kl=None, sync=lambda: None, close=teacher.close,
    )


def _open(path: str, config: EvalConfig) -> tuple[_Opened, str]:
    model_path, backend = resolve_model(path)
    if backend == "hf":
        return _open_hf(model_path, config), model_path
    return _open_backend(path, model_path, config), model_path


def evaluate_model(
    name: str, path: str, suite: Suite, config: EvalConfig, *, teacher_ref: TeacherRef | None,
    capture_teacher: bool, judge: _Judge, out_dir: Path,
) -> tuple[dict[str, Any], TeacherRef | None]:
    """Evaluate one model; never raises for model problems (they go into the entry)."""
    from distill.fingerprint import tokenizer_fingerprint
    from distill.prompts import encode_prompt

    entry: dict[str, Any] = {"path": path, "status": "failed", "error": None, "errors": {}}
    for metric in GATE_METRICS:
        entry.setdefault(metric, None)
    entry["score_ci"] = None
    started = time.perf_counter()
    opened: _Opened | None = None
    new_ref = None
    try:
        opened, entry["resolved_path"] = _open(path, config)
        entry["via"] = opened.via
        entry["params"] = opened.params
        tokenizer = opened.tokenizer
        prompts = [(encode_prompt(tokenizer, row.messages), row.messages) for row in suite.rows]
        generations = opened.generate(prompts, config.kl_top_k if capture_teacher else 0, f"{name}: generate")
        texts = [g.text for g in generations]
        fingerprint = tokenizer_fingerprint(tokenizer)
        if capture_teacher:
            black_box = any(g.topk_ids is None for g in generations)
            new_ref = TeacherRef(name=name, texts=texts, tokenizer_fingerprint=fingerprint,
                                 generations=None if black_box else generations)
        # Judge rows need the judge's replies; any failure there is counted per row.
        replies: dict[str, str] | None = {}
        if any(row.scorer.kind == "judge" for row in suite.rows):
            judge_teacher = judge.get()
            if judge_teacher is None:
                replies = None
            else:
                try:
                    replies = _judge_replies(judge_teacher, suite, texts, config.judge_max_new_tokens)
                except Exception as exc:
                    entry["errors"]["judge"] = f"{type(exc).__name__}: {exc}"
                    replies = None
        row_records, scores, failures = [], [], {}
        by_scorer: dict[str, list[float]] = {}
        for row, gen in zip(suite.rows, generations):
            if row.scorer.kind == "judge":
                reply = None if replies is None else replies.get(row.id, "")
                result = judge_result(gen.text, reply)
            else:
                reply = None
                result = score_output(row.scorer, gen.text, row.reference)
            scores.append(result.score)
            by_scorer.setdefault(row.scorer.kind, []).append(result.score)
            if result.failure is not None:
                reason = result.failure.split(":")[0]
                failures[reason] = failures.get(reason, 0) + 1
            record = {"id": row.id, "line": row.line, "output": gen.text, "answer": result.answer,
                      "score": result.score, "failure": result.failure, "num_tokens": len(gen.response_ids)}
            if reply is not None:
                record["judge_reply"] = reply
            row_records.append(record)
        mean, ci, method = score_with_ci(scores, config.seed)
        entry.update(
            score=mean, score_ci=[ci[0], ci[1]], score_ci_low=ci[0], score_ci_high=ci[1], ci_method=method,
            rows=len(scores), failed_rows=sum(failures.values()), failures=failures,
            score_by_scorer={k: float(np.mean(v)) for k, v in by_scorer.items()},
            mean_response_tokens=float(np.mean([len(g.response_ids) for g in generations])),
        )
        empty = failures.get("empty_output", 0)
        if empty:
            print(f"warning: {name}: {empty} of {len(scores)} outputs are empty", file=sys.stderr)
        ref = new_ref or teacher_ref
        if ref is not None:
            agree = [
                answers_agree(row.scorer, _agreement_answer(row, text), _agreement_answer(row, teacher_text))
                for row, text, teacher_text in zip(suite.rows, texts, ref.texts)
            ]
            counted = [a for a in agree if a is not None]
            entry["agreement"] = float(np.mean(counted)) if counted else None
            entry["agreement_rows"] = len(counted)
            for record, a in zip(row_records, agree):
                record["agrees_with_teacher"] = a
            if ref.generations is None:
                entry["errors"]["kl"] = f"teacher '{ref.name}' returns no log-probs (black-box)"
            elif ref.tokenizer_fingerprint != fingerprint:
                entry["errors"]["kl"] = f"tokenizer differs from the teacher's ({ref.name}); token-level KL is undefined"
            elif opened.kl is None:
                entry["errors"]["kl"] = f"the {opened.via} backend exposes no full next-token distribution"
            else:
                try:
                    kl, kl_tokens = opened.kl(ref, f"{name}: KL")
                    entry["kl_to_teacher"] = None if math.isnan(kl) else kl
                    entry["kl_tokens"] = kl_tokens
                except Exception as exc:
                    entry["errors"]["kl"] = f"{type(exc).__name__}: {exc}"
        _write_jsonl(out_dir / "outputs" / f"{name}.jsonl", row_records)
        entry["status"] = "ok"
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        message = str(exc) if isinstance(exc, (RuntimeError, ConfigError)) else f"{type(exc).__name__}: {exc}"
        entry["error"] = " ".join(message.split())  # one line: it goes into tables
        print(f"error: model '{name}': {entry['error']}", file=sys.stderr)
    finally:
        entry["eval_seconds"] = round(time.perf_counter() - started, 2)
        if opened is not None:
            try:
                opened.close()
            except Exception as exc:
                print(f"warning: model '{name}': close failed: {exc}", file=sys.stderr)
    return entry, new_ref


def _protocol_teacher_ref(spec: str, suite: Suite, config: EvalConfig) -> TeacherRef:
    """Greedy answers + top-k from a teacher that is not among --model (any backend), used only
    as the reference for agreement and KL."""
    from distill.fingerprint import tokenizer_fingerprint
    from distill.prompts import encode_prompt
    from distill.teachers import teacher_recipe

    opened = _open_backend(spec, teacher_recipe(spec).model, config)
    try:
        prompts = [(encode_prompt(opened.tokenizer, row.messages), row.messages) for row in suite.rows]
        generations = opened.generate(prompts, config.kl_top_k, f"teacher {spec}: generate")
        black_box = any(g.topk_ids is None for g in generations)
        return TeacherRef(
            name=spec, texts=[g.text for g in generations],
            tokenizer_fingerprint=tokenizer_fingerprint(opened.tokenizer), generations=None if black_box else generations,
        )
    finally:
        opened.close()


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _check_teacher_spec(flag: str, spec: str, models: dict[str, str]) -> None:
    from distill.teachers import teacher_recipe

    try:
        teacher_recipe(spec)
    except (ConfigError, FileNotFoundError) as exc:
        raise ConfigError(f"{flag} '{spec}' is neither a --model name ({', '.join(models)}) nor a teacher recipe or model dir: {exc}") from None


def run(config: EvalConfig) -> dict[str, Any]:
    """Evaluate every model, write report.json/.md/.png under ``config.out``, return the report.

    Bad input (suite, gate, model specs, teacher/judge specs) raises ConfigError before any
    model runs; a model that fails later is recorded in the report and the others go on.
    """
    models = parse_model_specs(config.models)
    suite = load_suite(config.suite, config.limit)
    gate_tree = parse_gate(config.gate, models) if config.gate else None
    for name, path in models.items():
        resolve_model(path)  # fail fast on specs that name nothing
    teacher_spec = None
    if config.teacher is not None and config.teacher not in models:
        _check_teacher_spec("--teacher", config.teacher, models)  # now, not after the first model
        teacher_spec = config.teacher
    judge_name = config.judge or config.teacher
    judge_rows = sum(1 for row in suite.rows if row.scorer.kind == "judge")
    judge_spec = None
    if judge_rows:
        if judge_name is None:
            raise ConfigError(f"{suite.path}: {judge_rows} rows use the 'judge' scorer: give --judge or --teacher")
        judge_spec = models.get(judge_name, judge_name)
        if judge_name not in models:
            _check_teacher_spec("--judge" if config.judge else "--teacher", judge_spec, models)
    out_dir = Path(config.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    report: dict[str, Any] = {
        "models": {},
        "suite": {
            "name": suite.name, "path": str(suite.path), "rows": len(suite.rows), "sha256": suite.sha256,
            "scorers": suite.scorer_counts(),
        },
        "teacher": config.teacher,
        "judge": judge_name if judge_rows else None,
        "settings": {
            "max_new_tokens": config.max_new_tokens, "batch_size": config.batch_size, "kl_top_k": config.kl_top_k,
            "speed_prompts": min(config.speed_prompts, len(suite.rows)), "speed_rounds": config.speed_rounds,
            "decoding": "greedy",
            "device": str(_torch_device_dtype(config)[0]), "dtype": str(_torch_device_dtype(config)[1]).replace("torch.", ""),
            "torch_threads": _torch_threads(),
        },
        "methods": {
            "score_ci": "95% Wilson interval when all row scores are 0/1, else percentile bootstrap (2000 resamples)",
            "agreement": "share of rows whose extracted answer equals the teacher's greedy answer (rows where the teacher gave none are not counted)",
            "kl_to_teacher": "forward KL(teacher || model), nats per token, on the teacher's greedy responses; teacher top-k + tail bin vs the model's full softmax",
            "speed": "greedy generation after one warm-up call per opening, models timed in turn over speed_rounds rounds; tokens up to and including EOS; tokens_per_s = median over rounds; latency_* pooled; at batch 1, *_batch in full batches of batch_size",
        },
        "gate": None,
        "complete": False,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    from distill import __version__

    report["distill_version"] = __version__

    order = list(models)
    if config.teacher in models:
        order.remove(config.teacher)
        order.insert(0, config.teacher)
    teacher_ref: TeacherRef | None = None
    teacher_error = None
    if teacher_spec is not None:
        try:
            teacher_ref = _protocol_teacher_ref(teacher_spec, suite, config)
        except Exception as exc:
            teacher_error = f"teacher '{teacher_spec}' failed: {type(exc).__name__}: {exc}"
            print(f"error: {teacher_error}", file=sys.stderr)
    judge = _Judge(judge_spec)
    entries: dict[str, dict[str, Any]] = {}
    try:
        for name in order:
            print(f"[{len(entries) + 1}/{len(order)}] {name}: {models[name]}", file=sys.stderr)
            is_teacher = name == config.teacher
            entry, ref = evaluate_model(
                name, models[name], suite, config, teacher_ref=teacher_ref, capture_teacher=is_teacher,
                judge=judge, out_dir=out_dir,
            )
            if is_teacher:
                teacher_ref = ref
                if ref is None:
                    teacher_error = f"teacher '{name}' failed: {entry['error']}"
            if teacher_error and config.teacher is not None and not is_teacher:
                entry["errors"].setdefault("teacher", teacher_error)
            entries[name] = entry
            if entry["status"] == "ok":
                print(f"{name}: score {entry['score']:.3f} on {entry['rows']} rows ({entry['failed_rows']} failed) "
                      f"in {entry['eval_seconds']:.1f}s", file=sys.stderr)
            report["models"] = {n: entries[n] for n in models if n in entries}
            write_report(report, out_dir, chart=False)
    finally:
        judge.close()
    measure_speeds(models, suite, config, entries, lambda: write_report(report, out_dir, chart=False))
    if judge.error:
        report["judge_error"] = judge.error
    if teacher_error:
        report["teacher_error"] = teacher_error
    if gate_tree is not None:
        passed, values, why = evaluate_gate(gate_tree, report["models"])
        report["gate"] = {"expr": config.gate, "passed": passed, "values": values, "unavailable": why}
    report["complete"] = True
    write_report(report, out_dir, chart=True)
    print(format_table(report))
    print(f"report: {out_dir / 'report.md'}  {out_dir / 'report.json'}")
    if report["gate"] is not None:
        print(gate_summary(report["gate"]))
    return report


def exit_code(report: dict[str, Any]) -> int:
    """3 when the gate failed, else 4 when some model (or the teacher reference, or the judge)
    failed, else 0."""
    if report.get("gate") is not None and not report["gate"]["passed"]:
        return EXIT_GATE_FAILED
    if any(entry.get("status") != "ok" for entry in report["models"].values()):
        return EXIT_MODEL_FAILED
    if report.get("teacher_error") or report.get("judge_error"):
        return EXIT_MODEL_FAILED
    return EXIT_OK


def gate_summary(gate: dict[str, Any]) -> str:
    values = ", ".join(f"{k} = {_fmt(v, 4)}" for k, v in gate["values"].items())
    verdict = "PASSED" if gate["passed"] else "FAILED"
    why = f"; {gate['unavailable']}" if gate.get("unavailable") else ""
    return f"gate: {gate['expr']} -> {verdict} ({values}){why}"


# ---------------------------------------------------------------- report files


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _human_params(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["model", "score [95% CI]", "agreement", "KL to teacher", "tok/s b=1", "tok/s batch",
              "p50 ms", "p95 ms", "params", "failed rows"]
    rows = []
    for name, e in report["models"].items():
        if e.get("status") != "ok":
            rows.append([name, "FAILED (see below)"] + ["-"] * (len(header) - 2))
            continue
        ci = e.get("score_ci") or [None, None]
        failed = f"{e['failed_rows']}/{e['rows']}"
        rows.append([
            name, f"{_fmt(e['score'])} [{_fmt(ci[0])}, {_fmt(ci[1])}]", _fmt(e.get("agreement")),
            _fmt(e.get("kl_to_teacher"), 4), _fmt(e.get("tokens_per_s"), 1), _fmt(e.get("tokens_per_s_batch"), 1),
            _fmt(e.get("latency_p50_ms"), 1), _fmt(e.get("latency_p95_ms"), 1), _human_params(e.get("params")), failed,
        ])
    return header, rows


def format_table(report: dict[str, Any]) -> str:
    """A fixed-width table for the terminal."""
    header, rows = table_rows(report)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    failed = [f"{name}: FAILED: {e.get('error')}" for name, e in report["models"].items() if e.get("status") != "ok"]
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows] + failed)


def format_markdown(report: dict[str, Any]) -> str:
    header, rows = table_rows(report)
    s = report["suite"]
    settings = report["settings"]
    lines = [
        f"# Evaluation report: {s['name']}",
        "",
        f"Suite `{s['path']}`: {s['rows']} rows ({', '.join(f'{k} {v}' for k, v in s['scorers'].items())}), "
        f"sha256 `{s['sha256'][:16]}`. Teacher: `{report['teacher'] or '-'}`. Created {report['created']}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    lines += ["", "![scores and speed](report.png)", ""]
    if report.get("gate") is not None:
        lines += [f"**Gate** `{report['gate']['expr']}`: **{'passed' if report['gate']['passed'] else 'FAILED'}** — "
                  + ", ".join(f"`{k}` = {_fmt(v, 4)}" for k, v in report["gate"]["values"].items())
                  + (f" ({report['gate']['unavailable']})" if report["gate"].get("unavailable") else ""), ""]
    problems = []
    for name, e in report["models"].items():
        if e.get("failures"):
            problems.append(f"- `{name}`: per-row failures " + ", ".join(f"{k}: {v}" for k, v in sorted(e["failures"].items())))
        for what, msg in (e.get("errors") or {}).items():
            problems.append(f"- `{name}`: {what}: {msg}")
        if e.get("status") != "ok":
            problems.append(f"- `{name}`: FAILED: {e.get('error')}")
    for key in ("teacher_error", "judge_error"):
        if report.get(key):
            problems.append(f"- {report[key]}")
    if problems:
        lines += ["## Failures", ""] + problems + [""]
    lines += [
        "## Settings and methods",
        "",
        f"Greedy decoding, max_new_tokens {settings['max_new_tokens']}, batch size {settings['batch_size']}, "
        f"device {settings['device']} ({settings['dtype']}, {settings['torch_threads']} CPU threads); "
        f"speed over {settings['speed_prompts']} prompts, {settings.get('speed_rounds', 1)} rounds with the models in turn; "
        f"KL over the teacher's top-{settings['kl_top_k']} + tail.",
        "",
    ]
    lines += [f"- **{k}**: {v}" for k, v in report["methods"].items()]
    lines += ["", "Per-row outputs, extracted answers and failures: `outputs/<model>.jsonl`.", ""]
    return "\n".join(lines)


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in records)
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError(type(value).__name__)


def plot_chart(report: dict[str, Any], path: Path) -> None:
    """Scores with their 95% CI, and tokens/s at batch 1 and at the batch size, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["models"])
    entries = [report["models"][n] for n in names]
    x = np.arange(len(names))
    fig, (ax_score, ax_speed) = plt.subplots(1, 2, figsize=(max(7, 2.2 * len(names) + 3), 3.8))
    scores = [e["score"] if e.get("score") is not None else 0.0 for e in entries]
    # Clamped: a Wilson bound can sit a rounding error on the wrong side of the mean at 0 or 1.
    lows = [max(0.0, s - (e["score_ci"][0] if e.get("score_ci") else s)) for s, e in zip(scores, entries)]
    highs = [max(0.0, (e["score_ci"][1] if e.get("score_ci") else s) - s) for s, e in zip(scores, entries)]
    ax_score.bar(x, scores, yerr=[lows, highs], capsize=4, color="#4C72B0")
    ax_score.set_xticks(x, names)
    ax_score.set_ylim(0, 1.05)
    ax_score.set_title(f"score on {report['suite']['name']} (95% CI)")
    width = 0.38
    b1 = [e.get("tokens_per_s") or 0.0 for e in entries]
    bn = [e.get("tokens_per_s_batch") or 0.0 for e in entries]
    ax_speed.bar(x - width / 2, b1, width, label="batch 1", color="#55A868")
    ax_speed.bar(x + width / 2, bn, width, label=f"batch {report['settings']['batch_size']}", color="#C44E52")
    ax_speed.set_xticks(x, names)
    ax_speed.set_title("generated tokens/s")
    ax_speed.legend()
    for i, e in enumerate(entries):
        if e.get("status") != "ok":
            ax_score.text(i, 0.02, "failed", ha="center", color="red")
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def write_report(report: dict[str, Any], out_dir: Path, chart: bool = True) -> None:
    """report.json, report.md (and report.png), each written atomically."""
    atomic_write_bytes(out_dir / "report.json", (json.dumps(report, indent=2, default=_json_default) + "\n").encode("utf-8"))
    atomic_write_bytes(out_dir / "report.md", format_markdown(report).encode("utf-8"))
    if chart and report["models"]:
        try:
            plot_chart(report, out_dir / "report.png")
        except Exception as exc:  # a plotting problem must not lose the numbers
            print(f"warning: could not draw report.png: {type(exc).__name__}: {exc}", file=sys.stderr)


__all__ = [
    "EvalConfig",
    "EXIT_GATE_FAILED",
    "EXIT_MODEL_FAILED",
    "exit_code",
    "evaluate_gate",
    "parse_gate",
    "run",
    "score_with_ci",
    "wilson_interval",
]
