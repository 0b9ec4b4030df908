"""The demo's "must show" figures, measured over several seeds (mean ± sd).

    python bench/demo.py                      # 3 seeds, writes bench/demo.md + bench/demo_curve.png
    python bench/demo.py --seeds 0 --curve-seeds 0

For each seed: runs ``scripts/demo.sh`` (the plain CLI pipeline) into runs/bench-demo/s<seed>,
timing it, then checks independently of the pipeline's own code:
- yield: accepted synthetic prompts (``OUT/corpus/augment/prompts.jsonl``);
- near duplicates: brute-force character 5-gram Jaccard over every pair of accepted prompts
  (pairs with J >= 0.8; the share of prompts that are in such a pair);
- contamination: word 13-grams shared with any prompt of eval/demo.jsonl (must be 0);
- coherence: the share of synthetic prompts whose question asks about people and things the
  story introduced (``task.is_coherent``; every generated problem passes);
- teacher / student / seeds-only task scores, parameters and tokens/s from the eval report.
The pipeline's output goes to ``runs/bench-demo/s<seed>.log``; the time of each of its four
steps is read from the "(Ns elapsed)" marks it prints.
Then, for ``--curve-seeds``: KD+SFT (``--kd-weight``, the demo's 0.2 by default, passed to
``scripts/demo.sh`` too) against SFT only (--kd-weight 0) on the same corpus and step budget, a checkpoint every ``--curve-every`` steps scored on the eval
suite (greedy): the accuracy-vs-steps plot and the first step at >= 90% of the teacher's score.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "data" / "demo"))

import task  # noqa: E402


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def char_shingles(text: str, n: int = 5) -> set[str]:
    flat = " ".join(re.findall(r"\w+", text.lower()))
    return {flat[i:i + n] for i in range(max(1, len(flat) - n + 1))}


def near_duplicates(prompts: list[str], threshold: float = 0.8) -> tuple[int, int]:
    """(pairs with char-5-gram Jaccard >= threshold, prompts in at least one such pair), over ALL
    pairs: |A & B| for every pair at once as a sparse product, exact, no hashing."""
    import numpy as np
    from scipy import sparse

    vocab: dict[str, int] = {}
    rows, cols = [], []
    for i, text in enumerate(prompts):
        for s in char_shingles(text):
            rows.append(i)
            cols.append(vocab.setdefault(s, len(vocab)))
    matrix = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(prompts), len(vocab)))
    sizes = np.asarray(matrix.sum(axis=1)).ravel()
    inter = (matrix @ matrix.T).toarray()
    jac = inter / (sizes[:, None] + sizes[None, :] - inter)
    np.fill_diagonal(jac, 0.0)
    hits = np.argwhere(np.triu(jac >= threshold, k=1))
    return len(hits), len(set(hits.ravel().tolist()))


def ngram_overlap(prompts: list[str], suite: list[str], n: int = 13) -> int:
    """Prompts sharing at least one word n-gram with any suite prompt."""
    def grams(text: str) -> set[tuple[str, ...]]:
        words = re.findall(r"\w+", text.lower())
        return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}

    suite_grams = set().union(*(grams(t) for t in suite))
    return sum(bool(grams(p) & suite_grams) for p in prompts)


def score_dir(model_dir: Path, suite: list[dict], batch_size: int = 100) -> float:
    """Greedy task accuracy of an HF model dir on the suite (same extraction as the numeric scorer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import trainlib
    from distill.eval.scorers import _last_number

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    outputs = trainlib.greedy(model, tok, [r["prompt"] for r in suite], max_new_tokens=64, batch_size=batch_size)
    return sum(_last_number(o) == float(r["reference"]) for o, r in zip(outputs, suite)) / len(suite)


def checkpoint_as_model(checkpoint: Path, final: Path, dest: Path) -> Path:
    """An HF model dir from a `distill train` checkpoint (accelerate state) and the final config."""
    import shutil

    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    state = load_file(str(checkpoint / "model.safetensors"))
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(final), dtype=torch.float32)
    own = model.state_dict()
    renamed = {}
    for key, value in state.items():
        for prefix in ("", "model.", "module.", "_orig_mod."):
            if key.startswith(prefix) and key[len(prefix):] in own:
                renamed[key[len(prefix):]] = value
                break
    if "lm_head.weight" not in renamed and model.config.tie_word_embeddings:
        renamed["lm_head.weight"] = renamed["model.embed_tokens.weight"]
    missing = set(own) - set(renamed)
    assert not missing, f"{checkpoint}: weights missing for {sorted(missing)[:3]}"
    model.load_state_dict(renamed)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (final / name).exists():
            shutil.copy(final / name, dest / name)
    return dest


