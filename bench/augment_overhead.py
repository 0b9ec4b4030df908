"""How much of prompt augmentation is the teacher, and how much is our bookkeeping?

Runs ``distill.augment.augment_prompts`` end to end with a small HF teacher (the test suite's
tiny random Qwen2, CPU fp32, or ``--teacher DIR``) on 64 templated seed prompts, with round files
written to disk, decontamination against a 500-prompt suite, and (second configuration) the
teacher judge. The wall time is split into teacher generation (time inside ``teacher.generate``,
meta-prompts and judge) and everything else (example draws, meta-prompt rendering and
tokenization, parsing, filters, exact/near dedup, decontamination, atomic round writes).
Target: teacher >= 80% of the step's wall time.

A random tiny teacher writes about one candidate per generation, fewer than an instruct model's
five, so part B measures the bookkeeping per candidate at scale on its own: 2,000 templated
candidates screened against an index already holding 2,000 prompts.

    python bench/augment_overhead.py [--repeats 3] [--teacher DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

NAMES = ["Ada", "Bo", "Cy", "Di", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kai", "Lu", "Max", "Ned", "Oz", "Pia"]
THINGS = ["apples", "stamps", "marbles", "books", "coins", "shells", "pens", "cards", "kites", "beads"]


def word_problem(rng: random.Random) -> str:
    a, b = rng.sample(NAMES, 2)
    t = rng.choice(THINGS)
    return (f"{a} has {rng.randint(2, 99)} {t} and {b} has {rng.randint(2, 99)}. {a} gives {b} {rng.randint(1, 9)} {t}, "
            f"then {b} buys {rng.randint(1, 20)} more. How many {t} does {rng.choice([a, b])} have now?")


def seeds(count: int = 64):
    from distill.prompts import PromptRecord

    rng = random.Random(0)
    out = []
    for i in range(count):
        messages = ({"role": "user", "content": word_problem(rng)},)
        out.append(PromptRecord(id=f"seed-{i}", messages=messages, origin={"source": "seed"}))
    return out


class RealisticText:
    """The HF teacher really generates (its full cost is paid), but a random tiny model writes
    byte soup that every filter rejects at once. So that dedup, decontamination and the judge
    see realistic work, each output's text is swapped for five templated "Prompt:" items drawn
    from the request's seed (or a score digit for a judge request). Not used with --teacher."""

    def __init__(self, inner):
        self.inner = inner
        self.tokenizer, self.max_context, self.backend = inner.tokenizer, inner.max_context, inner.backend

    def fingerprint(self):
        return self.inner.fingerprint()

    def generate(self, requests, params):
        import dataclasses

        seeds = {r.key: r.seed for r in requests}
        for out in self.inner.generate(requests, params):
            rng = random.Random(seeds[out.key])
            if out.key.startswith("judge-"):
                text = str(rng.randint(1, 5))
            else:
                text = "\n\n".join("Prompt: " + word_problem(rng) for _ in range(5))
            yield dataclasses.replace(out, text=text)

    def close(self):
        self.inner.close()


def one_run(teacher_dir: Path, suite: Path, work: Path, judge: bool, seed: int, realistic: bool) -> dict:
    from distill.augment import AugmentConfig, augment_prompts
    from distill.teachers.hf import HFTeacher

    teacher = HFTeacher(str(teacher_dir), device="auto", dtype="auto", batch_size=16)
    teacher.model  # load weights before timing: loading is not part of the augmentation step
    if realistic:
        teacher = RealisticText(teacher)
    config = AugmentConfig(num_prompts=10_000, few_shot=3, requests_per_round=32, max_rounds=2, prompts_per_request=5,
                           generation_max_tokens=96, max_new_tokens=128, min_words=1, seed=seed,
                           decontaminate=str(suite), judge_threshold=3 if judge else 0, progress=False)
    start = time.perf_counter()
    result = augment_prompts(teacher, seeds(), config, recipe={}, work_dir=work)
    wall = time.perf_counter() - start
    teacher.close()
    timing = result.stats["timing_s"]
    teacher_s = timing["teacher_generate"] + timing["judge"]
    return {"wall_s": wall, "teacher_generate_s": timing["teacher_generate"], "judge_s": timing["judge"],
            "bookkeeping_s": wall - teacher_s, "teacher_share": teacher_s / wall,
            "candidates": result.stats["candidates"], "accepted": result.stats["accepted"],
            "requests": result.stats["requests"]}


