"""Top-k capture overhead: `distill`'s HF generation (raw top-k + per-row seeds) vs plain
`model.generate` sampling, same model, prompts and settings. A and B interleaved; ratio of medians.

    python bench/capture_overhead.py                      # Qwen2.5-0.5B-shaped random model, vocab 151936
    python bench/capture_overhead.py --shape tiny         # 2-layer, 64-wide: vocab work dominates (worst case)
    python bench/capture_overhead.py --shape qwen0.5b-4layers --batch 8 --prompt-len 16 --new-tokens 24 --reps 2

Runs on CUDA (bf16) when present, else CPU (fp32). Prints a Markdown report; --out saves it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import time

SHAPES = {
    # layer shapes of Qwen2.5-0.5B (random weights: timing does not depend on their values)
    "qwen0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                     num_key_value_heads=2),
    # Qwen2.5-0.5B widths, 4 layers: the same vocabulary work per token, a quarter of the depth
    "qwen0.5b-4layers": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=4, num_attention_heads=14,
                             num_key_value_heads=2),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen0.5b")
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--settings", default="0.7:1.0,1.0:0.9", help="temperature:top_p pairs")
    parser.add_argument("--out", help="write the Markdown report here too")
    args = parser.parse_args()

    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from distill.teachers.base import SamplingParams
    from distill.teachers.hf import _left_pad, generate_batch, pick_device

    device, dtype = pick_device()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=args.vocab, max_position_embeddings=4096, tie_word_embeddings=True, **SHAPES[args.shape])
    model = Qwen2ForCausalLM(config).to(device=device, dtype=dtype).eval()
    eos, pad = [args.vocab - 1], args.vocab - 1
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, args.vocab - 2, (args.prompt_len - (i % 4),), generator=gen).tolist() for i in range(args.batch)]
    input_ids, attention_mask = _left_pad(prompts, pad, device)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def plain(temperature: float, top_p: float) -> int:
        cfg = GenerationConfig(max_new_tokens=args.new_tokens, do_sample=True, temperature=temperature, top_p=top_p,
                               top_k=0, eos_token_id=eos, pad_token_id=pad)
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=cfg)
        return int(out.shape[1] - input_ids.shape[1]) * args.batch

    def capture(temperature: float, top_p: float) -> int:
        params = SamplingParams(max_new_tokens=args.new_tokens, temperature=temperature, top_p=top_p, top_k_logprobs=args.top_k)
        rows = generate_batch(model, None, prompts, list(range(args.batch)), params, eos_ids=eos, pad_id=pad)
        return sum(len(r["response_ids"]) for r in rows)

    lines = [
        "# Top-k capture overhead",
        "",
        f"- date: {dt.date.today().isoformat()}; machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{platform.platform()}; torch {torch.__version__}; device {device} ({str(dtype).replace('torch.', '')})"
        + (f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""),
        f"- model: random Qwen2, shape `{args.shape}` {SHAPES[args.shape]}, vocab {args.vocab}",
        f"- batch {args.batch}, prompts {args.prompt_len - 3}-{args.prompt_len} tokens (left-padded), "
        f"{args.new_tokens} new tokens, capture top-{args.top_k}; {args.reps} interleaved repetitions after one warm-up each",
        "- A = plain `model.generate(do_sample=True, temperature, top_p)`; B = `distill.teachers.hf.generate_batch`"
        " (raw top-k + sampled log-prob captured at every step, per-row seeded sampling)",
        "",
        "| temperature | top_p | A median s | B median s | tokens A / B | B / A |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for setting in args.settings.split(","):
        temperature, top_p = (float(x) for x in setting.split(":"))
        times: dict[str, list[float]] = {"A": [], "B": []}
        tokens = {}
        for rep in range(args.reps + 1):
            for name, fn in (("A", plain), ("B", capture)):
                sync()
                start = time.perf_counter()
                tokens[name] = fn(temperature, top_p)
                sync()
                if rep:  # rep 0 is the warm-up
                    times[name].append(time.perf_counter() - start)
        a, b = statistics.median(times["A"]), statistics.median(times["B"])
        lines.append(f"| {temperature} | {top_p} | {a:.3f} | {b:.3f} | {tokens['A']} / {tokens['B']} | **{b / a:.3f}** |")
        print(lines[-1], flush=True)
    lines += ["", "Raw times (s): see the table's medians; every repetition generated the full "
              f"{args.new_tokens} tokens per row unless the token counts say otherwise.", ""]
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(report)


if __name__ == "__main__":
    main()
