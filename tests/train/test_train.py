"""`distill train` in one process: learning, SFT equivalence, accumulation, vocab checks, bad input."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.train.conftest import read_metrics, train_args, write_corpus


def cli(args):
    from distill.cli import main

    return CliRunner().invoke(main, args, catch_exceptions=False)


def load_weights(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def assert_weights_close(a, b, atol=1e-5):
    wa, wb = load_weights(a), load_weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=atol, rtol=0, msg=key)


@pytest.fixture(scope="module")
def tok(peaked_teacher_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(peaked_teacher_dir)


def test_learning_kl_to_teacher_falls_by_half(tiny_student_dir, kd_corpus, tmp_path):
    out = tmp_path / "run"
    result = cli(train_args(tiny_student_dir, kd_corpus, out, epochs=12, lr="5e-3", warmup_steps=5,
                            tokens_per_batch=512, eval_rows=16, eval_every=50))
    assert result.exit_code == 0, result.output
    evals = [m for m in read_metrics(out) if "eval_kl" in m]
    assert evals[0]["step"] == 0 and evals[-1]["step"] > 50
    assert evals[-1]["eval_kl"] <= 0.5 * evals[0]["eval_kl"], evals
    steps = [m for m in read_metrics(out) if "loss" in m]
    assert {"loss", "kd", "ce", "tokens_per_s", "lr"} <= set(steps[0])
    # OUT/final is an HF model dir that loads and generates with its chat template
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = out / "final"
    assert (final / "model.safetensors").is_file() and (final / "generation_config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert tokenizer.chat_template
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] > ids.shape[1]


def reference_sft(student_dir, corpus_dir, steps, lr, tokens_per_batch=256, max_seq_len=64):
    """Plain SFT written independently of the trainer's loss path: full logits from the HF model,
    CE at response positions, summed and divided by the step's response-token count."""
    from transformers import AutoModelForCausalLM

    from distill.train import data as train_data
    from distill.corpus import open_corpus
    from distill.train.config import TrainConfig
    from distill.train.loop import lr_at

    model = AutoModelForCausalLM.from_pretrained(student_dir, attn_implementation="sdpa")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    corpus = open_corpus(corpus_dir)
    spec = train_data.BatchSpec(max_seq_len=max_seq_len, tokens_per_batch=tokens_per_batch, batch_size=None,
                                grad_accum=1, world_size=1, seed=0)
    stats = train_data.VocabStats(vocab_size=model.config.vocab_size)
    it = train_data.iter_steps(corpus, corpus.lengths(), spec, rank=0, start_epoch=0, start_step=0, num_epochs=None,
                               exclude=None, collate_kwargs={"max_seq_len": max_seq_len, "pad_id": 0, "top_k": 0, "stats": stats})
    config = TrainConfig(student="x", corpus=("x",), out="x", lr=lr, max_steps=steps)
    losses = []
    for step in range(steps):
        _, _, micro = next(it)
        for g in opt.param_groups:
            g["lr"] = lr_at(config, step, steps)
        n = sum(m["num_tokens"] for m in micro)
        total = 0.0
        for m in micro:
            logits = model(input_ids=m["input_ids"], attention_mask=m["attention_mask"]).logits
            flat = logits.reshape(-1, logits.shape[-1])[m["positions"]]
            loss = torch.nn.functional.cross_entropy(flat.float(), m["targets"], reduction="sum") / n
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(total)
    return model, losses


def test_kd_weight_zero_is_plain_sft(tiny_student_dir, kd_corpus, tmp_path):
    out = tmp_path / "sft"
    result = cli(train_args(tiny_student_dir, kd_corpus, out, kd_weight=0, max_steps=3, lr="1e-3"))
    assert result.exit_code == 0, result.output
    model, ref_losses = reference_sft(tiny_student_dir, kd_corpus, steps=3, lr=1e-3)
    got = [m["loss"] for m in read_metrics(out) if "loss" in m]
    np.testing.assert_allclose(got, ref_losses, rtol=1e-5)
    assert all(m["ce"] == pytest.approx(m["loss"]) for m in read_metrics(out) if "loss" in m)
    trained = load_weights(out / "final")
    for name, param in model.state_dict().items():
        if name in trained:
            torch.testing.assert_close(trained[name], param, atol=2e-5, rtol=0, msg=name)


