"""Peak memory of the KD+CE loss (forward + backward): chunked LM head vs the naive path.

Setting of issue 3: V = 151,936 (Qwen2.5 <= 3B), hidden 896 (0.5B), 4,096 response tokens,
top-k 20, fp32, CPU. Each measurement runs in a fresh process; peak memory is the growth of the
process' peak RSS over its RSS just before the loss, minus the LM-head gradient (V x H fp32,
which every method must hold). The naive path is full logits -> log_softmax -> (k+1)-bin KL +
CE -> backward; ours is ``distill.losses.chunked_head_loss``. Ours is also measured at 2V to show
the growth stays within one chunk's logits.

    python bench/loss_memory.py            # prints a markdown table
    python bench/loss_memory.py --skip-naive
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

TOKENS, HIDDEN, TOP_K = 4096, 896, 20


def child(method: str, vocab: int) -> dict:
    import resource

    import torch

    from distill import losses

    torch.manual_seed(0)
    # allocate in place (no temporaries) so the pre-loss peak equals the pre-loss footprint
    weight = torch.empty(vocab, HIDDEN).normal_(0, 0.02)
    hidden = torch.empty(TOKENS, HIDDEN).normal_().requires_grad_(True)
    targets = torch.randint(0, vocab, (TOKENS,))
    topk_ids = torch.randint(0, vocab, (TOKENS, TOP_K))
    topk_lps = torch.log_softmax(torch.randn(TOKENS, TOP_K + 1), -1)[:, :TOP_K].sort(-1, descending=True).values
    head = torch.nn.Linear(HIDDEN, vocab, bias=False, device="meta")  # no throw-away V x H init
    head.weight = torch.nn.Parameter(weight.detach(), requires_grad=True)
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if method == "naive":
        logits = hidden @ head.weight.t()
        sums = losses.kd_ce_sums(logits, targets, topk_ids, topk_lps, kd_weight=0.5)
    else:
        sums = losses.chunked_head_loss(hidden, head, targets, topk_ids, topk_lps, kd_weight=0.5)
    (sums.total / TOKENS).backward()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    grad_bytes = vocab * HIDDEN * 4
    return {
        "method": method, "vocab": vocab, "loss": float(sums.total) / TOKENS,
        "peak_mib": (peak_kb - before_kb) / 1024 - grad_bytes / 2**20,
        "chunk_rows": losses.chunk_rows(vocab),
        "chunk_logits_mib": losses.chunk_rows(vocab) * vocab * 4 / 2**20,
        "full_logits_mib": TOKENS * vocab * 4 / 2**20,
    }


def measure(method: str, vocab: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    out = subprocess.run([sys.executable, __file__, "--child", method, str(vocab)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "VOCAB"), help=argparse.SUPPRESS)
    parser.add_argument("--skip-naive", action="store_true", help="only our path (the naive one needs ~10 GB)")
    parser.add_argument("--vocab", type=int, default=151936)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return
    rows = []
    if not args.skip_naive:
        rows.append(measure("naive", args.vocab))
    rows.append(measure("chunked", args.vocab))
    rows.append(measure("chunked", 2 * args.vocab))
    print(f"# Loss memory: KD (forward KL, top-{TOP_K} + tail) + CE, forward + backward\n")
    print(f"{datetime.date.today()} · {platform.machine()} {os.cpu_count()} cores · torch fp32 CPU · "
          f"{TOKENS} response tokens · hidden {HIDDEN}\n")
    print("Peak = growth of peak RSS during the loss, minus the V x H fp32 LM-head gradient.\n")
    print("| method | V | peak MiB | full logits MiB | one chunk's logits MiB (rows) | loss |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['vocab']:,} | {r['peak_mib']:.0f} | {r['full_logits_mib']:.0f} | "
              f"{r['chunk_logits_mib']:.0f} ({r['chunk_rows']}) | {r['loss']:.5f} |")
    ours, ours2 = rows[-2], rows[-1]
    print()
    if not args.skip_naive:
        naive = rows[0]
        ratio = ours["peak_mib"] / naive["peak_mib"]
        print(f"- ours / naive at V={args.vocab:,}: {ratio:.3f} (target <= 0.10): {'PASS' if ratio <= 0.10 else 'FAIL'}")
        print(f"- same loss value: naive {naive['loss']:.6f} vs ours {ours['loss']:.6f}")
    growth = ours2["peak_mib"] - ours["peak_mib"]
    print(f"- ours at 2V minus ours at V: {growth:.0f} MiB; one chunk's logits at 2V: {ours2['chunk_logits_mib']:.0f} MiB "
          f"(target: growth <= one chunk): {'PASS' if growth <= ours2['chunk_logits_mib'] else 'FAIL'}")


if __name__ == "__main__":
    main()
