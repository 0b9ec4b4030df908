"""`accelerate launch` runs the same `python -m distill train` command: 2 CPU processes (gloo)
equal 1 process with 2 accumulation steps; accelerate's --use_deepspeed environment becomes
--deepspeed, and a DeepSpeed run does not leave that environment behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from distill.config import ConfigError
from distill.train.launch import launcher_deepspeed
from tests.train.conftest import REPO, read_metrics, run_cli, train_args
from tests.train.test_train import assert_weights_close, cli


def test_accelerate_deepspeed_environment_becomes_the_deepspeed_flag():
    assert launcher_deepspeed({}) is None
    assert launcher_deepspeed({"ACCELERATE_USE_DEEPSPEED": "false", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}) is None
    assert launcher_deepspeed({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}) == "zero2"
    assert launcher_deepspeed({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
                               "ACCELERATE_DEEPSPEED_CONFIG_FILE": "none"}) == "zero3"
    assert launcher_deepspeed({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
                               "ACCELERATE_DEEPSPEED_CONFIG_FILE": "/x/ds.json"}) == "/x/ds.json"
    assert launcher_deepspeed({"ACCELERATE_USE_DEEPSPEED": "true"}) == "zero2"  # accelerate's default stage
    for stage in ("0", "1"):
        with pytest.raises(ConfigError, match="ZeRO stage .* --zero_stage 2"):
            launcher_deepspeed({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": stage})


_TWO_RUNS = r"""
import json, os, sys
from click.testing import CliRunner
from distill.cli import main
student, corpus, tmp = sys.argv[1:4]
common = ["--student", student, "--corpus", corpus, "--max-steps", "1", "--tokens-per-batch", "256", "--max-seq-len", "64"]
assert "ACCELERATE_USE_DEEPSPEED" not in os.environ
result = CliRunner().invoke(main, ["train", *common, "--out", tmp + "/ds", "--deepspeed", "zero2"], catch_exceptions=False)
assert result.exit_code == 0, result.output
after_ds = "ACCELERATE_USE_DEEPSPEED" in os.environ
result = CliRunner().invoke(main, ["train", *common, "--out", tmp + "/plain"], catch_exceptions=False)
print(json.dumps({"after_ds": after_ds, "exit": result.exit_code, "output": result.output[-2000:],
                  "deepspeed": json.load(open(tmp + "/plain/train_config.json"))["deepspeed"] if result.exit_code == 0 else None}))
"""


@pytest.mark.slow
def test_deepspeed_run_leaves_no_launcher_environment_behind(tiny_student_dir, kd_corpus, tmp_path):
    """accelerate marks the process environment as DeepSpeed when given a plugin; after a
    --deepspeed run, a later run in the same process without --deepspeed must not read that as
    `accelerate launch --use_deepspeed`. (A subprocess: DeepSpeed keeps process-group state that a
    second in-process DeepSpeed run elsewhere in the suite would trip over.)"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)}
    for key in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE", "WORLD_SIZE", "RANK"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-c", _TWO_RUNS, str(tiny_student_dir), str(kd_corpus), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["after_ds"] is False
    assert result["exit"] == 0 and result["deepspeed"] is None, result["output"]


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