def test_eight_micro_batches_equal_two_by_four(tiny_student_dir, kd_rows, tok, tmp_path):
    corpus = write_corpus(tmp_path / "c8", kd_rows[:8], tok, top_k=8)
    a, b = tmp_path / "a", tmp_path / "b"
    for out, bs, accum in ((a, 1, 8), (b, 4, 2)):
        result = cli(train_args(tiny_student_dir, corpus, out, batch_size=bs, grad_accum=accum, max_steps=1, lr="1e-4"))
        assert result.exit_code == 0, result.output
    ma, mb = read_metrics(a)[0], read_metrics(b)[0]
    assert ma["response_tokens"] == mb["response_tokens"]
    for key in ("loss", "kd", "ce"):
        assert ma[key] == pytest.approx(mb[key], rel=1e-5)
    assert_weights_close(a / "final", b / "final", atol=1e-5)


def test_black_box_corpus_trains_ce_only(tiny_student_dir, black_box_corpus, tmp_path, capfd):
    out = tmp_path / "bb"
    result = cli(train_args(tiny_student_dir, black_box_corpus, out, max_steps=2, kd_weight=0.7))
    assert result.exit_code == 0, result.output
    err = result.output + capfd.readouterr().err
    assert "black-box" in err and "CE" in err
    steps = [m for m in read_metrics(out) if "loss" in m]
    assert all(m["kd"] == 0.0 and m["loss"] == pytest.approx(m["ce"]) for m in steps)


def test_out_of_vocab_teacher_ids_go_to_tail_warned_once(tiny_student_dir, kd_rows, tok, tmp_path, capfd):
    """A teacher with a larger (padded) vocabulary: stored ids >= the student's vocab are
    accepted, moved to the tail bucket, counted, and warned about once."""
    rows = []
    for r in kd_rows[:16]:
        ids = r.topk_ids.copy()
        ids[:, -1] = 350  # student vocab is 320
        rows.append(dataclasses.replace(r, topk_ids=ids))
    corpus = write_corpus(tmp_path / "oov", rows, tok, top_k=8)
    result = cli(train_args(tiny_student_dir, corpus, tmp_path / "out", max_steps=3))
    assert result.exit_code == 0, result.output
    err = result.output + capfd.readouterr().err
    assert err.count("warning: the corpus stores teacher top-k ids >= the student vocabulary") == 1
    assert "teacher top-k entries >= student vocab 320 moved to the tail bucket" in err
    assert all(np.isfinite(m["kd"]) for m in read_metrics(tmp_path / "out") if "kd" in m)


