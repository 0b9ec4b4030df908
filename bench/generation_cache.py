"""Static vs dynamic KV cache in the HF teacher backend, on the demo teacher's prompt writing.

Two batches, as the demo's ``distill generate`` runs them: writing prompts (``--rows``
meta-prompts built from the demo seeds as ``distill generate --augment`` renders them, 3 examples
each, temperature 0.8, top-p 0.95, up to ``--max-new-tokens``), then answering (``--rows`` seed
prompts, greedy, top-20 log-probs captured, up to 64 tokens). Each is generated with
``kv_cache: dynamic`` and ``kv_cache: static`` in turn, ``--reps`` times each (interleaved, so both
see the same machine), through ``distill.teachers.hf.generate_batch``. Prints each timing, the
ratio of the medians, and whether the two caches wrote the same tokens.

    python bench/generation_cache.py [--rows 256] [--reps 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=320, help="as data/demo/augment.yaml")
    args = parser.parse_args()

    import torch

    from distill.augment import render_meta_prompt
    from distill.prompts import encode_prompt
    from distill.teachers import load_teacher, teacher_recipe
    from distill.teachers.base import SamplingParams
    from distill.teachers.hf import generate_batch

    torch.set_num_threads(args.threads)
    recipe = teacher_recipe("demo")
    teacher = load_teacher("demo")
    template = recipe["augment"]["meta_prompt"]
    seeds = [json.loads(line)["prompt"] for line in (ROOT / "data/demo/seeds.jsonl").open()]
    rng = random.Random(0)
    prompts = [encode_prompt(teacher.tokenizer, ({"role": "user", "content": render_meta_prompt(template, rng.sample(seeds, 3), 5)},))
               for _ in range(args.rows)]
    writing = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.8, top_p=0.95, top_k_logprobs=0)
    # Then an answering batch as the demo's second half runs it: task prompts, greedy, top-20 capture.
    questions = [encode_prompt(teacher.tokenizer, ({"role": "user", "content": seeds[i % len(seeds)]},)) for i in range(args.rows)]
    answering = SamplingParams(max_new_tokens=64, temperature=0.0, top_p=1.0, top_k_logprobs=20)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s); "
          f"{args.rows} rows per batch", flush=True)
    for label, batch, params in (("writing prompts", prompts, writing), ("answering", questions, answering)):
        times: dict[str, list[float]] = {"dynamic": [], "static": []}
        tokens: dict[str, list[list[int]]] = {}
        print(f"{label}: prompts of {min(map(len, batch))}-{max(map(len, batch))} tokens, up to {params.max_new_tokens} new", flush=True)
        for rep in range(args.reps):
            for cache in ("dynamic", "static"):
                start = time.perf_counter()
                rows = generate_batch(teacher.model, teacher.tokenizer, batch, list(range(len(batch))), params,
                                      eos_ids=teacher.eos_ids, pad_id=teacher.pad_id, cache=cache)
                times[cache].append(time.perf_counter() - start)
                written = [r["response_ids"].tolist() for r in rows]
                tokens.setdefault(cache, written)
                print(f"  rep {rep} {cache:8s} {times[cache][-1]:6.2f} s  ({max(map(len, written))} decoding steps, "
                      f"{sum(map(len, written))} tokens written)", flush=True)
        same = sum(a == b for a, b in zip(tokens["dynamic"], tokens["static"]))
        ratio = statistics.median(times["static"]) / statistics.median(times["dynamic"])
        print(f"  {label}: median dynamic {statistics.median(times['dynamic']):.2f} s, static "
              f"{statistics.median(times['static']):.2f} s: static/dynamic = {ratio:.2f}; rows with identical tokens "
              f"{same}/{len(batch)}", flush=True)


if __name__ == "__main__":
    main()
