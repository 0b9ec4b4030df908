"""Sequence packing: plans stay pure and budgeted; a packed batch gives the padded batch's per-row
losses and gradients; packed rows never attend to each other; resume is exact; unsupported
attention is a clear error before step 1."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch

from distill.train import data as train_data
from tests.train.conftest import read_metrics, train_args, write_corpus
from tests.train.test_data import _Tok, synthetic_rows
from tests.train.test_train import assert_weights_close, cli


def spec(**kw):
    base = dict(max_seq_len=64, tokens_per_batch=256, batch_size=None, grad_accum=2, world_size=1, seed=0, packing=True)
    return train_data.BatchSpec(**{**base, **kw})


@pytest.fixture(scope="module")
def syn_corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("syn_pack"), synthetic_rows(300, seed=3), _Tok(), top_k=8, row_group_size=16)


def test_packed_plan_is_pure_complete_budgeted_and_pads_less(syn_corpus):
    from distill.corpus import open_corpus

    corpus = open_corpus(syn_corpus)
    lengths, offsets = corpus.lengths(), corpus.row_group_offsets
    held = train_data.holdout_rows(offsets, corpus.num_rows, 20, seed=0)
    s = spec()
    plan = train_data.plan_epoch(lengths, offsets, s, 0, held)
    as_lists = lambda p: [[seq.tolist() for seq in batch] for batch in p]  # noqa: E731
    assert as_lists(plan) == as_lists(train_data.plan_epoch(lengths, offsets, s, 0, held))
    assert as_lists(plan) != as_lists(train_data.plan_epoch(lengths, offsets, s, 1, held))
    eff = train_data.effective_lengths(lengths, 64)
    rows = np.concatenate([seq for batch in plan for seq in batch])
    usable = set(np.flatnonzero(eff > 0).tolist()) - set(held.tolist())
    assert len(rows) == len(set(rows.tolist()))  # no row twice
    dropped = usable - set(rows.tolist())  # only the tail cut to whole optimizer steps
    assert len(dropped) < 2 * s.pack_rows * 64 // 4
    for batch in plan:
        assert 1 <= len(batch) <= s.pack_rows == 4
        assert all(eff[seq].sum() <= 64 for seq in batch)
    # --batch-size B packs B sequences
    assert train_data.BatchSpec(**{**s.__dict__, "batch_size": 3}).pack_rows == 3
    # padding share of the epoch: packed << length-grouped padded
    packed_slots = sum(len(b) * max(eff[seq].sum() for seq in b) for b in plan)
    packed_share = 1 - eff[rows].sum() / packed_slots
    padded = train_data.plan_epoch(lengths, offsets, spec(packing=False), 0, held)
    padded_share = 1 - sum(eff[b].sum() for b in padded) / sum(len(b) * eff[b].max() for b in padded)
    assert packed_share < 0.5 * padded_share, (packed_share, padded_share)
    # a resumed data position yields the same packed micro-batches
    stats = train_data.VocabStats(vocab_size=320)
    kw = dict(rank=0, num_epochs=2, exclude=held, collate_kwargs={"max_seq_len": 64, "pad_id": 0, "top_k": 8, "stats": stats})
    full = list(train_data.iter_steps(corpus, lengths, s, start_epoch=0, start_step=0, **kw))
    per_epoch = sum(1 for e, _, _ in full if e == 0)
    later = list(train_data.iter_steps(corpus, lengths, s, start_epoch=1, start_step=2, **kw))
    assert len(later) == len(full) - per_epoch - 2
    for (e1, s1, m1), (e2, s2, m2) in zip(full[per_epoch + 2:], later):
        assert (e1, s1) == (e2, s2)
        for a, b in zip(m1, m2):
            assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["position_ids"], b["position_ids"])
            assert torch.equal(a["topk_logprobs"], b["topk_logprobs"])
    # two ranks split each step's packed micro-batches, together exactly the 1-rank step
    s2 = spec(world_size=2, grad_accum=1)
    for step in range(train_data.steps_in(plan, s2)):
        mine = train_data.rank_micro_batches(plan, s2, step, 0) + train_data.rank_micro_batches(plan, s2, step, 1)
        assert as_lists(mine) == as_lists(plan[step * 2:(step + 1) * 2])


def test_collate_packed_layout():
    rows = synthetic_rows(5, seed=4, max_prompt=10, max_response=12)
    stats = train_data.VocabStats(vocab_size=320)
    batch = train_data.collate_packed([rows[:3], rows[3:]], max_seq_len=64, pad_id=0, top_k=8, stats=stats)
    ids, pos = batch["input_ids"], batch["position_ids"]
    assert batch["attention_mask"] is None and ids.shape == pos.shape and ids.shape[0] == 2
    lens = [len(r.prompt_ids) + len(r.response_ids) - 1 for r in rows]
    assert batch["num_input_tokens"] == sum(lens)
    # every row starts its own position run at 0; the pad tail is one more run
    starts = (pos == 0).sum(1).tolist()
    widths = [sum(lens[:3]), sum(lens[3:])]
    assert starts == [3 + (widths[0] < ids.shape[1]), 2 + (widths[1] < ids.shape[1])]
    # position p predicts the next input token, as in the padded layout
    flat = ids.reshape(-1)
    nxt = batch["positions"] + 1
    inside = (nxt % ids.shape[1] != 0) & (pos.reshape(-1)[nxt.clamp(max=flat.numel() - 1)] != 0)
    assert (flat[nxt[inside]] == batch["targets"][inside]).all()
    assert int(inside.sum()) == batch["num_tokens"] - len(rows)
    padded = train_data.collate(rows, max_seq_len=64, pad_id=0, top_k=8, stats=stats)
    assert torch.equal(padded["targets"], batch["targets"]) and torch.equal(padded["topk_ids"], batch["topk_ids"])


def _wrapper(student_dir, attn, flatten=False):
    from transformers import AutoModelForCausalLM

    from distill.train.student import student_with_loss_cls

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(student_dir, attn_implementation=attn, dtype=torch.float32)
    options = {"divergence_name": "forward_kl", "temperature": 1.0, "beta": 0.5, "alpha": 0.1}
    return student_with_loss_cls()(model, options, None, flatten_packed=flatten)


def _row_slices(rows, max_seq_len):
    bounds = np.cumsum([0] + [min(len(r.response_ids), max_seq_len - len(r.prompt_ids) + 1) for r in rows])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _call(wrapper, batch, sl=slice(None)):
    keys = ("input_ids", "attention_mask", "position_ids")
    return wrapper(**{k: batch[k] for k in keys}, positions=batch["positions"][sl], targets=batch["targets"][sl],
                   topk_ids=batch["topk_ids"][sl], topk_logprobs=batch["topk_logprobs"][sl], kd_weight=0.5)


@pytest.mark.parametrize("attn,flatten", [("sdpa", False), ("eager", False), ("sdpa", True)])
def test_packed_batch_equals_padded_per_row_and_in_gradients(attn, flatten, tiny_student_dir):
    """Same rows, padded [B, L] vs packed into 3 sequences (or flattened to one, as for flash
    attention): every row's KD+CE sums and the gradient of the total agree within 1e-5."""
    rows = synthetic_rows(7, seed=5, max_prompt=14, max_response=20)
    stats = train_data.VocabStats(vocab_size=320)
    padded = train_data.collate(rows, max_seq_len=64, pad_id=0, top_k=8, stats=stats)
    packed = train_data.collate_packed([rows[:3], rows[3:5], rows[5:]], max_seq_len=64, pad_id=0, top_k=8, stats=stats)
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    wrapper = _wrapper(tiny_student_dir, attn, flatten)
    with torch.no_grad():
        for sl in _row_slices(rows, 64):
            a, b = _call(wrapper, padded, sl), _call(wrapper, packed, sl)
            for name in ("kd", "ce", "total"):
                torch.testing.assert_close(getattr(b, name), getattr(a, name), atol=1e-5, rtol=1e-5)
    grads = []
    for batch in (padded, packed):
        wrapper.zero_grad(set_to_none=True)
        _call(wrapper, batch).total.backward()
        grads.append({n: p.grad.clone() for n, p in wrapper.named_parameters()})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-5, msg=name)


