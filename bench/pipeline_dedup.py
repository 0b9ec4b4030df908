"""Scale of the pipeline's history dedup: N new prompts against M earlier prompts' signatures.

    python bench/pipeline_dedup.py [--old 1000000] [--new 100000] [--segments 10] [--work DIR]

Builds M distinct random prompts as SEGMENTS earlier runs' index segments (what finished runs leave
in the store), then, in a fresh process, checks N new prompts against them the way `pipeline run`'s
collect stage does: 1% of the new prompts are exact copies of old ones and 1% near copies (one word
changed). Prints the build time, then the check's wall time, peak RSS and what it found.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def words(size: int = 5000, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    syll = ["ka", "lo", "mi", "ra", "to", "ne", "su", "vi", "po", "de", "ga", "ri", "ma", "zo", "pe", "lu", "an", "or"]
    out: set[str] = set()
    while len(out) < size:
        out.add("".join(rng.choice(syll) for _ in range(rng.randint(2, 4))))
    return sorted(out)


def prompt(rng: random.Random, vocab: list[str], tag: str) -> str:
    return f"{tag}: " + " ".join(rng.choice(vocab) for _ in range(rng.randint(12, 30))) + "?"


def old_prompt(i: int, vocab: list[str]) -> str:
    return prompt(random.Random(i), vocab, f"old {i}")


def build(work: Path, old: int, segments: int) -> float:
    from distill.pipeline.index import Hasher, Prompts, write_segment

    vocab = words()
    hasher = Hasher(0.7)
    started = time.perf_counter()
    per = -(-old // segments)
    for s in range(segments):
        texts = [old_prompt(i, vocab) for i in range(s * per, min(old, (s + 1) * per))]
        write_segment(work / f"run-{s:03d}", Prompts.of([[{"role": "user", "content": t}] for t in texts], hasher), hasher)
        print(f"  segment {s + 1}/{segments}: {len(texts)} prompts, {time.perf_counter() - started:.0f} s", flush=True)
    return time.perf_counter() - started


def check(work: Path, old: int, new: int) -> dict:
    from distill.pipeline.index import Hasher, Prompts, dedup

    vocab = words()
    rng = random.Random(99)
    texts, planted = [], []
    for j in range(new):
        kind = j % 100
        if kind == 0:  # an exact copy of an old prompt
            texts.append(old_prompt(rng.randrange(old), vocab))
        elif kind == 1:  # a near copy: one word changed
            original = old_prompt(rng.randrange(old), vocab)
            ws = original.split()
            ws[-2] = rng.choice(vocab)
            texts.append(" ".join(ws))
            planted.append((j, original))
        else:
            texts.append(prompt(rng, vocab, f"new {j}"))
    segments = [(p.name, p) for p in sorted(work.iterdir()) if (p / "segment.json").exists()]
    started = time.perf_counter()
    hasher = Hasher(0.7)
    verdicts = dedup(Prompts.of([[{"role": "user", "content": t}] for t in texts], hasher), segments, hasher)
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reasons: dict[str, int] = {}
    for r in verdicts.reason:
        reasons[r or "kept"] = reasons.get(r or "kept", 0) + 1
    # the planted near copies by their true Jaccard: those at or above the threshold must be found
    from distill.dedup import jaccard, shingles

    above = [j for j, original in planted if jaccard(shingles(texts[j]), shingles(original)) >= 0.7]
    below = [j for j, original in planted if j not in set(above)]
    found = lambda js: sum(1 for j in js if verdicts.reason[j] == "near_duplicate_of_earlier_run")  # noqa: E731
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(peak),
            "planted_exact": sum(1 for j in range(new) if j % 100 == 0), "planted_near": len(planted),
            "planted_near_jaccard_ge_0.7": len(above), "found_of_those": found(above),
            "planted_near_jaccard_lt_0.7": len(below), "flagged_of_those": found(below), "found": reasons}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=int, default=1_000_000)
    parser.add_argument("--new", type=int, default=100_000)
    parser.add_argument("--segments", type=int, default=10)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--check-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.check_only:
        print(json.dumps(check(args.work, args.old, args.new)))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="dedup-bench-"))
    print(f"building {args.old} earlier prompts in {args.segments} segments under {work}")
    built = build(work, args.old, args.segments)
    size = sum(f.stat().st_size for f in work.rglob("*") if f.is_file())
    print(f"built in {built:.0f} s; {size / 2**20:.0f} MiB on disk")
    started = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--check-only", "--work", str(work), "--old", str(args.old),
                          "--new", str(args.new)], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
