"""Logit KD against SFT on a real teacher's distributions: SmolLM2-135M-Instruct's own corpus
(sampled answers at temperature 1 with its top-20 log-probs), one student init taken from the
teacher (`distill init-student --layers 0,1,2,-3,-2,-1`), the same steps and data order, three
seeds. KD+CE (`--kd-weight 0.5`, forward KL over top-20 + tail) against CE alone (`--kd-weight 0`)
against the untrained init.

Per seed the trainer holds out the same rows for both runs (a seeded sample, `--eval-rows`);
held-out forward KL to the teacher and CE come from its final evaluation (`metrics.jsonl`), the
init's from its step-0 evaluation. Agreement is `distill eval`'s free-form measure: ROUGE-L F1
between the student's and the teacher's greedy answers to the held-out prompts.

    python bench/kd_vs_sft.py --corpus DIR --steps 60 --out bench/kd_vs_sft.md
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DISTILL = [sys.executable, "-m", "distill"]


def run(cmd: list[str], log: Path, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([str(c) for c in cmd], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def metrics(out: Path) -> tuple[dict, dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [r for r in rows if "eval_kl" in r]
    return evals[0], evals[-1]


def agreement(teacher_dir: Path, model_dirs: dict[str, Path], corpus: Path, held_out: list[int], max_new_tokens: int) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.corpus import open_corpus
    from distill.eval.generation import generate_greedy
    from distill.eval.scorers import rouge_l_f1

    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    rows = list(open_corpus(corpus).iter_rows())
    prompts = [list(map(int, rows[i].prompt_ids)) for i in held_out]

    def answers(path: Path) -> list[str]:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        out = generate_greedy(model, tokenizer, prompts, batch_size=8, max_new_tokens=max_new_tokens)
        return [g.text for g in out]

    reference = answers(teacher_dir)
    return {name: sum(rouge_l_f1(a, r) for a, r in zip(answers(path), reference)) / len(reference)
            for name, path in model_dirs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, help="a corpus of the real teacher (distill generate)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--eval-rows", type=int, default=24)
    parser.add_argument("--tokens-per-batch", type=int, default=1024)
    parser.add_argument("--lr", default="1e-4")
    parser.add_argument("--kd-weight", default="0.5")
    parser.add_argument("--agreement-tokens", type=int, default=48)
    parser.add_argument("--work", help="keep runs here (default: a temporary folder)")
    parser.add_argument("--out")
    args = parser.parse_args()

    spec = importlib.util.spec_from_file_location("real_teacher", ROOT / "scripts" / "real_teacher.py")
    real_teacher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(real_teacher)
    teacher_dir = real_teacher.build()
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        init = work / "init"
        if not (init / "config.json").is_file():
            subprocess.run([*DISTILL, "init-student", "--teacher", teacher_dir, "--layers", "0,1,2,-3,-2,-1", "--out", init],
                           check=True, cwd=ROOT)
        runs = {}
        for seed in seeds:
            for name, kd in (("KD+CE", args.kd_weight), ("CE only", "0")):
                out = work / f"{'kd' if kd != '0' else 'ce'}-s{seed}"
                runs[(name, seed)] = out
        # two runs side by side, one thread each: the machine has 2 cores
        pending = [k for k, out in runs.items() if not (out / "final" / "config.json").is_file()]
        while pending:
            batch, pending = pending[:2], pending[2:]
            procs = []
            for key in batch:
                name, seed = key
                kd = args.kd_weight if name == "KD+CE" else "0"
                cmd = [*DISTILL, "train", "--student", init, "--corpus", args.corpus, "--out", runs[key], "--max-steps", args.steps,
                       "--tokens-per-batch", args.tokens_per_batch, "--max-seq-len", 512, "--lr", args.lr, "--kd-weight", kd, "--seed", seed,
                       "--eval-rows", args.eval_rows, "--eval-every", 0, "--precision", "fp32"]
                procs.append((key, run(cmd, work / f"{runs[key].name}.log", 1)))
            for key, proc in procs:
                if proc.wait() != 0:
                    raise SystemExit(f"{key}: training failed; see {work / (runs[key].name + '.log')}")
        train_s = time.time() - start

        from distill.corpus import open_corpus
        from distill.train.data import holdout_rows

        corpus = open_corpus(args.corpus)
        table, per_seed = [], {}
        for seed in seeds:
            held = holdout_rows(corpus.row_group_offsets, corpus.num_rows, args.eval_rows, seed).tolist()
            models = {"init": init, **{name: runs[(name, seed)] / "final" for name in ("KD+CE", "CE only")}}
            agree = agreement(teacher_dir, models, Path(args.corpus), held, args.agreement_tokens)
            first, _ = metrics(runs[("KD+CE", seed)])
            per_seed[seed] = {"init": {"kl": first["eval_kl"], "ce": first["eval_ce"], "agreement": agree["init"]}}
            for name in ("KD+CE", "CE only"):
                _, last = metrics(runs[(name, seed)])
                per_seed[seed][name] = {"kl": last["eval_kl"], "ce": last["eval_ce"], "agreement": agree[name]}
            table.append((seed, per_seed[seed]))
    total_s = time.time() - start

    import numpy as np

    names = ("init", "CE only", "KD+CE")
    mean = {n: {m: float(np.mean([per_seed[s][n][m] for s in seeds])) for m in ("kl", "ce", "agreement")} for n in names}
    sd = {n: {m: float(np.std([per_seed[s][n][m] for s in seeds], ddof=1)) if len(seeds) > 1 else 0.0
              for m in ("kl", "ce", "agreement")} for n in names}
    lines = [
        f"# KD against SFT on a real teacher ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)", "",
        f"Teacher SmolLM2-135M-Instruct; corpus `{args.corpus}` ({corpus.num_rows} rows, top-{corpus.top_k}); student = "
        f"`distill init-student --layers 0,1,2,-3,-2,-1` (49.6M parameters); {args.steps} steps of {args.tokens_per_batch} "
        f"padded tokens, lr {args.lr}, fp32; KD+CE = `--kd-weight {args.kd_weight}` (forward KL over top-20 + tail), "
        f"CE only = `--kd-weight 0`; seeds {args.seeds}; {args.eval_rows} held-out rows per seed. x86_64, 2 CPU cores "
        f"(two runs side by side, one thread each), torch CPU. `python bench/kd_vs_sft.py --corpus ... --steps {args.steps}`; "
        f"{total_s / 60:.0f} min in all ({train_s / 60:.0f} training).", "",
        "| student | held-out KL to teacher (nats/token) | held-out CE (nats/token) | agreement (ROUGE-L F1 vs teacher, greedy) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for n in names:
        lines.append(f"| {n} | {mean[n]['kl']:.3f} ± {sd[n]['kl']:.3f} | {mean[n]['ce']:.3f} ± {sd[n]['ce']:.3f} | "
                     f"{mean[n]['agreement']:.3f} ± {sd[n]['agreement']:.3f} |")
    lines += ["", "Mean ± standard deviation over the seeds. Per seed:", "",
              "| seed | student | KL | CE | agreement |", "| --- | --- | ---: | ---: | ---: |"]
    for seed, row in table:
        for n in names:
            lines.append(f"| {seed} | {n} | {row[n]['kl']:.3f} | {row[n]['ce']:.3f} | {row[n]['agreement']:.3f} |")
    winner = min(("CE only", "KD+CE"), key=lambda n: mean[n]["kl"])
    lines += ["", f"Lower held-out KL: **{winner}**."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        plot(mean, sd, names, Path(args.out).with_suffix(".png"))
        (Path(args.out).with_suffix(".json")).write_text(json.dumps({"per_seed": per_seed, "mean": mean, "sd": sd}, indent=1))


def plot(mean: dict, sd: dict, names: tuple, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
    for ax, (metric, label) in zip(axes, (("kl", "held-out KL to teacher"), ("ce", "held-out CE"), ("agreement", "agreement (ROUGE-L)"))):
        ax.bar(names, [mean[n][metric] for n in names], yerr=[sd[n][metric] for n in names], capsize=4,
               color=["#bbbbbb", "#6b8fc7", "#d9822b"])
        ax.set_title(label, fontsize=10)
        ax.tick_params(axis="x", labelsize=9)
    fig.suptitle("SmolLM2-135M-Instruct -> 6-layer pruned student, 3 seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
