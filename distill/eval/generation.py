"""Greedy decoding for eval (the teacher's raw top-k captured when asked) and tokens/s timing."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from distill.eval.stats import percentile


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


def _topk_capture(k: int):
    """A LogitsProcessor that keeps the top-k of the raw next-token log-softmax at each step and
    leaves the scores untouched: [B, k] per step instead of output_logits' [B, vocab]."""
    import torch
    from transformers import LogitsProcessor

    class _Capture(LogitsProcessor):
        def __init__(self) -> None:
            self.steps: list[tuple[Any, Any]] = []

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            logprobs = torch.log_softmax(scores.float(), dim=-1)
            values, ids = torch.topk(logprobs, min(k, logprobs.shape[-1]), dim=-1)
            self.steps.append((ids.cpu(), values.cpu()))
            return scores

    return _Capture()


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

    With ``capture_top_k`` > 0 the raw (temperature-1, unprocessed: the generation config has no
    warpers or penalties) log-probs at each generated position are kept as top-k ids/log-probs:
    the teacher's side of the KL.
    """
    import torch
    from tqdm import tqdm
    from transformers import GenerationConfig, LogitsProcessorList

    device = next(model.parameters()).device
    eos, pad = eos_and_pad(model, tokenizer)
    gen_config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=pad,
        num_beams=1, temperature=None, top_p=None, top_k=None,
    )
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i])) if sort_by_length else list(range(len(prompts)))
    results: list[Generation | None] = [None] * len(prompts)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    eos_set = set(eos)
    for batch in tqdm(batches, desc=desc, unit="batch", disable=desc is None, leave=False):
        width = max(len(prompts[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids = prompts[i]
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids) :] = 1
        capture = _topk_capture(capture_top_k) if capture_top_k > 0 else None
        with torch.no_grad():
            sequences = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=gen_config,
                logits_processor=LogitsProcessorList([capture] if capture is not None else []),
            )
        new_tokens = sequences[:, width:].cpu().tolist()
        if capture is not None:
            top_ids = torch.stack([ids for ids, _ in capture.steps], dim=1).numpy().astype(np.int32)  # [B, steps, k]
            top_logprobs = torch.stack([v for _, v in capture.steps], dim=1).numpy()
        for row, i in enumerate(batch):
            ids = new_tokens[row]
            end = next((t + 1 for t, tok in enumerate(ids) if tok in eos_set), len(ids))
            response = ids[:end]
            text_ids = response[:-1] if response and response[-1] in eos_set else response
            generation = Generation(
                prompt_ids=list(prompts[i]), response_ids=response,
                text=tokenizer.decode(text_ids, skip_special_tokens=True),
            )
            if capture is not None:
                generation.topk_ids = top_ids[row, :end]
                generation.topk_logprobs = top_logprobs[row, :end]
            results[i] = generation
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


