"""--prompt-loss-weight: next-token CE on the prompt's own tokens, added to the response loss.

The prompt positions line up with the prompt tokens in both layouts; the wrapper's total equals
the response loss plus w times a prompt CE computed from full logits; packed and padded batches
give the same losses and gradients; the CLI logs prompt_ce and rejects a negative weight."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.train import data as train_data
from tests.train.conftest import read_metrics, train_args
from tests.train.test_data import synthetic_rows
from tests.train.test_packing import _wrapper
from tests.train.test_train import cli


def _batches(rows):
    stats = train_data.VocabStats(vocab_size=320)
    padded = train_data.collate(rows, max_seq_len=64, pad_id=0, top_k=8, stats=stats, prompt_loss=True)
    packed = train_data.collate_packed([rows[:3], rows[3:]], max_seq_len=64, pad_id=0, top_k=8, stats=stats,
                                       prompt_loss=True)
    return padded, packed


def test_prompt_positions_predict_the_next_prompt_token_in_both_layouts():
    rows = synthetic_rows(6, seed=7, max_prompt=12, max_response=10)
    for batch in _batches(rows):
        flat = batch["input_ids"].reshape(-1)
        pos, tgt = batch["prompt_positions"], batch["prompt_targets"]
        assert len(pos) == len(tgt) == sum(len(r.prompt_ids) - 1 for r in rows)
        assert torch.equal(flat[pos + 1], tgt)  # the input one step on is the target
        assert set(pos.tolist()).isdisjoint(batch["positions"].tolist())  # never a response position
    padded, packed = _batches(rows)
    assert torch.equal(padded["prompt_targets"], packed["prompt_targets"])
    plain = train_data.collate(rows, max_seq_len=64, pad_id=0, top_k=8, stats=train_data.VocabStats(vocab_size=320))
    assert "prompt_positions" not in plain


def _call(wrapper, batch, weight):
    keys = ("input_ids", "attention_mask", "position_ids", "positions", "targets", "topk_ids", "topk_logprobs",
            "prompt_positions", "prompt_targets")
    return wrapper(**{k: batch[k] for k in keys}, kd_weight=0.5, prompt_loss_weight=weight)


def test_total_is_response_loss_plus_weighted_prompt_ce_and_packing_agrees(tiny_student_dir):
    rows = synthetic_rows(6, seed=8, max_prompt=14, max_response=12)
    padded, packed = _batches(rows)
    wrapper = _wrapper(tiny_student_dir, "sdpa")
    with torch.no_grad():
        base = _call(wrapper, padded, 0.0)
        with_prompt = _call(wrapper, padded, 0.3)
        logits = wrapper.model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        ref_ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1])[padded["prompt_positions"]],
                                 padded["prompt_targets"], reduction="sum")
    assert base.prompt_ce is None
    torch.testing.assert_close(with_prompt.prompt_ce, ref_ce, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(with_prompt.total, base.total + 0.3 * ref_ce, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(with_prompt.kd, base.kd)
    grads = []
    for batch in (padded, packed):
        wrapper.zero_grad(set_to_none=True)
        _call(wrapper, batch, 0.3).total.backward()
        grads.append({n: p.grad.clone() for n, p in wrapper.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-5, msg=name)


def test_cli_logs_prompt_ce_and_rejects_a_negative_weight(tiny_student_dir, kd_corpus, tmp_path):
    out = tmp_path / "pl"
    result = cli(train_args(tiny_student_dir, kd_corpus, out, max_steps=2, prompt_loss_weight=0.5))
    assert result.exit_code == 0, result.output
    steps = [m for m in read_metrics(out) if "loss" in m]
    assert len(steps) == 2 and all(m["prompt_ce"] > 0 for m in steps)
    # the response part alone is kd_weight*KD + (1-kd_weight)*CE; the prompt's share comes on top
    assert all(m["loss"] > 0.5 * m["kd"] + 0.5 * m["ce"] + 1e-3 for m in steps)
    bad = cli(train_args(tiny_student_dir, kd_corpus, tmp_path / "neg", max_steps=2, prompt_loss_weight=-1))
    assert bad.exit_code == 2 and "--prompt-loss-weight" in bad.output
    assert not (tmp_path / "neg").exists()
