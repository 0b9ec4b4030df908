"""Tokens/s of candidate demo teacher and student shapes, timed in turn with `model.generate`.

    python bench/speed_shapes.py [--threads 1]

Random-weight Qwen2 models (speed does not depend on the weights when the number of new tokens
is fixed): every shape generates exactly ``--new-tokens`` tokens after a ``--prompt-tokens``
prompt, at batch 1 (8 requests per timing) and at batch 64, the shapes taking turns over 5
rounds (order flipped each round), median per shape. Prints tokens/s and each student shape's
ratio to each teacher shape.
"""

from __future__ import annotations

import argparse
import time

SHAPES = {  # name: (layers, hidden, intermediate, heads, kv heads)
    "T8x96": (8, 96, 256, 4, 2), "T10x96": (10, 96, 256, 4, 2), "T12x88": (12, 88, 224, 4, 2),
    "S2x64h8": (2, 64, 192, 8, 8), "S2x64h4": (2, 64, 192, 4, 4), "S2x64h2": (2, 64, 192, 2, 2),
    "S2x72h4kv2": (2, 72, 192, 4, 2),
}


def build(layers: int, hidden: int, intermediate: int, heads: int, kv: int):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=1024, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompt-tokens", type=int, default=56)
    parser.add_argument("--new-tokens", type=int, default=26)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    models = {name: build(*shape) for name, shape in SHAPES.items()}
    for name, model in models.items():
        print(f"{name}: {sum(p.numel() for p in model.parameters()):,} parameters")
    prompt = torch.randint(3, 1000, (1, args.prompt_tokens))

    @torch.no_grad()
    def generate(model, batch: int) -> None:
        ids = prompt.repeat(batch, 1)
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                       min_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)

    for batch in (1, 64):
        rates: dict[str, list[float]] = {name: [] for name in models}
        reps = 8 if batch == 1 else 1
        for r in range(args.rounds):
            for name in list(models) if r % 2 == 0 else list(models)[::-1]:
                generate(models[name], batch)  # warm-up
                start = time.perf_counter()
                for _ in range(reps):
                    generate(models[name], batch)
                rates[name].append(args.new_tokens * batch * reps / (time.perf_counter() - start))
        median = {name: sorted(v)[len(v) // 2] for name, v in rates.items()}
        print(f"batch {batch}: tokens/s " + ", ".join(f"{n} {v:.0f}" for n, v in median.items()))
        for student in (n for n in median if n.startswith("S")):
            print(f"  {student} / teacher: " + ", ".join(
                f"{t} {median[student] / median[t]:.2f}x" for t in median if t.startswith("T")))


if __name__ == "__main__":
    main()
