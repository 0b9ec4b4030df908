"""Step time: our KD+CE training step vs a plain SFT step on the same student and batch (CPU).

Plain SFT = the model's own forward with ``labels`` (full logits over every position, HF's CE),
backward, AdamW step. Ours = the trainer's module (decoder -> response positions only -> chunked
LM head with forward KL on teacher top-20 + CE), backward, AdamW step. A and B alternate
(A, B, A, B, ...) after warm-up and the ratio of medians is reported, so machine noise hits both.

    python bench/step_time.py [--reps 12]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--response", type=int, default=192)
    parser.add_argument("--top-k", type=int, default=20)
    args = parser.parse_args()

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from distill.train.student import student_with_loss_cls

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                         num_key_value_heads=max(1, args.hidden // 128), tie_word_embeddings=True, use_cache=False)
    sft_model = Qwen2ForCausalLM(config)
    kd_model = Qwen2ForCausalLM(config)
    kd_model.load_state_dict(sft_model.state_dict())
    wrapper = student_with_loss_cls()(kd_model, {"divergence_name": "forward_kl", "temperature": 1.0,
                                                  "beta": 0.5, "alpha": 0.1}, None)
    opt_sft = torch.optim.AdamW(sft_model.parameters(), lr=1e-5)
    opt_kd = torch.optim.AdamW(wrapper.parameters(), lr=1e-5)

    length = args.prompt + args.response - 1
    input_ids = torch.randint(0, args.vocab, (args.rows, length))
    attention = torch.ones_like(input_ids)
    labels = input_ids.clone()
    labels[:, : args.prompt] = -100  # HF shifts labels: position p predicts token p + 1
    positions = torch.cat([b * length + torch.arange(args.prompt - 1, length) for b in range(args.rows)])
    targets = torch.cat([torch.cat([input_ids[b, args.prompt:], input_ids[b, -1:]]) for b in range(args.rows)])
    n = positions.numel()
    topk_ids = torch.randint(0, args.vocab, (n, args.top_k))
    topk_lps = torch.log_softmax(torch.randn(n, args.top_k + 1), -1)[:, : args.top_k].sort(-1, descending=True).values

    def sft_step():
        loss = sft_model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        opt_sft.step()
        opt_sft.zero_grad(set_to_none=True)

    def kd_step():
        sums = wrapper(input_ids=input_ids, attention_mask=attention, positions=positions, targets=targets,
                       topk_ids=topk_ids, topk_logprobs=topk_lps, kd_weight=0.5)
        (sums.total / n).backward()
        opt_kd.step()
        opt_kd.zero_grad(set_to_none=True)

    for _ in range(2):
        sft_step()
        kd_step()
    times = {"sft": [], "kd": []}
    for _ in range(args.reps):
        for name, fn in (("sft", sft_step), ("kd", kd_step)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    sft, kd = statistics.median(times["sft"]), statistics.median(times["kd"])
    params = sum(p.numel() for p in sft_model.parameters())
    print("# Step time: KD+CE step vs plain SFT step (same student, same batch)\n")
    print(f"{datetime.date.today()} · {platform.machine()} {os.cpu_count()} cores · torch {torch.__version__} fp32 CPU, "
          f"{torch.get_num_threads()} threads · interleaved A/B, {args.reps} reps each after 2 warm-ups\n")
    print(f"Student: Qwen2 hidden {args.hidden}, {args.layers} layers, vocab {args.vocab:,} (tied), {params / 1e6:.1f} M params. "
          f"Batch: {args.rows} rows x ({args.prompt} prompt + {args.response} response) tokens; teacher top-{args.top_k}.\n")
    print("| step | median s | min s | max s |")
    print("|---|---:|---:|---:|")
    for name, label in (("sft", "plain SFT (HF CE over full logits)"), ("kd", "ours: KD (forward KL) + CE, chunked head")):
        print(f"| {label} | {statistics.median(times[name]):.4f} | {min(times[name]):.4f} | {max(times[name]):.4f} |")
    ratio = kd / sft
    print(f"\nratio of medians (ours / SFT): {ratio:.3f} (target <= 1.10): {'PASS' if ratio <= 1.10 else 'FAIL'}")


if __name__ == "__main__":
    main()
