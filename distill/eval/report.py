"""The report files: report.json, report.md, report.png and outputs/<model>.jsonl, each written atomically."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from distill.atomic import atomic_write_bytes, atomic_write_with


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
