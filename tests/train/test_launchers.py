"""`accelerate launch` runs the same `python -m distill train` command: 2 CPU processes (gloo)
equal 1 process with 2 accumulation steps; accelerate's --use_deepspeed environment becomes
--deepspeed."""

from __future__ import annotations

import os
import sys

import pytest

from distill.config import ConfigError
from distill.train import launcher_deepspeed
from tests.train.conftest import read_metrics, run_cli, train_args
from tests.train.test_train import assert_weights_close, cli


def test_accelerate_deepspeed_environment_becomes_the_deepspeed_flag():
    assert launcher_deepspeed({}) is None
    assert launcher_deepspeed({"ACCELERATE_USE_DEEPSPEED": "false", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}) is None
    assert launcher_deepspeed({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}) == "zero2"
    assert launcher_deepspeed({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
                               "ACCELERATE_DEEPSPEED_CONFIG_FILE": "none"}) == "zero3"
    assert launcher_deepspeed({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
                               "ACCELERATE_DEEPSPEED_CONFIG_FILE": "/x/ds.json"}) == "/x/ds.json"
    for stage in ("0", "1", ""):
        with pytest.raises(ConfigError, match="--zero_stage 2|3"):
            launcher_deepspeed({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": stage})


def test_accelerate_deepspeed_environment_is_used_and_recorded(tiny_student_dir, kd_corpus, tmp_path, monkeypatch):
    """One process started as `accelerate launch --use_deepspeed --zero_stage 2` would start it:
    the run uses ZeRO-2 and says so in train_config.json."""
    import json

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    out = tmp_path / "out"
    result = cli(train_args(tiny_student_dir, kd_corpus, out, max_steps=1))
    assert result.exit_code == 0, result.output
    assert json.loads((out / "train_config.json").read_text())["deepspeed"] == "zero2"
    assert (out / "final" / "model.safetensors").is_file()


@pytest.mark.slow
def test_accelerate_launch_two_processes_equal_one(tiny_student_dir, kd_corpus, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on a CPU machine: accelerate's multi-GPU
    launcher is torchrun underneath and the processes join a gloo group (DDP on CPU). 2 ranks x 1
    micro-batch == 1 process x 2 micro-batches, in loss and update. With --packing, so the packed
    plan's rank split is exercised too. (`--cpu --num_processes 2` would start one process: accelerate
    starts several CPU processes only through mpirun with --mpirun_hostfile.)"""
    common = dict(max_steps=2, lr="1e-3", packing=True, max_seq_len=128)
    one, two = tmp_path / "one", tmp_path / "two"
    result = cli(train_args(tiny_student_dir, kd_corpus, one, grad_accum=2, **common))
    assert result.exit_code == 0, result.output
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(29600 + os.getpid() % 300), "-m", "distill"]
    proc = run_cli(train_args(tiny_student_dir, kd_corpus, two, **common), launcher=launch)
    assert "2 process(es)" in proc.stderr
    m1 = [m for m in read_metrics(one) if "loss" in m]
    m2 = [m for m in read_metrics(two) if "loss" in m]
    assert [m["step"] for m in m2] == [1, 2]
    for a, b in zip(m1, m2):
        assert a["response_tokens"] == b["response_tokens"]
        for key in ("loss", "kd", "ce"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
    assert_weights_close(one / "final", two / "final", atol=1e-5)