def test_packed_rows_do_not_attend_to_each_other(tiny_student_dir):
    """Changing the first row of a packed sequence changes its own logits only; the same edit
    without the per-row position runs (one causal sequence) does reach the later rows."""
    import dataclasses

    rows = synthetic_rows(3, seed=6, max_prompt=12, max_response=16)
    edited = dataclasses.replace(rows[0], prompt_ids=(rows[0].prompt_ids + 7) % 300)
    stats = train_data.VocabStats(vocab_size=320)
    wrapper = _wrapper(tiny_student_dir, "sdpa")
    decoder = wrapper.model.get_decoder()
    spans = _row_slices(rows, 64)

    def hidden_at_rows(first, block_diagonal=True):
        batch = train_data.collate_packed([[first, *rows[1:]]], max_seq_len=64, pad_id=0, top_k=8, stats=stats)
        pos = batch["position_ids"] if block_diagonal else None
        with torch.no_grad():
            h = decoder(input_ids=batch["input_ids"], position_ids=pos, use_cache=False).last_hidden_state
        h = h.reshape(-1, h.shape[-1])[batch["positions"]]
        return [h[sl] for sl in spans]

    before, after = hidden_at_rows(rows[0]), hidden_at_rows(edited)
    assert not torch.allclose(before[0], after[0], atol=1e-3)  # the edited row itself moved
    for i in (1, 2):
        torch.testing.assert_close(after[i], before[i], atol=1e-6, rtol=0)
    leaky_before, leaky_after = hidden_at_rows(rows[0], False), hidden_at_rows(edited, False)
    assert not torch.allclose(leaky_before[1], leaky_after[1], atol=1e-3)  # the check can see a leak


