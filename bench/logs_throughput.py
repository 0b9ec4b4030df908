"""`distill logs` at scale: N OpenAI-format log records (about 1 KB each: a system prompt, a user
prompt of 40-120 words, a response, metadata; 3% failed requests, 8% retries of an earlier
question, 6% continued chats, 2% with an e-mail or phone pasted in) -> prompts, in a subprocess
whose wall time and peak RSS are measured.

    python bench/logs_throughput.py --records 1000000 --workdir /tmp/logs-bench
    python bench/logs_throughput.py --records 1000000 --workdir /tmp/logs-bench --reuse -- --near-dup-threshold 0

Arguments after ``--`` go to `distill logs`. Prints records/s, peak RSS and the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

WORDS = ("account billing invoice refund order shipping delivery password login error screen device update install "
         "network router printer battery warranty subscription plan upgrade cancel payment card address email phone "
         "report export import dashboard chart query database backup restore permission admin user team project "
         "schedule meeting calendar reminder travel booking hotel flight train weather recipe dinner budget tax").split()
VERBS = "fix explain reset change find cancel update compare summarize draft translate plan estimate check".split()


def make_prompt(rng: random.Random) -> str:
    length = rng.randint(40, 120)
    body = " ".join(rng.choice(WORDS) for _ in range(length))
    return f"How do I {rng.choice(VERBS)} my {rng.choice(WORDS)}? Details: {body}."


def write_logs(path: Path, records: int, seed: int = 0) -> float:
    rng = random.Random(seed)
    started = time.perf_counter()
    recent: list[str] = []
    with path.open("w", encoding="utf-8") as handle:
        for i in range(records):
            r = rng.random()
            if r < 0.08 and recent:
                prompt = rng.choice(recent)  # a retry of an earlier question
            else:
                prompt = make_prompt(rng)
                if rng.random() < 0.02:
                    prompt += rng.choice([" Reach me at someone.%d@example.com." % i, " Call +1 212-555-%04d." % (i % 10000)])
                recent = (recent + [prompt])[-1000:]
            messages = [{"role": "system", "content": "You are the support assistant of Example Corp. Be concise."},
                        {"role": "user", "content": prompt}]
            if rng.random() < 0.06:
                messages += [{"role": "assistant", "content": "Could you tell me which device you use?"},
                             {"role": "user", "content": f"It is the {rng.choice(WORDS)} model {rng.randint(1, 99)}."}]
            failed = rng.random() < 0.03
            record = {
                "request_id": f"chatcmpl-{i:08d}", "timestamp": 1793000000 + i, "status_code": 500 if failed else 200,
                "request": {"model": "gpt-4o-2024-08-06", "messages": messages, "temperature": 0.3, "max_tokens": 400},
                "response": {"error": {"message": "internal"}} if failed else {
                    "id": f"chatcmpl-{i:08d}", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {
                        "role": "assistant", "content": " ".join(rng.choice(WORDS) for _ in range(60))}}],
                    "usage": {"prompt_tokens": 150, "completion_tokens": 80, "total_tokens": 230}},
                "metadata": {"app": "support-bot", "env": "prod", "region": rng.choice(["us", "eu"]),
                             "conversation_id": f"c{i}"},
            }
            handle.write(json.dumps(record) + "\n")
    return time.perf_counter() - started


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/logs-bench"))
    parser.add_argument("--reuse", action="store_true", help="reuse the log file of an earlier run")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    log = args.workdir / f"gateway-{args.records}.jsonl"
    if not (args.reuse and log.is_file()):
        took = write_logs(log, args.records)
        print(f"wrote {log}: {args.records} records, {log.stat().st_size / 1e9:.2f} GB in {took:.0f} s")
    out = args.workdir / "prompts"
    cmd = [sys.executable, "-m", "distill", "logs", "--logs", str(log), "--out", str(out), "--no-progress", *extra]
    print("$ " + " ".join(cmd))
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(done.stderr[-3000:])
    if done.returncode != 0:
        raise SystemExit(done.returncode)
    summary = json.loads((out / "logs.json").read_text())
    print(json.dumps({"records": summary["records_read"], "accepted": summary["accepted"], "rejected": summary["rejected"],
                      "wall_s": round(wall, 1), "records_per_s": round(summary["records_read"] / wall),
                      "peak_rss_mb": round(peak_mb), "log_gb": round(log.stat().st_size / 1e9, 2), "args": extra}, indent=2))


if __name__ == "__main__":
    main()
