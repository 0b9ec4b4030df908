"""Write an OpenAI-format request log of the demo task, as an application's gateway would have
logged a week of traffic to a large model: what `distill logs` reads.

    python scripts/demo_logs.py --out runs/logs-demo/gateway.jsonl.gz --records 2000
    distill logs --logs runs/logs-demo/gateway.jsonl.gz --out runs/logs-demo/prompts --decontaminate demo
    distill generate --teacher demo --prompts runs/logs-demo/prompts/prompts.jsonl --out runs/logs-demo/corpus --top-k 20
    distill train --student demo --corpus runs/logs-demo/corpus --out runs/logs-demo/student --max-steps 300

The traffic: demo-task word problems (none of them in the demo eval suite, though the log also
carries a few suite prompts that decontamination must catch), answered by the logged model with
the worked answer; about 4% failed requests; some users retrying the same question; a share of
chats continued with a second question (the app logs the whole history each time); a few prompts
with an e-mail address or phone number pasted in; request metadata (app, env, user tier); gzip.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gzip
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "data" / "demo"))

import task  # noqa: E402  (data/demo/task.py: the demo task's generator)


def _record(rid: str, messages: list[dict], answer: str, when: _dt.datetime, metadata: dict, error: bool) -> dict:
    body = {"model": "big-model-2026-10", "messages": messages, "temperature": 0.0, "max_tokens": 256}
    response = ({"error": {"message": "upstream overloaded", "type": "server_error"}} if error else
                {"id": rid, "object": "chat.completion", "model": "big-model-2026-10",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]})
    return {"request_id": rid, "timestamp": when.isoformat().replace("+00:00", "Z"), "request": body, "response": response,
            "status_code": 503 if error else 200, "metadata": metadata}


def write_log(out: Path, records: int, seed: int = 0) -> dict[str, int]:
    rng = random.Random(seed)
    suite = [json.loads(line) for line in (ROOT / "eval" / "demo.jsonl").read_text().splitlines() if line.strip()]
    pool = task.problems(seed + 1000, records, exclude={s["prompt"] for s in suite})
    start = _dt.datetime(2026, 11, 23, tzinfo=_dt.timezone.utc)
    counts = {"records": 0, "errors": 0, "retries": 0, "continued": 0, "pii": 0, "suite": 0}
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(out, "wt", encoding="utf-8") if out.suffix == ".gz" else out.open("w", encoding="utf-8") as handle:
        i = 0
        while counts["records"] < records:
            problem = pool[i % len(pool)]
            i += 1
            when = start + _dt.timedelta(seconds=rng.randrange(7 * 86400))
            metadata = {"app": "homework-helper", "env": "prod" if rng.random() < 0.9 else "staging",
                        "tier": rng.choice(["free", "pro"]), "conversation_id": f"conv-{i}"}
            prompt = problem.prompt
            if rng.random() < 0.01:
                prompt = rng.choice(suite)["prompt"]
                counts["suite"] += 1
            if rng.random() < 0.03:
                prompt += rng.choice([" You can email me at kid.learner@example.org.", " Text me at +1 415-555-0188."])
                counts["pii"] += 1
            messages = [{"role": "system", "content": "You are a patient math tutor."}, {"role": "user", "content": prompt}]
            error = rng.random() < 0.04
            handle.write(json.dumps(_record(f"req-{i}", messages, problem.response, when, metadata, error)) + "\n")
            counts["records"] += 1
            counts["errors"] += error
            if rng.random() < 0.05:  # the user sends the same question again
                handle.write(json.dumps(_record(f"req-{i}-again", messages, problem.response,
                                                when + _dt.timedelta(seconds=30), metadata, False)) + "\n")
                counts["records"] += 1
                counts["retries"] += 1
            if not error and rng.random() < 0.1:  # a second question in the same chat: the whole history is logged
                follow = pool[(i + records // 2) % len(pool)]
                history = messages + [{"role": "assistant", "content": problem.response},
                                      {"role": "user", "content": follow.prompt}]
                handle.write(json.dumps(_record(f"req-{i}-2", history, follow.response,
                                                when + _dt.timedelta(minutes=2), metadata, False)) + "\n")
                counts["records"] += 1
                counts["continued"] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the log file (.jsonl or .jsonl.gz)")
    parser.add_argument("--records", type=int, default=2000, help="log records to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = write_log(args.out, args.records, args.seed)
    print(f"{args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
