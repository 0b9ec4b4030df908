"""Batching: plans are deterministic, length-grouped, token-budgeted, split per rank, resumable,
and data loading memory does not grow with corpus size."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from distill.train import data as train_data
from tests.train.conftest import REPO, write_corpus


def synthetic_rows(n, seed=0, top_k=8, vocab=300, max_prompt=30, max_response=60):
    from distill.corpus import CorpusRow

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        p, t = int(rng.integers(4, max_prompt)), int(rng.integers(2, max_response))
        lps = np.sort(rng.uniform(-8, -0.1, size=(t, top_k)).astype(np.float32), axis=1)[:, ::-1]
        rows.append(CorpusRow(
            id=f"s{seed}-{i}", prompt_ids=rng.integers(0, vocab, p).astype(np.int32),
            response_ids=rng.integers(0, vocab, t).astype(np.int32),
            topk_ids=rng.integers(0, vocab, (t, top_k)).astype(np.int32), topk_logprobs=np.ascontiguousarray(lps),
            sampled_logprobs=lps[:, 0].copy(), finish_reason="stop", prompt_text="p", response_text="r",
        ))
    return rows


class _Tok:
    """Just enough tokenizer for the fingerprint."""

    def get_vocab(self):
        return {"a": 0}

    special_tokens_map = {}
    chat_template = None


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("syn"), synthetic_rows(300), _Tok(), top_k=8, row_group_size=16)


def spec(**kw):
    base = dict(max_seq_len=64, tokens_per_batch=256, batch_size=None, grad_accum=2, world_size=1, seed=0)
    return train_data.BatchSpec(**{**base, **kw})


def test_plan_is_deterministic_complete_and_budgeted(corpus_dir):
    from distill.corpus import open_corpus

    corpus = open_corpus(corpus_dir)
    lengths = corpus.lengths()
    held = train_data.holdout_rows(corpus.row_group_offsets, corpus.num_rows, 20, seed=0)
    plan = train_data.plan_epoch(lengths, corpus.row_group_offsets, spec(), 0, held)
    assert [b.tolist() for b in plan] == [b.tolist() for b in train_data.plan_epoch(lengths, corpus.row_group_offsets, spec(), 0, held)]
    assert [b.tolist() for b in plan] != [b.tolist() for b in train_data.plan_epoch(lengths, corpus.row_group_offsets, spec(), 1, held)]
    rows = np.concatenate(plan)
    assert len(rows) == len(set(rows.tolist())) and not set(rows.tolist()) & set(held.tolist())
    assert len(held) == 20 and len(plan) % 2 == 0
    eff = train_data.effective_lengths(lengths, 64)
    for batch in plan:
        assert len(batch) == 1 or len(batch) * eff[batch].max() <= 256
    # length grouping: far less padding than the same batch sizes drawn at random
    padded = sum(len(b) * eff[b].max() for b in plan)
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(rows)
    sizes = np.cumsum([len(b) for b in plan])[:-1]
    random_padded = sum(len(b) * eff[b].max() for b in np.split(shuffled, sizes))
    assert padded < 0.8 * random_padded, (padded, random_padded)


def test_rank_split_covers_each_step_once(corpus_dir):
    from distill.corpus import open_corpus

    corpus = open_corpus(corpus_dir)
    s2 = spec(world_size=2, grad_accum=2)
    plan = train_data.plan_epoch(corpus.lengths(), corpus.row_group_offsets, s2, 0)
    for step in range(train_data.steps_in(plan, s2)):
        mine = [train_data.rank_micro_batches(plan, s2, step, r) for r in range(2)]
        assert [b.tolist() for b in mine[0] + mine[1]] == [b.tolist() for b in plan[step * 4:(step + 1) * 4]]


def test_resume_position_yields_the_same_batches(corpus_dir):
    from distill.corpus import open_corpus

    corpus = open_corpus(corpus_dir)
    stats = train_data.VocabStats(vocab_size=320)
    kw = dict(rank=0, num_epochs=2, exclude=None,
              collate_kwargs={"max_seq_len": 64, "pad_id": 0, "top_k": 8, "stats": stats})
    s = spec()
    full = list(train_data.iter_steps(corpus, corpus.lengths(), s, start_epoch=0, start_step=0, **kw))
    per_epoch = sum(1 for e, _, _ in full if e == 0)
    later = list(train_data.iter_steps(corpus, corpus.lengths(), s, start_epoch=1, start_step=3, **kw))
    assert len(later) == len(full) - per_epoch - 3
    for (e1, s1, m1), (e2, s2, m2) in zip(full[per_epoch + 3:], later):
        assert (e1, s1) == (e2, s2)
        for a, b in zip(m1, m2):
            assert (a["input_ids"] == b["input_ids"]).all() and (a["topk_logprobs"] == b["topk_logprobs"]).all()
    # collate: position p predicts the next input token; prompts carry no loss
    batch = full[0][2][0]
    flat, mask = batch["input_ids"].reshape(-1), batch["attention_mask"].reshape(-1)
    nxt = batch["positions"] + 1
    inside = (nxt % batch["input_ids"].shape[1] != 0)
    inside[inside.clone()] = mask[nxt[inside]] == 1
    assert (flat[nxt[inside]] == batch["targets"][inside]).all()
    assert int(inside.sum()) == batch["num_tokens"] - batch["input_ids"].shape[0]


_RSS_SCRIPT = r"""
import json, sys
import numpy as np
import torch  # imported by collate on first use: load it before the baseline
from distill.train import data as train_data
from distill.corpus import open_corpus

