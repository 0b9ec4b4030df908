"""One log-prob policy for every serving backend (vLLM offline, OpenAI-compatible HTTP).

Servers hand back, per response position, a handful of (token id, log-prob[, rank]) candidates:
k of them, or k+1 when the sampled token lies outside the top k, sometimes with the sampled token
repeated. Every backend turns those into the corpus' arrays here, with one rule:

- duplicates of an id collapse to the entry with the highest log-prob (then the lowest rank);
- the k kept are the highest log-probs; ties go to the lower rank, then the lower id;
- fewer than k distinct ids at a position is an error that says how to fix it.

Finish reasons map one way too (``finish_reason``), and scored (prompt log-prob) positions are
checked one way (``score_positions``). The vectorized fast paths in the backends implement the
same rule for the layouts servers actually send; tests/teachers/test_logprobs.py holds them to it.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from distill.teachers.base import TeacherError

Candidate = tuple[int, float, "int | None"]  # token id, log-prob, rank (None when the server gives none)
_NO_RANK = 1 << 30


def finish_reason(raw: Any) -> tuple[str | None, str | None]:
    """A server's finish reason -> (ours, or None when the request must be resubmitted; the
    server's own when it differs from ours).

    "abort" and "error" (transient server-side failures) and None (unfinished) are resubmitted;
    "repetition" (vLLM's degenerate-output detector), "content_filter" and the like end the
    response without a natural stop, so they count as truncated: "length".
    """
    raw = None if raw is None else str(raw)
    if raw in ("stop", "length"):
        return raw, None
    if raw in ("abort", "error", None):
        return None, raw
    return "length", raw


def topk_arrays(positions: Iterable[Iterable[Candidate]], k: int, where: str,
                chosen: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Per-position candidates -> top-k ids [T, k] int32 and log-probs [T, k] float32 (descending),
    and, when ``chosen`` (the token taken at each position) is given, its log-prob [T] float32,
    which must be among the candidates."""
    rows = list(positions)
    num = len(rows)
    if chosen is not None and len(chosen) != num:
        raise TeacherError(f"{where}: {num} log-prob positions for {len(chosen)} tokens")
    ids = np.empty((num, k), dtype=np.int32)
    logprobs = np.empty((num, k), dtype=np.float32)
    chosen_logprobs = np.empty(num, dtype=np.float32) if chosen is not None else None
    for t, candidates in enumerate(rows):
        best: dict[int, tuple[float, int]] = {}
        for token_id, lp, rank in candidates:
            key, entry = int(token_id), (float(lp), _NO_RANK if rank is None else int(rank))
            if key not in best or (-entry[0], entry[1]) < (-best[key][0], best[key][1]):
                best[key] = entry
        if chosen_logprobs is not None:
            token = int(chosen[t])
            if token not in best:
                raise TeacherError(f"{where}: position {t} lacks the log-prob of its own token {token}")
            chosen_logprobs[t] = best[token][0]
        if len(best) < k:
            raise TeacherError(f"{where}: position {t} has {len(best)} distinct top log-probs, expected {k}; raise "
                               "the server's --max-logprobs (vllm recipe: max_logprobs) or lower --top-k")
        ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[1][1], item[0]))[:k]
        ids[t] = [token_id for token_id, _ in ranked]
        logprobs[t] = [entry[0] for _, entry in ranked]
    return ids, logprobs, chosen_logprobs


def score_positions(entries: Sequence[Any] | None, prompt_len: int, num_response: int, where: str) -> Sequence[Any]:
    """The response slice of a scored request's prompt log-probs (entry i predicted token i;
    entry 0 is None), after the checks every backend needs."""
    total = prompt_len + num_response
    if entries is None or len(entries) < total:
        raise TeacherError(f"{where}: expected {total} prompt log-prob positions, got "
                           f"{None if entries is None else len(entries)} (is the server vLLM >= 0.32, which computes every prompt position for prompt_logprobs requests?)")
    if prompt_len == 0:
        raise TeacherError(f"{where}: an empty prompt leaves the first response token unscored")
    response = entries[prompt_len:total]
    if isinstance(response, list):  # (vLLM's flat form has no empty entries to check)
        for t, entry in enumerate(response):
            if entry is None:
                raise TeacherError(f"{where}: prompt log-prob entry {prompt_len + t} is empty")
    return response