def test_checkpoints_atomic_and_pruned(tiny_student_dir, kd_corpus, tmp_path):
    out = tmp_path / "ck"
    result = cli(train_args(tiny_student_dir, kd_corpus, out, max_steps=7, save_every=2, keep_checkpoints=2))
    assert result.exit_code == 0, result.output
    folders = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert folders == ["step-0000006", "step-0000007"]
    state = json.loads((out / "checkpoints" / "step-0000006" / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and (out / "checkpoints" / "step-0000006" / "COMPLETE").is_file()
    # outside DeepSpeed the optimizer is torch's fused AdamW (its flag travels in the saved state)
    import torch
    saved = torch.load(out / "checkpoints" / "step-0000007" / "optimizer.bin", weights_only=False)
    assert [group["fused"] for group in saved["param_groups"]] == [True]
    # a second run into the same OUT without --resume is refused, nothing touched
    before = (out / "metrics.jsonl").read_text()
    result = cli(train_args(tiny_student_dir, kd_corpus, out, max_steps=7))
    assert result.exit_code == 2 and "--resume" in result.output
    assert (out / "metrics.jsonl").read_text() == before


# --------------------------------------------------------------------------- bad input

def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def bad_corpus(case, kd_corpus, tmp_path, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    from distill.corpus import open_corpus

    other = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    other.chat_template = "{{ messages }}"  # another tokenizer: its fingerprint differs
    if case == "tokenizer":
        rows = list(open_corpus(kd_corpus).iter_rows())[:8]
        return write_corpus(tmp_path / "tok", rows, other, top_k=8), "tokenizer fingerprint"
    if case == "schema":
        folder = _copy(kd_corpus, tmp_path / "schema")
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["schema_version"] = 99
        (folder / "manifest.json").write_text(json.dumps(manifest))
        return folder, "schema"
    if case == "checksum":
        folder = _copy(kd_corpus, tmp_path / "corrupt")
        shard = sorted((folder / "data").glob("*.parquet"))[0]
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size, different bytes
        shard.write_bytes(bytes(data))
        return folder, "checksum"
    assert case == "empty"
    return write_corpus(tmp_path / "empty", [], other, top_k=8), "empty"


@pytest.mark.parametrize("case", ["tokenizer", "schema", "checksum", "empty", "kd_weight", "student", "missing_corpus"])
def test_bad_input_fails_before_step_one(case, tiny_student_dir, kd_corpus, tmp_path, tiny_tokenizer_dir):
    out = tmp_path / "out"
    corpus, student, extra, expect = kd_corpus, tiny_student_dir, {}, None
    if case in ("tokenizer", "schema", "checksum", "empty"):
        corpus, expect = bad_corpus(case, kd_corpus, tmp_path, tiny_tokenizer_dir)
    elif case == "kd_weight":
        extra, expect = {"kd_weight": 1.5}, "--kd-weight"
    elif case == "student":
        student, expect = tmp_path / "no-such-student", "--student"
    elif case == "missing_corpus":
        corpus, expect = tmp_path / "nowhere", "--corpus"
    result = cli(train_args(student, corpus, out, max_steps=2, **extra))
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and expect in result.output, result.output
    assert not out.exists()


def test_recipe_defaults_flags_and_random_init(peaked_teacher_dir, kd_corpus, tmp_path):
    """--student tiny-test: a config recipe (random init) whose train: defaults apply under the flags."""
    from distill.train import load_train_config

    config = load_train_config(None, {"student": "tiny-test", "tokenizer": str(peaked_teacher_dir),
                                      "corpus": (str(kd_corpus),), "out": str(tmp_path / "x"), "lr": 2e-3})
    assert config.lr == 2e-3 and config.tokens_per_batch == 1024 and config.warmup_steps == 2
    yaml_path = tmp_path / "train.yaml"
    yaml_path.write_text("max_steps: 2\nkd_weight: 0.25\nbogus: 1\n")
    with pytest.raises(Exception, match="bogus"):
        load_train_config(str(yaml_path), {"student": "tiny-test", "tokenizer": str(peaked_teacher_dir)})
    yaml_path.write_text("max_steps: 2\nkd_weight: 0.25\n")
    out = tmp_path / "rand"
    result = cli(["train", "--config", str(yaml_path), "--student", "tiny-test", "--tokenizer", str(peaked_teacher_dir),
                  "--corpus", str(kd_corpus), "--out", str(out), "--max-seq-len", "64"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["kd_weight"] == 0.25 and saved["max_steps"] == 2 and saved["lr"] == 1e-3
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(out / "final").hidden_size == 64


def test_diverging_run_stops_with_a_clear_error_and_saves_no_final_model(tiny_student_dir, kd_corpus, tmp_path):
    """A learning rate far too high makes the loss non-finite: the run exits 5 (diverged) naming the step, the
    rate and what to change, keeps the checkpoints written so far, and writes no final model."""
    out = tmp_path / "diverged"
    result = cli(train_args(tiny_student_dir, kd_corpus, out, max_steps=8, save_every=1, keep_checkpoints=1,
                            max_grad_norm=0) + ["--lr", "1e30"])
    assert result.exit_code == 5, result.output
    assert "training diverged, so no final model was saved" in result.output
    assert re.search(r"the loss is (nan|inf|-inf) at step \d+ \(lr [0-9.]+e\+(29|30)\)", result.output), result.output
    assert "lower --lr" in result.output
    assert "checkpoints kept: step-" in result.output
    assert not (out / "final").exists()
    assert any((out / "checkpoints").glob("step-*/COMPLETE"))


def test_precision_flag_is_checked(tiny_student_dir, kd_corpus, tmp_path):
    """--precision fp32 trains on CPU as auto does; bf16 without a CUDA GPU is refused by name."""
    result = cli(train_args(tiny_student_dir, kd_corpus, tmp_path / "fp32", max_steps=1, precision="fp32"))
    assert result.exit_code == 0, result.output
    if not torch.cuda.is_available():
        result = cli(train_args(tiny_student_dir, kd_corpus, tmp_path / "bf16", max_steps=1, precision="bf16"))
        assert result.exit_code == 2 and "--precision bf16 needs a CUDA GPU" in result.output
