"""What `distill eval` costs on CPU for demo-sized models, and what CPU threads do to its timings.

Part A runs `distill.eval.run` (teacher with agreement/KL capture, student, speed) on the
demo suite with randomly initialised models of the demo teacher's and demo student's shapes
(teachers/demo/train_teacher.py MODEL, students/demo.yaml). Random models never emit EOS, so every
response runs to --max-new-tokens: the worst case for the demo's eval step.

Part B times greedy decoding (batch 1, tokens/s) of the teacher-shaped model with 1 and with 2
torch threads, interleaved (1, 2, 1, 2, ...), and reports the ratio of medians: on a CPU shared
with other jobs, oversubscribed OpenMP threads can make 2 threads much slower than 1.

    python bench/eval_cost.py [--rows 600] [--max-new-tokens 32] [--batch-size 64] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEACHER_SHAPE = dict(hidden_size=96, intermediate_size=256, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2)
STUDENT_SHAPE = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def build(out: Path, tokenizer_dir: Path, shape: dict) -> Path:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    config = Qwen2Config(vocab_size=-(-len(tok) // 64) * 64, max_position_embeddings=1024, tie_word_embeddings=True,
                         eos_token_id=eos, pad_token_id=tok.pad_token_id, **shape)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()

    import torch

    from distill.eval import EvalConfig, run
    from distill.eval.generation import generate_greedy
    from distill.eval.models import load_model
    from distill.prompts import encode_prompt
    from distill.eval.scorers import load_suite

    tmp = Path(tempfile.mkdtemp(prefix="eval_cost_"))
    tokenizer_dir = ROOT / "teachers" / "demo" / "model"
    if not (tokenizer_dir / "tokenizer.json").is_file():
        from tests.tiny import make_tokenizer

        tokenizer_dir = tmp / "tok"
        make_tokenizer(tokenizer_dir)
    teacher = build(tmp / "teacher", tokenizer_dir, TEACHER_SHAPE)
    student = build(tmp / "student", tokenizer_dir, STUDENT_SHAPE)
    suite = "demo" if (ROOT / "eval" / "demo.jsonl").is_file() else "example"

    print(f"# distill eval cost on CPU ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start; "
          f"torch {torch.__version__}")
    print(f"suite {suite}, {args.rows} rows, max_new_tokens {args.max_new_tokens}, batch size {args.batch_size}; "
          "random demo-shaped models (no EOS: every response runs to the limit)\n")

    print("## A. one `distill eval` run, 1 torch thread\n")
    torch.set_num_threads(1)
    start = time.perf_counter()
    report = run(EvalConfig(
        models=(f"teacher={teacher}", f"student={student}"), suite=suite, out=str(tmp / "out"), teacher="teacher",
        limit=args.rows, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, speed_prompts=16,
    ))
    total = time.perf_counter() - start
    print("\n| model | params | eval seconds | tok/s b=1 | tok/s b=%d |" % args.batch_size)
    print("|---|---|---|---|---|")
    for name, e in report["models"].items():
        print(f"| {name} | {e['params']:,} | {e['eval_seconds']:.1f} | {e['tokens_per_s']:.1f} | {e['tokens_per_s_batch']:.1f} |")
    t, s = report["models"]["teacher"], report["models"]["student"]
    print(f"\ntotal {total:.1f} s; student/teacher tokens/s: {s['tokens_per_s'] / t['tokens_per_s']:.2f}x at batch 1, "
          f"{s['tokens_per_s_batch'] / t['tokens_per_s_batch']:.2f}x at batch {args.batch_size}\n")

    print("## B. greedy tokens/s at batch 1, 1 vs 2 torch threads (interleaved)\n")
    model, tok = load_model(str(teacher), torch.device("cpu"), torch.float32)
    rows = load_suite(suite, limit=4).rows
    prompts = [encode_prompt(tok, row.messages) for row in rows]
    rates: dict[int, list[float]] = {1: [], 2: []}
    for rep in range(args.reps + 1):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            begin = time.perf_counter()
            out = generate_greedy(model, tok, prompts[:1], batch_size=1, max_new_tokens=args.max_new_tokens)
            elapsed = time.perf_counter() - begin
            if rep > 0:  # rep 0 is the warm-up
                rates[threads].append(len(out[0].response_ids) / elapsed)
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print("| threads | median tok/s | runs |")
    print("|---|---|---|")
    print(f"| 1 | {one:.1f} | {', '.join(f'{r:.1f}' for r in rates[1])} |")
    print(f"| 2 | {two:.1f} | {', '.join(f'{r:.1f}' for r in rates[2])} |")
    print(f"\n2 threads / 1 thread: {two / one:.2f}x; load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
