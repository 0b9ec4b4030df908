"""`distill eval`'s run(config): every model in turn, the teacher reference, speed rounds, the gate."""

from __future__ import annotations

import datetime as _dt
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from distill.config import ConfigError
from distill.errors import ExitCode, Preempted
from distill.eval.config import EvalConfig, parse_model_specs
from distill.eval.gate import GATE_METRICS, evaluate_gate, gate_summary, parse_gate
from distill.eval.generation import combine_speed_rounds, measure_speed
from distill.eval.kl import TeacherRef
from distill.eval.models import (
    _open,
    _open_backend,
    _Opened,
    _torch_device_dtype,
    resolve_model,
)
from distill.eval.report import _write_jsonl, format_table, write_report
from distill.eval.scorers import (
    Suite,
    agreement_with_teacher,
    judge_prompt,
    judge_result,
    load_suite,
    score_output,
)
from distill.eval.stats import score_with_ci
from distill.lock import FolderLock
from distill.stop import STOP

EXIT_OK = int(ExitCode.OK)


EXIT_GATE_FAILED = int(ExitCode.GATE_FAILED)


EXIT_MODEL_FAILED = int(ExitCode.MODEL_FAILED)


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


def _judge_all(judge: "_Judge", suite: Suite, texts: list[str], config: EvalConfig,
               entry: dict[str, Any]) -> dict[str, str] | None:
    """The judge's replies for the suite's judge rows ({} when there are none; None when the judge
    is unavailable or failed, which each judge row then counts as its failure)."""
    if not any(row.scorer.kind == "judge" for row in suite.rows):
        return {}
    judge_teacher = judge.get()
    if judge_teacher is None:
        return None
    try:
        return _judge_replies(judge_teacher, suite, texts, config.judge_max_new_tokens)
    except Exception as exc:
        entry["errors"]["judge"] = f"{type(exc).__name__}: {exc}"
        return None


def _score_rows(suite: Suite, generations: list, replies: dict[str, str] | None):
    """Score every row: (per-row records, scores, failure counts by reason, scores by scorer kind)."""
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
    return row_records, scores, failures, by_scorer


def _compare_to_teacher(name: str, entry: dict[str, Any], row_records: list[dict[str, Any]], suite: Suite,
                        texts: list[str], fingerprint: str, ref: TeacherRef, opened: "_Opened") -> None:
    """Agreement with the teacher's answers and KL to its top-k, into ``entry`` and the row records."""
    agree = [agreement_with_teacher(row.scorer, text, teacher_text)
             for row, text, teacher_text in zip(suite.rows, texts, ref.texts)]
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
            # A KL is >= 0; fp32 rounding where model == teacher leaves values of about -1e-7.
            entry["kl_to_teacher"] = None if math.isnan(kl) else max(kl, 0.0)
            entry["kl_tokens"] = kl_tokens
        except Exception as exc:
            entry["errors"]["kl"] = f"{type(exc).__name__}: {exc}"


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
        replies = _judge_all(judge, suite, texts, config, entry)
        row_records, scores, failures, by_scorer = _score_rows(suite, generations, replies)
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
            _compare_to_teacher(name, entry, row_records, suite, texts, fingerprint, ref, opened)
        _write_jsonl(out_dir / "outputs" / f"{name}.jsonl", row_records)
        entry["status"] = "ok"
    except (KeyboardInterrupt, SystemExit, Preempted):
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


def _teacher_and_judge(config: EvalConfig, models: dict[str, str], suite: Suite) -> tuple[str | None, str | None, str | None]:
    """(the --teacher spec when it is not one of --model, the judge's name, the judge's spec when
    judge rows need one); a spec that names nothing is a ConfigError now, not after the first model."""
    teacher_spec = None
    if config.teacher is not None and config.teacher not in models:
        _check_teacher_spec("--teacher", config.teacher, models)
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
    return teacher_spec, judge_name, judge_spec


def _new_report(config: EvalConfig, suite: Suite, judge_name: str | None) -> dict[str, Any]:
    """The report before any model ran: suite, settings, methods; filled in as models finish."""
    from distill import __version__
    from distill.build_info import build_info

    report: dict[str, Any] = {
        "models": {},
        "suite": {
            "name": suite.name, "path": str(suite.path), "rows": len(suite.rows), "sha256": suite.sha256,
            "scorers": suite.scorer_counts(),
        },
        "teacher": config.teacher,
        "judge": judge_name,
        "settings": {
            "max_new_tokens": config.max_new_tokens, "batch_size": config.batch_size, "kl_top_k": config.kl_top_k,
            "speed_prompts": min(config.speed_prompts, len(suite.rows)), "speed_rounds": config.speed_rounds,
            "decoding": "greedy",
            "device": str(_torch_device_dtype(config)[0]), "dtype": str(_torch_device_dtype(config)[1]).replace("torch.", ""),
            "torch_threads": _torch_threads(),
        },
        "methods": {
            "score_ci": "95% Wilson interval when all row scores are 0/1, else percentile bootstrap (2000 resamples)",
            "agreement": "mean over rows of agreement with the teacher's greedy output: for regex/numeric rows 1 when the extracted answers match (numeric within the row's tolerance), else 0; for free-form rows (exact, contains, python, judge) ROUGE-L F1 of the normalized words; rows where the teacher gave nothing are not counted",
            "kl_to_teacher": "forward KL(teacher || model), nats per token, on the teacher's greedy responses; teacher top-k + tail bin vs the model's full softmax",
            "speed": "greedy generation after one warm-up call per opening, models timed in turn over speed_rounds rounds; tokens up to and including EOS; tokens_per_s = median over rounds; latency_* pooled; at batch 1, *_batch in full batches of batch_size",
        },
        "gate": None,
        "complete": False,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    report["distill_version"] = __version__
    report["build"] = build_info()
    return report



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
    teacher_spec, judge_name, judge_spec = _teacher_and_judge(config, models, suite)
    out_dir = Path(config.out)
    with FolderLock(out_dir, purpose="distill eval"):  # one eval writes a report folder at a time
        return _evaluate_all(config, models, suite, gate_tree, teacher_spec, judge_name, judge_spec, out_dir)


def _evaluate_all(config: EvalConfig, models: dict[str, str], suite: Suite, gate_tree: Any, teacher_spec: str | None,
                  judge_name: str | None, judge_spec: str | None, out_dir: Path) -> dict[str, Any]:
    """Every model in turn, then speed, the gate and the report files (under the folder's lock)."""
    report = _new_report(config, suite, judge_name if judge_spec is not None else None)
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
        teacher_error = _models_and_speeds(config, models, suite, order, teacher_ref, teacher_error, judge, report,
                                           entries, out_dir)
    except Preempted:
        # no partial report is left behind: the files this run wrote so far go (the lock says they are ours)
        for name in ("report.json", "report.md"):
            (out_dir / name).unlink(missing_ok=True)
        raise
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


def _models_and_speeds(config: EvalConfig, models: dict[str, str], suite: Suite, order: list[str], teacher_ref: Any,
                       teacher_error: str | None, judge: Any, report: dict[str, Any], entries: dict[str, dict[str, Any]],
                       out_dir: Path) -> str | None:
    """Each model in turn (a report after each, marked incomplete), then the speed rounds; returns
    the teacher's error, if it failed."""
    try:
        for name in order:
            STOP.check("eval: no report written")
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
    STOP.check("eval: no report written")
    measure_speeds(models, suite, config, entries, lambda: write_report(report, out_dir, chart=False))
    STOP.check("eval: no report written")
    return teacher_error


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


