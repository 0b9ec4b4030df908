"""HTTP teacher client: throughput vs concurrency, and the client's CPU cost per response token.

A local server (tests/teachers/openai_server.py, its own process, no injected faults) answers
like `vllm serve` with k=20 top log-probs per token and a fixed per-request latency (a stand-in
for a GPU server's decode time). The client runs `OpenAITeacher.generate` at concurrency 1, 8
and 64, interleaved (A, B, C, A, B, C, ...), and we report medians and their ratios. The client's
CPU seconds per 1,000 response tokens says how many tokens/s one client core can absorb, i.e.
whether the client could ever be the bottleneck in front of a real 70B server.

    python bench/openai_http_client.py [--rounds 5] [--reps 3] [--latency 0.5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="requests per level = rounds x concurrency")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.5, help="server-side seconds per request")
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args()

    from distill.teachers.base import GenerationRequest, SamplingParams
    from distill.teachers.openai_http import EndpointConfig, OpenAITeacher

    server = subprocess.Popen([sys.executable, "-m", "tests.teachers.openai_server", "0", "2", str(args.latency)],
                              cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        base_url = server.stdout.readline().strip()
        params = SamplingParams(max_new_tokens=args.max_tokens, top_k_logprobs=20)
        results: dict[int, list[tuple[float, float, int]]] = {1: [], 8: [], 64: []}
        for rep in range(args.reps):
            for concurrency in results:
                teacher = OpenAITeacher("bench", "m", None, EndpointConfig(base_url=base_url, served_model="m",
                                                                           concurrency=concurrency), 4096)
                n = args.rounds * concurrency
                requests = [GenerationRequest(f"{rep}-{i}", (1, 2, 3 + i % 300, 3 + i // 300), seed=rep * 100000 + i)
                            for i in range(n)]
                wall0, cpu0 = time.perf_counter(), time.process_time()
                tokens = sum(len(o.response_ids) for o in teacher.generate(requests, params))
                wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
                results[concurrency].append((n / wall, tokens / wall, cpu / tokens * 1e6))
    finally:
        server.terminate()
        server.wait()

    print("# HTTP teacher client: throughput vs concurrency\n")
    print(f"date {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.machine()} {os.cpu_count()} cores; "
          f"Python {platform.python_version()}; shared, noisy machine (ratios measured in one run)")
    print(f"server: local stand-in, {args.latency * 1000:.0f} ms per request, k=20 top log-probs, up to "
          f"{args.max_tokens} tokens; {args.reps} interleaved repetitions, medians\n")
    print("| concurrency | requests/s | response tokens/s | x concurrency 1 | ideal | client CPU ms per 1k tokens |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    base = statistics.median(r[0] for r in results[1])
    for concurrency, rows in results.items():
        rps = statistics.median(r[0] for r in rows)
        tps = statistics.median(r[1] for r in rows)
        cpu = statistics.median(r[2] for r in rows)
        print(f"| {concurrency} | {rps:.1f} | {tps:.0f} | {rps / base:.1f} | {concurrency} | {cpu:.0f} |")
    cpu64 = statistics.median(r[2] for r in results[64])
    print(f"\none client core absorbs ~{1e6 / cpu64:,.0f} response tokens/s with k=20 log-probs "
          f"(client CPU {cpu64:.0f} ms per 1,000 tokens, parsing included)")


if __name__ == "__main__":
    main()