def test_packed_training_resumes_exactly(tiny_student_dir, kd_corpus, tmp_path):
    """12 packed steps (crossing an epoch) checkpointed at 6; drop everything after step 6, resume:
    steps 7-12 and the final weights equal the uninterrupted run's."""
    out = tmp_path / "run"
    args = dict(max_steps=12, save_every=6, keep_checkpoints=3, max_seq_len=128, grad_accum=2, packing=True)
    assert cli(train_args(tiny_student_dir, kd_corpus, out, **args)).exit_code == 0
    first = [m for m in read_metrics(out) if "loss" in m]
    assert [m["epoch"] for m in first][-1] == 1, "the run should cross an epoch"
    assert max(m["padding_share"] for m in first) < 0.2
    assert json.loads((out / "checkpoints" / "step-0000006" / "trainer_state.json").read_text())["packing"] is True
    shutil.copytree(out / "final", tmp_path / "final_ref")
    shutil.rmtree(out / "checkpoints" / "step-0000012")
    shutil.rmtree(out / "final")
    # resuming a packed run without packing is refused (the data position belongs to the packed plan)
    result = cli(train_args(tiny_student_dir, kd_corpus, out, **{**args, "packing": False}, resume=True) + ["--no-packing"])
    assert result.exit_code == 2 and "--packing" in result.output, result.output
    result = cli(train_args(tiny_student_dir, kd_corpus, out, **args, resume=True))
    assert result.exit_code == 0, result.output
    resumed = [m for m in read_metrics(out) if "loss" in m]
    assert [m["step"] for m in resumed] == list(range(1, 13))
    for a, b in zip(first, resumed):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6, abs=1e-7), a["step"]
    assert_weights_close(tmp_path / "final_ref", out / "final", atol=1e-6)


def test_unsupported_attention_is_a_clear_error(tiny_student_dir, kd_corpus, tmp_path, monkeypatch):
    from distill.config import ConfigError
    from distill.train.config import TrainConfig
    from distill.train.student import check_packing_support

    with pytest.raises(ConfigError, match="--packing: attention implementation 'eager_paged'"):
        TrainConfig(student="s", corpus=("c",), out="o", packing=True, attn_implementation="eager_paged")
    TrainConfig(student="s", corpus=("c",), out="o", packing=False, attn_implementation="eager_paged")  # fine unpacked
    config = tmp_path / "c.yaml"
    config.write_text("attn_implementation: eager_paged\n")
    out = tmp_path / "out"
    result = cli(train_args(tiny_student_dir, kd_corpus, out, packing=True) + ["--config", str(config)])
    assert result.exit_code == 2 and "--packing" in result.output and "attn_implementation" in result.output
    assert not out.exists()
    # a transformers release without packed-sequence support: named, before anything is written
    check_packing_support("sdpa")
    check_packing_support("flash_attention_2")
    monkeypatch.setitem(sys.modules, "transformers.masking_utils", None)
    monkeypatch.setitem(sys.modules, "transformers.modeling_flash_attention_utils", None)
    for attn in ("sdpa", "flash_attention_2"):
        with pytest.raises(ConfigError, match=f"--packing: transformers .* cannot keep packed rows apart with {attn}"):
            check_packing_support(attn)
    result = cli(train_args(tiny_student_dir, kd_corpus, out, packing=True))
    assert result.exit_code == 2 and "--no-packing" in result.output and not out.exists()
