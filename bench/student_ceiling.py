"""How well can the demo student's shape learn the demo task from clean data? The ceiling a
perfect teacher corpus would allow, to tell the student's limits from the corpus's.

    python bench/student_ceiling.py --problems 2000 4000 --heads 8 4

Per setting: the student shape read from students/demo.yaml (2 layers x 64), with the given
number of heads and KV heads, random init, SFT on N generator-made problems with their worked answers (the
task's own stream, disjoint from seeds and eval suite: every prompt coherent, every answer
right), 2,000 steps of 16 rows, cosine 1e-2 from a 50-step warmup, as the recipe; then greedy
accuracy on the first ``--eval`` problems of the demo eval suite. One torch thread.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "data" / "demo"))

import make_data  # noqa: E402
import task  # noqa: E402
import trainlib  # noqa: E402


def ceiling(tokenizer, problems: int, heads: int, steps: int, evals: list[task.Problem]) -> tuple[float, float]:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    held_out = {p.prompt for p in make_data.seed_problems()} | {p.prompt for p in make_data.eval_problems()}
    train = make_data.validation_problems(problems, exclude=held_out)
    examples = [trainlib.encode_example(tokenizer, p.prompt, p.response) for p in train]
    import yaml

    shape = {k: v for k, v in yaml.safe_load((ROOT / "students" / "demo.yaml").read_text())["config"].items()
             if k != "model_type"}
    shape.update(num_attention_heads=heads, num_key_value_heads=heads)
    config = Qwen2Config(vocab_size=-(-len(tokenizer) // 64) * 64, bos_token_id=None,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    start = time.time()
    trainlib.train(model, examples, steps=steps, batch_size=16, lr=1e-2, pad_id=tokenizer.pad_token_id, seed=0,
                   warmup=50, log_every=500)
    seconds = time.time() - start
    outputs = trainlib.greedy(model, tokenizer, [p.prompt for p in evals])
    return sum(task.extract_answer(o) == p.answer for o, p in zip(outputs, evals)) / len(evals), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, nargs="+", default=[2000, 4000])
    parser.add_argument("--heads", type=int, nargs="+", default=[8])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--eval", type=int, default=300, help="first N prompts of eval/demo.jsonl")
    parser.add_argument("--tokenizer", default=str(ROOT / "teachers" / "demo" / "model"))
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    evals = make_data.eval_problems()[: args.eval]
    print("| problems | heads | accuracy | training s |\n| --- | --- | --- | --- |", flush=True)
    for heads in args.heads:
        for problems in args.problems:
            accuracy, seconds = ceiling(tokenizer, problems, heads, args.steps, evals)
            print(f"| {problems} | {heads} | {accuracy:.3f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
