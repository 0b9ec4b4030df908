"""GPU training throughput and MFU of our KD+CE step for Qwen2.5-0.5B- and 1.5B-shaped students.

Runs only on CUDA (exits with a message otherwise). Random-init students with the real Qwen2.5
shapes (no download), bf16 weights, AdamW, teacher top-20 on every response position, the
trainer's own module (decoder -> response positions -> chunked LM head). Reports tokens/s over
all input tokens and MFU = achieved model FLOPs / peak dense bf16 FLOPs of the device, with model
FLOPs per token = 6 * params + 12 * layers * hidden * seq (attention), the PaLM convention.

    python bench/gpu_throughput.py --peak-tflops 989   # H100/H200 SXM dense bf16
"""

from __future__ import annotations

import argparse
import datetime
import time

SHAPES = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
}


def bench(name: str, shape: dict, args) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from distill.train.student import student_with_loss_cls

    torch.manual_seed(0)
    config = Qwen2Config(**shape, max_position_embeddings=32768, use_cache=False)
    model = Qwen2ForCausalLM(config).to("cuda", dtype=torch.bfloat16)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    wrapper = student_with_loss_cls()(model, {"divergence_name": "forward_kl", "temperature": 1.0,
                                               "beta": 0.5, "alpha": 0.1}, None)
    opt = torch.optim.AdamW(wrapper.parameters(), lr=1e-5, fused=True)
    rows, seq = args.tokens_per_batch // args.seq_len, args.seq_len
    prompt = seq // 4
    input_ids = torch.randint(0, 151000, (rows, seq), device="cuda")
    attention = torch.ones_like(input_ids)
    positions = torch.cat([b * seq + torch.arange(prompt - 1, seq, device="cuda") for b in range(rows)])
    n = positions.numel()
    targets = torch.randint(0, 151000, (n,), device="cuda")
    topk_ids = torch.randint(0, 151000, (n, 20), device="cuda")
    topk_lps = torch.log_softmax(torch.randn(n, 21, device="cuda"), -1)[:, :20].sort(-1, descending=True).values

    def step():
        sums = wrapper(input_ids=input_ids, attention_mask=attention, positions=positions, targets=targets,
                       topk_ids=topk_ids, topk_logprobs=topk_lps, kd_weight=0.5)
        (sums.total / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    elapsed = (time.perf_counter() - t0) / args.steps
    params = sum(p.numel() for p in model.parameters())
    tokens = rows * seq
    flops_per_token = 6 * params + 12 * shape["num_hidden_layers"] * shape["hidden_size"] * seq
    mfu = flops_per_token * tokens / elapsed / (args.peak_tflops * 1e12)
    peak_mem = torch.cuda.max_memory_allocated() / 2**30
    del model, wrapper, opt
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return {"name": name, "params_m": params / 1e6, "step_s": elapsed, "tokens_per_s": tokens / elapsed,
            "mfu": mfu, "peak_gib": peak_mem}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens-per-batch", type=int, default=16384)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="device peak dense bf16 TFLOP/s")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--only", choices=sorted(SHAPES))
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark runs on a GPU only")
    rows = [bench(name, shape, args) for name, shape in SHAPES.items() if args.only in (None, name)]
    print("# GPU throughput: KD (forward KL, top-20) + CE training step, bf16, AdamW\n")
    print(f"{datetime.date.today()} · {torch.cuda.get_device_name()} · torch {torch.__version__} · "
          f"{args.tokens_per_batch} tokens/step ({args.seq_len}-token rows, 3/4 response) · "
          f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'} · peak {args.peak_tflops} TFLOP/s\n")
    print("| student shape | params (M) | step s | tokens/s | MFU | peak GiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['params_m']:.0f} | {r['step_s']:.3f} | {r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | {r['peak_gib']:.1f} |")


if __name__ == "__main__":
    main()