def bookkeeping_at_scale(teacher_dir: Path, suite: Path) -> dict:
    """Part B: per-candidate cost of every filter with 2,000 prompts already indexed."""
    from transformers import AutoTokenizer

    from distill.augment import AugmentConfig, Templates, _screen, _State, resolve_templates
    from distill.decontaminate import load_suite_index

    class TokenizerOnly:
        tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
        max_context = 4096

    config = AugmentConfig(progress=False)
    templates: Templates = resolve_templates(config)
    state = _State(config, seeds(), templates, TokenizerOnly)
    contamination, _, _ = load_suite_index(str(suite))
    _screen(state, word_problem(random.Random(2)), 3968, TokenizerOnly, contamination, {})  # lazy imports
    rng = random.Random(1)
    for i in range(2000):
        state.near.add(f"a{i}", word_problem(rng))
    candidates = [word_problem(rng) for _ in range(2000)]
    start = time.perf_counter()
    for i, text in enumerate(candidates):
        reason, _ = _screen(state, text, 3968, TokenizerOnly, contamination, {})
        if reason is None:
            state.near.add(f"c{i}", text)
    elapsed = time.perf_counter() - start
    return {"candidates": len(candidates), "index_size_start": 2000, "us_per_candidate": 1e6 * elapsed / len(candidates)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--teacher", help="HF model dir (default: build the tests' tiny random Qwen2)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if args.teacher:
            teacher_dir = Path(args.teacher)
        else:
            from tests.tiny import make_model_dir

            teacher_dir = make_model_dir(tmp_path / "teacher", seed=1)
        rng = random.Random(99)
        suite = tmp_path / "suite.jsonl"
        suite.write_text("".join(json.dumps({"prompt": word_problem(rng)}) + "\n" for _ in range(500)))

        runs: dict[str, list[dict]] = {"no judge": [], "judge": []}
        for rep in range(args.repeats):  # interleaved: no-judge, judge, no-judge, judge, ...
            for name in runs:
                work = tmp_path / f"work-{name.replace(' ', '-')}-{rep}"
                runs[name].append(one_run(teacher_dir, suite, work, judge=name == "judge", seed=rep, realistic=not args.teacher))
        scale = bookkeeping_at_scale(teacher_dir, suite)

    device = "cuda " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    print(f"# augmentation overhead  ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {device}, torch {torch.__version__})")
    print(f"teacher: {teacher_dir if args.teacher else 'tests/tiny.py random Qwen2 (hidden 64, 2 layers), texts swapped for templated prompts (see RealisticText)'}; 64 seeds, "
          f"2 rounds x 32 requests, 96 new tokens per request, decontamination vs 500 prompts, round files on disk\n")
    print("| config | run | wall s | teacher generate s | judge s | bookkeeping s | teacher share | candidates | accepted |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary = {}
    for name, rows in runs.items():
        for i, r in enumerate(rows):
            print(f"| {name} | {i} | {r['wall_s']:.2f} | {r['teacher_generate_s']:.2f} | {r['judge_s']:.2f} | "
                  f"{r['bookkeeping_s']:.3f} | {100 * r['teacher_share']:.1f}% | {r['candidates']} | {r['accepted']} |")
        share = statistics.median(r["teacher_share"] for r in rows)
        summary[name] = share
    print()
    for name, share in summary.items():
        verdict = "PASS" if share >= 0.80 else "FAIL"
        print(f"{name}: median teacher share {100 * share:.1f}% of the augmentation step (target >= 80%: {verdict})")
    per_generated = statistics.median(r["teacher_generate_s"] / max(r["candidates"], 1) for r in runs["no judge"])
    print(f"\npart B: bookkeeping per candidate with {scale['index_size_start']} prompts indexed: "
          f"{scale['us_per_candidate']:.0f} us  (teacher time per candidate above: {1e6 * per_generated:.0f} us)")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "median_teacher_share": summary, "scale": scale}, indent=2))


if __name__ == "__main__":
    main()
