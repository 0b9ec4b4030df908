"""Multi-process training on CPU: DeepSpeed ZeRO-2/3 (DS_ACCELERATOR=cpu, gloo) under torchrun,
full and LoRA; 2 ranks == 1 rank; kill -9 then --resume reproduces the uninterrupted losses."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.train.conftest import REPO, read_metrics, run_cli, train_args
from tests.train.test_train import assert_weights_close, cli

pytestmark = pytest.mark.slow


def zero3_partition_everything(tmp_path):
    """The shipped zero3.json keeps parameters under 100k elements whole on every rank; the tiny
    student's are all that small, so tests use a copy that partitions every parameter (the LM head
    included) to exercise the gather path."""
    import json

    from distill.recipes import shipped_dir

    config = json.loads((shipped_dir("students") / "deepspeed" / "zero3.json").read_text())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path = tmp_path / "zero3-all.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_zero3_two_ranks_equal_one_rank_and_final_loads(tiny_student_dir, kd_corpus, tmp_path):
    """2 processes x 1 micro-batch (ZeRO-3) == 1 process x 2 micro-batches (no DeepSpeed, and
    ZeRO-3): same global batch, one division by the global token count -> same loss and update."""
    one, two = tmp_path / "one", tmp_path / "two"
    common = dict(max_steps=1, lr="1e-4")
    result = cli(train_args(tiny_student_dir, kd_corpus, one, grad_accum=2, **common))
    assert result.exit_code == 0, result.output
    run_cli(train_args(tiny_student_dir, kd_corpus, two, deepspeed=zero3_partition_everything(tmp_path), **common), nproc=2)
    m1, m2 = read_metrics(one)[0], read_metrics(two)[0]
    assert m1["response_tokens"] == m2["response_tokens"]
    for key in ("loss", "kd", "ce"):
        assert m2[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-6)
    assert_weights_close(one / "final", two / "final", atol=1e-5)
    # and one process under ZeRO-3 itself, without a launcher (in-process)
    one_ds = tmp_path / "one_ds"
    result = cli(train_args(tiny_student_dir, kd_corpus, one_ds, grad_accum=2, deepspeed="zero3", **common))
    assert result.exit_code == 0, result.output
    assert read_metrics(one_ds)[0]["loss"] == pytest.approx(m1["loss"], rel=1e-5)
    assert_weights_close(one / "final", one_ds / "final", atol=1e-5)
    assert "WORLD_SIZE" not in os.environ  # the 1-process rendezvous was cleaned up
    # the ZeRO-3 OUT/final is a complete HF model dir: loads and generates
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(two / "final")
    tok = AutoTokenizer.from_pretrained(two / "final")
    ids = torch.tensor([tok.encode("the sum of")])
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] > ids.shape[1]


@pytest.mark.parametrize("stage,lora", [("zero2", False), ("zero2", True), ("zero3", True)])
def test_deepspeed_two_ranks(stage, lora, tiny_student_dir, kd_corpus, tmp_path):
    out = tmp_path / "out"
    extra = {"lora": True, "lora_rank": 4, "lr": "1e-2"} if lora else {"save_every": 1}
    ds = zero3_partition_everything(tmp_path) if stage == "zero3" else stage
    run_cli(train_args(tiny_student_dir, kd_corpus, out, deepspeed=ds, max_steps=2, **extra), nproc=2)
    steps = [m for m in read_metrics(out) if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2] and all(np.isfinite(m["loss"]) for m in steps)
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    trained = load_file(str(out / "final" / "model.safetensors"))
    initial = load_file(str(Path(tiny_student_dir) / "model.safetensors"))
    changed = [k for k in initial if k in trained and not torch.equal(initial[k], trained[k])]
    assert changed, "no weight changed"
    if stage == "zero2" and not lora:
        # a DeepSpeed checkpoint (engine state per rank), and --resume continues from it
        ckpt = out / "checkpoints" / "step-0000001"
        assert (ckpt / "COMPLETE").is_file() and (ckpt / "pytorch_model").is_dir()
        shutil.rmtree(out / "checkpoints" / "step-0000002")
        run_cli(train_args(tiny_student_dir, kd_corpus, out, deepspeed=stage, max_steps=3, save_every=1, resume=True), nproc=2)
        resumed = [m for m in read_metrics(out) if "loss" in m]
        assert [m["step"] for m in resumed] == [1, 2, 3]
        assert resumed[1]["loss"] == pytest.approx(steps[1]["loss"], rel=1e-6)
    if lora:
        assert (out / "adapter" / "adapter_config.json").is_file()
        assert not any("lora" in k for k in trained), "OUT/final must hold the merged model"
        assert all("proj" in k for k in changed), changed  # only LoRA-wrapped projections moved
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=2, do_sample=False).shape[1] == 5


def test_kill_then_resume_matches_uninterrupted(tiny_student_dir, kd_corpus, tmp_path):
    steps, every = 24, 4
    args = dict(max_steps=steps, save_every=every, tokens_per_batch=512, gradient_checkpointing=True)
    ref = tmp_path / "ref"
    result = cli(train_args(tiny_student_dir, kd_corpus, ref, **args))
    assert result.exit_code == 0, result.output
    out = tmp_path / "killed"
    # The run SIGKILLs itself at a fixed point (the start of step 7: past the step-4 checkpoint,
    # mid-interval), so the test kills the same step on any machine, fast or slow.
    kill_at = every + 2
    code = ("import os, signal, sys; import distill.train.loop as loop; step = loop.train_step\n"
            "def dying(engine, micro, i, total):\n"
            f"    if i == {kill_at}: os.kill(os.getpid(), signal.SIGKILL)\n"
            "    return step(engine, micro, i, total)\n"
            "loop.train_step = dying; from distill.cli import main; sys.argv[0] = 'distill'; main()")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code, *train_args(tiny_student_dir, kd_corpus, out, **args)],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    logged = [m for m in read_metrics(out) if "loss" in m]
    assert [m["step"] for m in logged] == list(range(1, kill_at + 1))
    assert [p.name for p in (out / "checkpoints").glob("step-*")] == [f"step-{every:07d}"]
    run_cli(train_args(tiny_student_dir, kd_corpus, out, resume=True, **args))
    got = {m["step"]: m["loss"] for m in read_metrics(out) if "loss" in m}
    want = {m["step"]: m["loss"] for m in read_metrics(ref) if "loss" in m}
    assert sorted(got) == list(range(1, steps + 1))
    for step in range(1, steps + 1):
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-7), step
    assert_weights_close(ref / "final", out / "final", atol=1e-6)
