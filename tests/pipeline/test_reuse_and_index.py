"""generate --reuse copies the rows an earlier corpus already holds, exactly; the prompt index finds
exact and near duplicates of earlier runs the way the shingle sets' Jaccard says."""

from __future__ import annotations

import random

import numpy as np

from distill.corpus import open_corpus
from distill.generate import GenerateConfig, run
from tests.pipeline.helpers import prompts, write_prompts


def _rows(folder):
    return {r.id: r for r in open_corpus(folder).iter_rows()}


def test_reuse_copies_rows_exactly_and_asks_the_teacher_only_for_the_rest(tmp_path):
    texts = prompts(12, seed=31)
    common = {"teacher": "demo", "max_new_tokens": 8, "temperature": 0.7, "seed": 3, "rows_per_shard": 5,
              "progress": False}
    run(GenerateConfig(prompts=str(write_prompts(tmp_path / "a.jsonl", texts[:8])), out=str(tmp_path / "a"), **common))
    both = str(write_prompts(tmp_path / "b.jsonl", texts))
    fresh = run(GenerateConfig(prompts=both, out=str(tmp_path / "fresh"), **common))
    reused = run(GenerateConfig(prompts=both, out=str(tmp_path / "reused"), reuse=(str(tmp_path / "a"),), **common))
    assert fresh["stats"]["teacher_rows_last_run"] == 12 and fresh["stats"]["reused_rows_last_run"] == 0
    assert reused["stats"]["teacher_rows_last_run"] == 4 and reused["stats"]["reused_rows_last_run"] == 8
    a, b = _rows(tmp_path / "fresh"), _rows(tmp_path / "reused")
    assert a.keys() == b.keys()
    for rid, row in a.items():
        other = b[rid]
        for name in ("prompt_ids", "response_ids", "topk_ids", "topk_logprobs", "sampled_logprobs"):
            assert np.array_equal(getattr(row, name), getattr(other, name)), (rid, name)
        assert (row.response_text, row.finish_reason, row.origin) == (other.response_text, other.finish_reason, other.origin)
    # another sampling setting: other row ids, nothing reused
    other = run(GenerateConfig(prompts=both, out=str(tmp_path / "other"), reuse=(str(tmp_path / "a"),),
                               **{**common, "seed": 4}))
    assert other["stats"]["reused_rows_last_run"] == 0


def test_index_matches_jaccard(tmp_path):
    from distill.dedup import jaccard, shingles
    from distill.pipeline.index import Hasher, Prompts, dedup, write_segment

    rng = random.Random(0)
    base = prompts(300, seed=41)
    conv = [[{"role": "user", "content": t}] for t in base]
    hasher = Hasher(0.7)
    indexed = Prompts.of(conv, hasher)
    verdicts = dedup(indexed, [], hasher)
    assert not any(verdicts.reason)
    write_segment(tmp_path / "seg", indexed, hasher)
    # edits of old prompts at several strengths, plus new prompts and exact copies
    probes, truth = [], []
    for i in range(300):
        words = base[i].split()
        edits = rng.choice([0, 1, 2, 4, 8])
        for _ in range(edits):
            words[rng.randrange(len(words))] = rng.choice(["alpha", "beta", "gamma", "delta"])
        text = " ".join(words)
        probes.append(text)
        truth.append(jaccard(shingles(text), shingles(base[i])))
    probes += prompts(50, seed=42)
    truth += [0.0] * 50
    got = dedup(Prompts.of([[{"role": "user", "content": t}] for t in probes], hasher), [("old", tmp_path / "seg")], hasher)
    flagged = [bool(r) for r in got.reason]
    exact = [r == "duplicate_of_earlier_run" for r in got.reason]
    assert all(e == (p in base) for e, p in zip(exact, probes))
    below = [f for f, j in zip(flagged, truth) if j < 0.7]
    above = [f for f, j in zip(flagged, truth) if j >= 0.7]
    assert below and not any(below)  # the exact Jaccard decides: nothing under the threshold is dropped
    assert above and sum(above) / len(above) >= 0.97, f"recall {sum(above)}/{len(above)}"
