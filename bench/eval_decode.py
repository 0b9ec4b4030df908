"""Eval's greedy decoding through the HF teacher's `generate_batch` against a plain `model.generate`
greedy loop with a log-softmax capture (what eval used before it shared the teacher's path).

Same prompts, same batches, the two paths taking turns; reports tokens/s of each, their ratio,
whether the tokens are identical, and the largest difference of the captured top-k log-probs.

    python bench/eval_decode.py --model teachers/demo/model --suite demo --rows 256 --reps 3
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def plain_generate(model, tokenizer, prompts, batch_size, max_new_tokens, k):
    """model.generate greedy with a LogitsProcessor keeping log_softmax top-k (the reference)."""
    import torch
    from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

    from distill.eval.generation import eos_and_pad

    eos, pad = eos_and_pad(model, tokenizer)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=pad,
                              num_beams=1, temperature=None, top_p=None, top_k=None)

    class Capture(LogitsProcessor):
        def __init__(self):
            self.steps = []

        def __call__(self, input_ids, scores):
            if k:
                values, ids = torch.topk(torch.log_softmax(scores.float(), -1), k, dim=-1)
                self.steps.append((ids, values))
            return scores

    out = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(batch):
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        capture = Capture()
        with torch.no_grad():
            seq = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                 logits_processor=LogitsProcessorList([capture]))[:, width:].tolist()
        top = torch.stack([v for _, v in capture.steps], 1).numpy() if k else None
        for row, tokens in enumerate(seq):
            end = next((t + 1 for t, tok in enumerate(tokens) if tok in eos), len(tokens))
            out.append((tokens[:end], top[row, :end] if k else None))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "teachers" / "demo" / "model"))
    parser.add_argument("--suite", default="demo")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.eval.generation import generate_greedy
    from distill.eval.scorers import load_suite
    from distill.prompts import encode_prompt

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    suite = load_suite(args.suite, args.rows)
    prompts = [list(encode_prompt(tokenizer, row.messages)) for row in suite.rows]
    prompts.sort(key=len, reverse=True)  # both paths see the same length-sorted batches
    times = {"plain": [], "shared": []}
    results = {}
    for rep in range(args.reps):
        for name in (("plain", "shared") if rep % 2 == 0 else ("shared", "plain")):
            start = time.perf_counter()
            if name == "plain":
                results[name] = plain_generate(model, tokenizer, prompts, args.batch_size, args.max_new_tokens, args.top_k)
            else:
                gens = generate_greedy(model, tokenizer, prompts, batch_size=args.batch_size,
                                       max_new_tokens=args.max_new_tokens, capture_top_k=args.top_k, sort_by_length=False)
                results[name] = [(g.response_ids, g.topk_logprobs) for g in gens]
            times[name].append(time.perf_counter() - start)
    tokens = sum(len(t) for t, _ in results["plain"])
    same = all(a[0] == b[0] for a, b in zip(results["plain"], results["shared"]))
    max_diff = max((float(np.abs(a[1] - b[1]).max()) for a, b in zip(results["plain"], results["shared"])
                    if len(a[0]) and args.top_k), default=0.0)
    median = {k: float(np.median(v)) for k, v in times.items()}
    print(f"## {args.model}, top-{args.top_k} ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)")
    print()
    print(f"{platform.machine()}, {args.threads} torch threads, torch {torch.__version__}; model {Path(args.model).name}, "
          f"{len(prompts)} suite prompts, batch {args.batch_size}, <= {args.max_new_tokens} new tokens, top-{args.top_k} "
          f"captured; {args.reps} interleaved reps; `python bench/eval_decode.py --model {args.model} --rows {args.rows} "
          f"--reps {args.reps} --top-k {args.top_k}`")
    print()
    print("| path | median s | tokens/s |")
    print("| --- | ---: | ---: |")
    for name in ("plain", "shared"):
        print(f"| {name} | {median[name]:.2f} | {tokens / median[name]:.0f} |")
    print()
    print(f"ratio of median times (shared / plain): {median['shared'] / median['plain']:.3f}; "
          f"tokens identical: {same}; largest top-k log-prob difference: {max_diff:.2e}")


if __name__ == "__main__":
    main()