def rss_kb():  # current resident set (the peak counter would hold the import's own peak)
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4

corpus = open_corpus(sys.argv[1])
spec = train_data.BatchSpec(max_seq_len=512, tokens_per_batch=2048, batch_size=None, grad_accum=1, world_size=1, seed=0)
stats = train_data.VocabStats(vocab_size=320)
before = peak = rss_kb()
n = 0
for _, _, micro in train_data.iter_steps(corpus, corpus.lengths(), spec, rank=0, start_epoch=0, start_step=0,
        num_epochs=1, exclude=None, collate_kwargs={"max_seq_len": 512, "pad_id": 0, "top_k": 20, "stats": stats}):
    n += sum(m["num_tokens"] for m in micro)
    peak = max(peak, rss_kb())
print(json.dumps({"tokens": n, "growth_kb": peak - before}))
"""


@pytest.mark.slow
def test_data_loading_memory_is_flat_in_corpus_size(tmp_path):
    """20x more rows -> about the same resident-memory growth while iterating (rows stream through a
    bounded row-group cache). Holding the 20x corpus (~20 KB of decoded top-k per row) would add
    ~160 MB; streaming it measured +30 MB over the 1x corpus (allocator and Parquet buffers), so the
    64 MiB bound has a wide margin both ways. Growth is counted from after the imports, so the
    interpreter's and torch's own memory, which varies between machines, is left out."""
    rows = synthetic_rows(400, seed=1, top_k=20, max_response=250)
    small = write_corpus(tmp_path / "small", rows, _Tok(), top_k=20, row_group_size=32)
    large = write_corpus(tmp_path / "large", rows * 20, _Tok(), top_k=20, row_group_size=32, num_shards=4)
    results = []
    for folder in (small, large):
        out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(folder)], capture_output=True, text=True,
                             cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert results[1]["tokens"] > 16 * results[0]["tokens"]
    print("data loading peak RSS growth (KiB), 1x vs 20x corpus:", results)
    assert results[1]["growth_kb"] <= results[0]["growth_kb"] + 64 * 1024, results


def test_held_out_rows_are_a_seeded_sample_across_the_corpus():
    """Not a contiguous block (a corpus is written in prompt order: one block is one topic)."""
    offsets = list(range(0, 1000, 50))  # 20 row groups of 50 rows
    held = train_data.holdout_rows(offsets, 1000, 40, seed=3)
    assert len(held) == 40 == len(set(held.tolist())) and held.tolist() == sorted(held.tolist())
    assert len({int(i) // 50 for i in held}) >= 15  # spread over most row groups
    assert held.max() - held.min() > 800
    assert (held == train_data.holdout_rows(offsets, 1000, 40, seed=3)).all()
    assert not (held == train_data.holdout_rows(offsets, 1000, 40, seed=4)).all()
    assert len(train_data.holdout_rows(offsets, 1000, 1000, seed=0)) == 0  # never everything