def run(cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> float:
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    if log is None:
        subprocess.run(cmd, check=False, cwd=ROOT, env={**os.environ, **(env or {})})
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as handle:
            subprocess.run(cmd, check=False, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=handle, stderr=subprocess.STDOUT)
    return time.perf_counter() - start


def stage_seconds(log: Path, total: float) -> dict[str, float]:
    """Seconds per step of scripts/demo.sh, from the "== i/4 ... (Ns elapsed)" marks in its log."""
    marks = [(m.group(1), int(m.group(2))) for m in re.finditer(r"^== (\d)/4 .*\((\d+)s elapsed\)", log.read_text(), re.M)]
    names = {"1": "generate_s", "2": "baseline_start_s", "3": "train_s", "4": "eval_s"}
    ends = [t for _, t in marks[1:]] + [total]
    out = {names[k]: float(end - t) for (k, t), end in zip(marks, ends)}
    out.pop("baseline_start_s", None)  # starting the background job: ~0 s
    return out


def synthetic_prompts(corpus: Path) -> list[str]:
    """The accepted synthetic prompts, as the corpus stores them (origin.source == synthetic)."""
    from distill.corpus import open_corpus

    return [row.prompt_text for row in open_corpus(corpus).iter_rows() if row.origin.get("source") == "synthetic"]


def pipeline(seed: int, base: Path, steps: int, kd_weight: str, reuse: bool = False) -> dict:
    out = base / f"s{seed}"
    report_path = out / "eval" / "report.json"
    if reuse and report_path.exists():  # an earlier run: its wall time from the files it wrote
        seconds = report_path.stat().st_mtime - (out / "corpus" / "run.json").stat().st_mtime
    else:
        seconds = run(["bash", "scripts/demo.sh"], {"RUN": str(out), "SEED": str(seed), "STEPS": str(steps), "KD": kd_weight},
                      log=out.parent / f"{out.name}.log")
    stages = stage_seconds(out.parent / f"{out.name}.log", seconds) if (out.parent / f"{out.name}.log").exists() else {}
    report = json.loads(report_path.read_text())["models"]
    synthetic = synthetic_prompts(out / "corpus")
    manifest = json.loads((out / "corpus" / "manifest.json").read_text())
    suite = [r["prompt"] for r in read_jsonl(ROOT / "eval" / "demo.jsonl")]
    pairs, in_pairs = near_duplicates(synthetic)
    m = {name: report[name] for name in ("teacher", "student", "seeds_only")}
    return {
        "seed": seed, "pipeline_s": seconds, **stages, "accepted": len(synthetic),
        "rejected": (manifest.get("augmentation") or {}).get("rejected", {}),
        "near_dup_pairs": pairs, "near_dup_share": in_pairs / max(1, len(synthetic)),
        "contaminated": ngram_overlap(synthetic, suite),
        "coherent_share": sum(map(task.is_coherent, synthetic)) / max(1, len(synthetic)),
        "teacher": m["teacher"]["score"], "student": m["student"]["score"], "seeds_only": m["seeds_only"]["score"],
        "student_over_teacher": m["student"]["score"] / max(m["teacher"]["score"], 1e-9),
        "param_ratio": m["teacher"]["params"] / m["student"]["params"],
        "speed_ratio_b1": m["student"]["tokens_per_s"] / m["teacher"]["tokens_per_s"],
        "speed_ratio_batch": (m["student"].get("tokens_per_s_batch") or 0) / max(m["teacher"].get("tokens_per_s_batch") or 1e-9, 1e-9),
        "teacher_params": m["teacher"]["params"], "student_params": m["student"]["params"],
        "by_kind": scores_by_kind(out),
    }


def scores_by_kind(out: Path) -> dict[str, dict[str, float]]:
    """Per model, the suite score by problem kind (the generator's kind of each suite prompt)."""
    import make_data

    kind_of = {p.prompt: p.kind for p in make_data.eval_problems()}
    suite = {r["id"]: kind_of[r["prompt"]] for r in read_jsonl(ROOT / "eval" / "demo.jsonl")}
    by_model = {}
    for name in ("teacher", "student", "seeds_only"):
        rows: dict[str, list[float]] = {}
        for row in read_jsonl(out / "eval" / "outputs" / f"{name}.jsonl"):
            rows.setdefault(suite[row["id"]], []).append(float(row["score"] or 0.0))
        by_model[name] = {kind: sum(v) / len(v) for kind, v in sorted(rows.items())}
    by_model["suite_rows"] = {kind: sum(k == kind for k in suite.values()) for kind in sorted(set(suite.values()))}
    return by_model


def wait_for(path: Path) -> None:
    """Block until ``path`` exists (the curve can start while the pipeline is still evaluating)."""
    while not path.exists():
        time.sleep(10)


def curve(seed: int, base: Path, steps: int, every: int, kd_weight: str) -> dict:
    suite = read_jsonl(ROOT / "eval" / "demo.jsonl")
    corpus = base / f"s{seed}" / "corpus"
    wait_for(corpus / "manifest.json")
    arms = {}
    for name, weight in (("kd+sft", kd_weight), ("sft", "0")):
        out = base / f"s{seed}" / f"curve-{name.replace('+', '_')}"
        run([sys.executable, "-m", "distill", "train", "--student", "demo", "--corpus", str(corpus), "--out", str(out),
             "--kd-weight", weight, "--max-steps", str(steps), "--seed", str(seed), "--save-every", str(every),
             "--keep-checkpoints", "1000"])
        points = []
        for ckpt in sorted((out / "checkpoints").glob("step-*")):
            step = int(ckpt.name.split("-")[1])
            model_dir = checkpoint_as_model(ckpt, out / "final", out / "scored" / ckpt.name)
            points.append((step, score_dir(model_dir, suite)))
            print(f"{name} step {step}: {points[-1][1]:.3f}", flush=True)
        arms[name] = {"points": points}
    report = base / f"s{seed}" / "eval" / "report.json"
    wait_for(report)
    teacher_score = json.loads(report.read_text())["models"]["teacher"]["score"]
    for arm in arms.values():
        arm["teacher_score"] = teacher_score
        arm["steps_to_90pct_teacher"] = next((s for s, acc in arm["points"] if acc >= 0.9 * teacher_score), None)
    return arms


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="pipeline runs (none: only the curve, on existing runs)")
    parser.add_argument("--curve-seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--steps", type=int, default=int(os.environ.get("STEPS", 2000)))
    parser.add_argument("--curve-every", type=int, default=250)
    parser.add_argument("--kd-weight", default="0.2", help="KD weight of the pipeline's student and of the curve's KD+SFT arm")
    parser.add_argument("--base", default="runs/bench-demo")
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs under --base instead of re-running them")
    parser.add_argument("--out", default=str(ROOT / "bench" / "demo.md"))
    args = parser.parse_args()
    base = ROOT / args.base

    results = [pipeline(seed, base, args.steps, args.kd_weight, args.reuse) for seed in args.seeds]
    curves = {seed: curve(seed, base, args.steps, args.curve_every, args.kd_weight) for seed in args.curve_seeds}

    keys = [("pipeline_s", "pipeline wall time, s (scripts/demo.sh, no install)"),
            ("generate_s", "  of which 1/4 generate (augment + answer)"),
            ("train_s", "  of which 2-3/4 student and baseline training, side by side"),
            ("eval_s", "  of which 4/4 eval"),
            ("accepted", "accepted synthetic prompts"),
            ("near_dup_share", "share of prompts in a char-5-gram Jaccard >= 0.8 pair"),
            ("near_dup_pairs", "such pairs"),
            ("contaminated", "prompts sharing a word 13-gram with eval/demo.jsonl"),
            ("coherent_share", "share of synthetic prompts that are coherent (task.is_coherent)"),
            ("teacher", "teacher task score"), ("student", "student task score"),
            ("seeds_only", "seeds-only student task score"),
            ("student_over_teacher", "student / teacher score"),
            ("param_ratio", "teacher / student parameters"),
            ("speed_ratio_b1", "student / teacher tokens/s, batch 1"),
            ("speed_ratio_batch", "student / teacher tokens/s, batched")]
    lines = [f"# Demo benchmark ({date.today().isoformat()})", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}, Python {platform.python_version()}; "
             f"one run per seed (timings on a shared machine vary from run to run).", "",
             f"`python bench/demo.py --seeds {' '.join(map(str, args.seeds))} --steps {args.steps} --kd-weight {args.kd_weight}`: "
             f"`scripts/demo.sh` per seed, then independent checks (see the script's docstring).", "",
             "| figure | " + " | ".join(f"seed {r['seed']}" for r in results) + " | mean ± sd |",
             "| --- |" + " --- |" * (len(results) + 1)]
    for key, label in keys if results else []:
        if not all(key in r for r in results):
            continue
        values = [float(r[key]) for r in results]
        lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" if isinstance(r[key], float) else str(r[key])
                                                 for v, r in zip(values, results)) + f" | {mean_sd(values)} |")
    lines += ["", "Augmentation rejections per reason: " + "; ".join(f"seed {r['seed']}: {r['rejected']}" for r in results)]
    if results and all("by_kind" in r for r in results):
        kinds = list(results[0]["by_kind"]["suite_rows"])
        lines += ["", "Score by kind of suite problem (mean over the seeds; suite rows per kind in brackets):", "",
                  "| model | " + " | ".join(f"{k} ({results[0]['by_kind']['suite_rows'][k]})" for k in kinds) + " |",
                  "| --- |" + " --- |" * len(kinds)]
        for name in ("teacher", "student", "seeds_only"):
            lines.append(f"| {name} | " + " | ".join(mean_sd([r["by_kind"][name].get(k, 0.0) for r in results]) for k in kinds) + " |")
    if not results:
        lines = lines[:5]
    for seed, arms in curves.items():
        lines += ["", f"## KD+SFT vs SFT only (seed {seed}, same corpus, {args.steps} steps, checkpoint every {args.curve_every})", "",
                  "| step | " + " | ".join(arms) + " |", "| --- |" + " --- |" * len(arms)]
        steps = sorted({s for arm in arms.values() for s, _ in arm["points"]})
        for s in steps:
            lines.append(f"| {s} | " + " | ".join(f"{dict(arm['points']).get(s, float('nan')):.3f}" for arm in arms.values()) + " |")
        lines.append("")
        for name, arm in arms.items():
            reach = arm["steps_to_90pct_teacher"]
            lines.append(f"- {name}: steps to reach 90% of the teacher's score: {reach if reach is not None else f'not reached in {args.steps}'}")
    if curves:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for seed, arms in curves.items():
            teacher = next(iter(arms.values()))["teacher_score"]
            for name, arm in arms.items():
                xs, ys = zip(*arm["points"]) if arm["points"] else ((), ())
                ax.plot(xs, ys, marker="o", label=f"{name} (seed {seed})")
            ax.axhline(0.9 * teacher, linestyle="--", color="grey", label=f"90% of teacher ({0.9 * teacher:.2f})")
        ax.set_xlabel("optimizer steps")
        ax.set_ylabel("demo suite accuracy (greedy)")
        ax.set_title("demo student: KD+SFT vs SFT only")
        ax.legend()
        fig.tight_layout()
        fig.savefig(ROOT / "bench" / "demo_curve.png", dpi=120)
        lines += ["", "![accuracy vs steps](demo_curve.png)"]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    (Path(args.out).with_suffix(".json")).write_text(json.dumps({"runs": results, "curves": {str(k): v for k, v in curves.items()}}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
