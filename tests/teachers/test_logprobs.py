"""The one log-prob policy: k or k+1 candidates, duplicates, ties, missing tokens; and both
backends' fast paths agree with it on the layouts servers send."""

from __future__ import annotations

import numpy as np
import pytest

from distill.teachers.base import TeacherError
from distill.teachers.logprobs import finish_reason, score_positions, topk_arrays


def test_k_and_k_plus_one_candidates():
    # position 0: the sampled token (9) is outside the top 2, so the server adds it (k+1 entries)
    # position 1: the sampled token is in the top 2 (k entries)
    positions = [[(9, -3.0, 5), (1, -0.5, 1), (2, -1.0, 2)], [(4, -0.1, 1), (5, -2.5, 2)]]
    ids, lps, chosen = topk_arrays(positions, 2, "r", chosen=[9, 4])
    assert ids.tolist() == [[1, 2], [4, 5]]
    assert lps.dtype == np.float32 and np.allclose(lps, [[-0.5, -1.0], [-0.1, -2.5]])
    assert np.allclose(chosen, [-3.0, -0.1])


def test_duplicates_collapse_and_ties_follow_rank_then_id():
    # a repeated id keeps its best entry; equal log-probs order by rank, then by id when no rank
    ids, lps, _ = topk_arrays([[(7, -1.0, 2), (3, -1.0, 1), (7, -1.0, 2), (8, -2.0, 3)]], 2, "r")
    assert ids.tolist() == [[3, 7]]
    ids, _, _ = topk_arrays([[(7, -1.0, None), (3, -1.0, None), (5, -0.2, None), (3, -1.0, None)]], 3, "r")
    assert ids.tolist() == [[5, 3, 7]]
    ids, lps, _ = topk_arrays([[(4, -2.0, None), (4, -1.0, None), (6, -1.5, None)]], 2, "r")
    assert ids.tolist() == [[4, 6]] and lps.tolist() == [[-1.0, -1.5]]


def test_errors_say_what_to_fix():
    with pytest.raises(TeacherError, match=r"r: position 0 has 1 distinct top log-probs, expected 2; raise the server's --max-logprobs"):
        topk_arrays([[(1, -0.1, 1), (1, -0.1, 1)]], 2, "r")
    with pytest.raises(TeacherError, match=r"r: position 1 lacks the log-prob of its own token 9"):
        topk_arrays([[(1, -0.1, 1)], [(2, -0.1, 1)]], 1, "r", chosen=[1, 9])
    with pytest.raises(TeacherError, match=r"2 log-prob positions for 3 tokens"):
        topk_arrays([[(1, -0.1, 1)], [(2, -0.1, 1)]], 1, "r", chosen=[1, 2, 3])
    assert TeacherError("x").exit_code == 4


def test_score_positions_checks():
    entries = [None, {1: -0.1}, {2: -0.2}, {3: -0.3}]
    assert score_positions(entries, 1, 3, "s") == entries[1:]
    with pytest.raises(TeacherError, match=r"expected 5 prompt log-prob positions, got 4"):
        score_positions(entries, 2, 3, "s")
    with pytest.raises(TeacherError, match=r"empty prompt"):
        score_positions(entries, 0, 3, "s")
    with pytest.raises(TeacherError, match=r"entry 1 is empty"):
        score_positions([None, None, {2: -0.2}], 1, 2, "s")


def test_finish_reasons():
    assert finish_reason("stop") == ("stop", None) and finish_reason("length") == ("length", None)
    assert finish_reason("abort") == (None, "abort") and finish_reason(None) == (None, None)
    assert finish_reason("repetition") == ("length", "repetition")


def test_http_fast_path_follows_the_rule():
    """vLLM's token_id-keyed completions log-probs: the vectorized path equals the general rule."""
    from distill.teachers.openai_http import TokenMap, parse_completion_choice

    rng = np.random.default_rng(0)
    k, steps = 4, 30
    top, tokens, token_lps = [], [], []
    for _ in range(steps):
        cand = rng.choice(1000, size=k + 1, replace=False)
        lps = np.round(np.sort(rng.normal(-3, 2, size=k + 1))[::-1], 1)  # rounding makes ties
        lps[rng.integers(0, k + 1)] = lps[0]
        chosen = int(cand[rng.integers(0, k + 1)])
        step = {f"token_id:{int(c)}": float(v) for c, v in zip(cand, lps)}
        if rng.random() < 0.5:  # sometimes only k entries (sampled token inside the top k)
            step.pop(next(key for key in step if key != f"token_id:{chosen}"))
        top.append(step)
        tokens.append(f"token_id:{chosen}")
        token_lps.append(step[f"token_id:{chosen}"])
    choice = {"text": "", "finish_reason": "stop", "logprobs": {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": top}}
    ids, fast_ids, fast_lps, *_ = parse_completion_choice(choice, k, TokenMap.__new__(TokenMap), "r")
    general_ids, general_lps, _ = topk_arrays(
        [[(int(key[9:]), v, None) for key, v in step.items()] for step in top], k, "r")
    assert fast_ids.tolist() == general_ids.tolist()
    assert fast_lps.tolist() == general_lps.tolist()
