"""Greedy decoding for eval (the teacher's raw top-k captured when asked) and tokens/s timing."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from distill.eval.stats import percentile
from distill.stop import STOP


@dataclass
class Generation:
    """One greedy response: ids up to and including EOS, decoded text (special tokens removed),
    and, when captured, the raw top-k log-probs at each response position."""

    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    topk_ids: np.ndarray | None = None
    topk_logprobs: np.ndarray | None = None


def eos_and_pad(model: Any, tokenizer: Any) -> tuple[list[int], int]:
    eos: list[int] = []
    for source in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        for token in source if isinstance(source, (list, tuple)) else [source]:
            if token is not None and int(token) not in eos:
                eos.append(int(token))
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = getattr(model.generation_config, "pad_token_id", None)
    if pad is None:
        pad = eos[0] if eos else 0
    return eos, int(pad)


def generate_greedy(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    *,
    batch_size: int,
    max_new_tokens: int,
    capture_top_k: int = 0,
    desc: str | None = None,
    sort_by_length: bool = True,
) -> list[Generation]:
    """Greedy responses to ``prompts`` (token id lists), batched with left padding.

    The decoding is the HF teacher's own (``distill.teachers.hf.generate_batch`` at temperature 0,
    through ``model.generate``): one greedy path for the corpus and for eval. With
    ``capture_top_k`` > 0 the raw (temperature-1, unprocessed) log-probs at each generated position
    are kept as top-k ids/log-probs: the teacher's side of the KL.
    """
    from tqdm import tqdm

    from distill.teachers.base import SamplingParams
    from distill.teachers.hf import generate_batch

    eos, pad = eos_and_pad(model, tokenizer)
    vocab = int(model.get_output_embeddings().weight.shape[0])
    # k >= the vocabulary keeps every log-prob: the exact distribution
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, top_k_logprobs=min(capture_top_k, vocab))
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i])) if sort_by_length else list(range(len(prompts)))
    results: list[Generation | None] = [None] * len(prompts)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    eos_set = set(eos)
    for batch in tqdm(batches, desc=desc, unit="batch", disable=desc is None, leave=False):
        STOP.check("eval: no report written")  # SIGTERM: stop between batches
        rows = generate_batch(model, tokenizer, [prompts[i] for i in batch], [0] * len(batch), params,
                              eos_ids=eos, pad_id=pad, cache="dynamic")
        for i, row in zip(batch, rows):
            response = row["response_ids"].tolist()
            text_ids = response[:-1] if response and response[-1] in eos_set else response
            results[i] = Generation(prompt_ids=list(prompts[i]), response_ids=response,
                                    text=tokenizer.decode(text_ids, skip_special_tokens=True),
                                    topk_ids=row["topk_ids"], topk_logprobs=row["topk_logprobs"])
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def measure_speed(
    run_batch: Any, prompts: Sequence[Any], *, batch_size: int, max_new_tokens: int, desc: str, sync: Any = None,
    warm_up: bool = True,
) -> dict[str, Any]:
    """Tokens/s and per-request latency at batch 1 and at ``batch_size``, warm-up excluded.

    ``run_batch(prompts) -> list[Generation]`` generates greedily for one batch; ``sync()``
    waits for the device so the clock measures finished work. The batched figure always runs full
    batches of ``batch_size`` rows: with fewer timed prompts they are repeated to fill one batch.
    """
    from tqdm import tqdm

    sync = sync or (lambda: None)
    full_batches = max(1, len(prompts) // batch_size)
    batch_rows = [prompts[i % len(prompts)] for i in range(full_batches * batch_size)]
    if warm_up:
        run_batch(batch_rows[:batch_size])  # allocator, kernels, caches
        run_batch([prompts[0]])
        sync()
    single_latency, single_tokens, single_time = [], 0, 0.0
    for prompt in tqdm(prompts, desc=f"{desc}: speed b=1", unit="req", leave=False):
        start = time.perf_counter()
        out = run_batch([prompt])
        sync()
        elapsed = time.perf_counter() - start
        single_latency.append(elapsed * 1000)
        single_tokens += len(out[0].response_ids)
        single_time += elapsed
    batch_latency, batch_tokens, batch_time = [], 0, 0.0
    chunks = [batch_rows[i : i + batch_size] for i in range(0, len(batch_rows), batch_size)]
    for chunk in tqdm(chunks, desc=f"{desc}: speed b={batch_size}", unit="batch", leave=False):
        start = time.perf_counter()
        out = run_batch(chunk)
        sync()
        elapsed = time.perf_counter() - start
        batch_latency += [elapsed * 1000] * len(chunk)
        batch_tokens += sum(len(g.response_ids) for g in out)
        batch_time += elapsed
    return {
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "batch_1": {
            "tokens_per_s": single_tokens / single_time,
            "latency_ms": single_latency,
            "tokens": single_tokens,
        },
        "batch": {
            "batch_size": len(chunks[0]),
            "tokens_per_s": batch_tokens / batch_time,
            "latency_ms": batch_latency,
            "tokens": batch_tokens,
        },
    }


def combine_speed_rounds(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One speed entry from several rounds: tokens/s is the median over rounds (a round slowed by
    a noisy neighbour does not move it), latency percentiles pool every timed request."""
    out: dict[str, Any] = {"prompts": rounds[0]["prompts"], "max_new_tokens": rounds[0]["max_new_tokens"],
                           "rounds": len(rounds)}
    for key in ("batch_1", "batch"):
        latencies = [ms for r in rounds for ms in r[key]["latency_ms"]]
        out[key] = {
            "tokens_per_s": float(np.median([r[key]["tokens_per_s"] for r in rounds])),
            "tokens_per_s_rounds": [r[key]["tokens_per_s"] for r in rounds],
            "latency_p50_ms": percentile(latencies, 50),
            "latency_p95_ms": percentile(latencies, 95),
            "tokens": sum(r[key]["tokens"] for r in rounds),
        }
        if key == "batch":
            out[key]["batch_size"] = rounds[0][key]["batch_size"]
    return out


