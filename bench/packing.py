"""Packing vs length-grouped padding: training tokens/s and padding share on one epoch.

A synthetic corpus with a chat-like spread of lengths (log-normal prompts, median 60 tokens, and
responses, median 200, capped by --max-seq-len) is planned both ways by the trainer's own code
(``train_data.plan_epoch`` with and without ``packing``) and trained for one full epoch per
repetition: the trainer's module (decoder -> response positions -> chunked LM head, forward KL on
teacher top-k + CE), backward, AdamW step per micro-batch. Modes alternate (padded, packed,
padded, packed, ...) after a warm-up, and the ratio of median tokens/s is reported, so machine
noise hits both. Tokens/s counts real (non-pad) input tokens; both modes train the same rows.

    python bench/packing.py [--reps 3] [--rows 200]

Runs on CUDA (bf16) when present, else CPU fp32.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import numpy as np


def synthetic_rows(n: int, vocab: int, top_k: int, max_seq_len: int, seed: int):
    from distill.corpus import CorpusRow

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        p = int(np.clip(rng.lognormal(np.log(60), 0.8), 8, max_seq_len // 2))
        t = int(np.clip(rng.lognormal(np.log(200), 0.9), 4, max_seq_len - p + 1))
        lps = np.sort(rng.uniform(-8, -0.1, size=(t, top_k)).astype(np.float32), axis=1)[:, ::-1]
        rows.append(CorpusRow(
            id=f"r{i}", prompt_ids=rng.integers(0, vocab, p).astype(np.int32),
            response_ids=rng.integers(0, vocab, t).astype(np.int32),
            topk_ids=rng.integers(0, vocab, (t, top_k)).astype(np.int32), topk_logprobs=np.ascontiguousarray(lps),
            sampled_logprobs=lps[:, 0].copy(), finish_reason="stop", prompt_text="", response_text="",
        ))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3, help="timed epochs per mode (after one warm-up step each)")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--row-group", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--max-seq-len", type=int, default=1024)
    parser.add_argument("--tokens-per-batch", type=int, default=2048)
    parser.add_argument("--attn", default="sdpa")
    args = parser.parse_args()

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from distill.train import data as train_data
    from distill.train.student import student_with_loss_cls

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                         num_key_value_heads=max(1, args.hidden // 128), tie_word_embeddings=True, use_cache=False)
    model = Qwen2ForCausalLM._from_config(config, attn_implementation=args.attn, dtype=dtype).to(device)
    options = {"divergence_name": "forward_kl", "temperature": 1.0, "beta": 0.5, "alpha": 0.1}
    wrapper = student_with_loss_cls()(model, options, None, flatten_packed=args.attn.startswith("flash_attention"))
    optimizer = torch.optim.AdamW(wrapper.parameters(), lr=1e-5)

    rows = synthetic_rows(args.rows, args.vocab, args.top_k, args.max_seq_len, seed=0)
    lengths = np.asarray([len(r.prompt_ids) + len(r.response_ids) for r in rows], dtype=np.int64)
    offsets = list(range(0, args.rows, args.row_group))
    stats = train_data.VocabStats(vocab_size=args.vocab)
    kwargs = {"max_seq_len": args.max_seq_len, "pad_id": 0, "top_k": args.top_k, "stats": stats, "log": print}
    modes = {}
    for packing in (False, True):
        spec = train_data.BatchSpec(max_seq_len=args.max_seq_len, tokens_per_batch=args.tokens_per_batch, batch_size=None,
                                    grad_accum=1, world_size=1, seed=0, packing=packing)
        plan = train_data.plan_epoch(lengths, offsets, spec, 0)
        if packing:
            batches = [train_data.collate_packed([[rows[i] for i in seq] for seq in b], **kwargs) for b in plan]
        else:
            batches = [train_data.collate([rows[i] for i in b], **kwargs) for b in plan]
        modes["packed" if packing else "padded"] = batches

    def step(batch):
        inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()
                  if k not in ("num_tokens", "num_input_tokens")}
        sums = wrapper(**inputs, kd_weight=0.5)
        (sums.total / max(batch["num_tokens"], 1)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for batches in modes.values():  # warm-up (allocator, kernels)
        step(batches[0])
    sync()
    tokens_per_s: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(args.reps):
        for name, batches in modes.items():  # interleaved: padded, packed, padded, packed, ...
            sync()
            t0 = time.perf_counter()
            for batch in batches:
                step(batch)
            sync()
            tokens_per_s[name].append(sum(b["num_input_tokens"] for b in batches) / (time.perf_counter() - t0))

    threads = torch.get_num_threads()
    where = torch.cuda.get_device_name() + " bf16" if cuda else f"CPU fp32, {threads} thread(s)"
    print("# Packing vs length-grouped padding\n")
    print(f"{datetime.date.today()} · {platform.machine()} {os.cpu_count()} cores · torch {torch.__version__} {where} · "
          f"attention {args.attn} · interleaved padded/packed, {args.reps} timed epochs each after 1 warm-up step\n")
    print(f"Student: Qwen2 hidden {args.hidden}, {args.layers} layers, vocab {args.vocab:,} (tied), "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params; KD (forward KL, top-{args.top_k}) + CE.")
    row_tokens = lengths - 1
    print(f"Corpus: {args.rows} rows, input tokens per row median {int(np.median(row_tokens))}, "
          f"p10 {int(np.percentile(row_tokens, 10))}, p90 {int(np.percentile(row_tokens, 90))}, max {int(row_tokens.max())} "
          f"(log-normal prompts and responses); --max-seq-len {args.max_seq_len}, --tokens-per-batch {args.tokens_per_batch}.\n")
    print("| batching | micro-batches | real tokens | tensor slots | padding share | tokens/s (median) | min | max |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, batches in modes.items():
        real = sum(b["num_input_tokens"] for b in batches)
        slots = sum(b["input_ids"].numel() for b in batches)
        t = tokens_per_s[name]
        label = "length-grouped, padded" if name == "padded" else "packed (position_ids restart per row)"
        print(f"| {label} | {len(batches)} | {real:,} | {slots:,} | {1 - real / slots:.1%} | {statistics.median(t):,.0f} | "
              f"{min(t):,.0f} | {max(t):,.0f} |")
    ratio = statistics.median(tokens_per_s["packed"]) / statistics.median(tokens_per_s["padded"])
    print(f"\nratio of median tokens/s (packed / padded): {ratio:.3f}")


if __name__ == "__main__":
    main()
