"""A run spread over pods, as the rendered Argo workflow runs it: prepare, generate in N shard
workers at once, train, then a plain run that finishes: the same student and decision as one
plain run, and the teacher asked once per prompt."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.pipeline.helpers import REPO, cli, env, ledger, prompts, spec, write_prompts

pytestmark = pytest.mark.slow


def test_prepare_shards_train_finish_equals_one_plain_run(tmp_path):
    write_prompts(tmp_path / "src" / "a.jsonl", prompts(90, seed=51))
    plain = spec(tmp_path, spec_name="plain.yaml", store=str(tmp_path / "plain"),
                 generate={"max_new_tokens": 4, "temperature": 0, "batch_size": 128, "progress": False,
                           "rows_per_shard": 20})
    steps = spec(tmp_path, spec_name="steps.yaml", store=str(tmp_path / "steps"),
                 generate={"max_new_tokens": 4, "temperature": 0, "batch_size": 128, "progress": False,
                           "rows_per_shard": 20})
    assert cli("pipeline", "run", str(plain), "--run-id", "r").returncode == 0

    early = cli("pipeline", "run", str(steps), "--run-id", "r", "--only", "train")
    assert early.returncode == 2 and "is not prepared" in early.stderr
    outcome = tmp_path / "outcome"
    prepared = cli("pipeline", "run", str(steps), "--run-id", "r", "--only", "prepare", "--outcome-file", str(outcome))
    assert prepared.returncode == 0, prepared.stderr
    assert outcome.read_text() == "prepared\n"
    workers = [subprocess.Popen([sys.executable, "-m", "distill", "pipeline", "run", str(steps), "--run-id", "r",
                                 "--only", "generate", "--shard", f"{i}/3"], env=env(), cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(3)]
    for w in workers:
        out, _ = w.communicate(timeout=300)
        assert w.returncode == 0, out
    assert not (tmp_path / "steps/runs/r/generate/stage.json").exists()  # the workers do not finish the stage
    early = cli("pipeline", "run", str(steps), "--run-id", "r", "--only", "train")
    assert early.returncode == 2 and "corpus is not complete" in early.stderr
    merged = cli("pipeline", "run", str(steps), "--run-id", "r", "--only", "generate")  # one pod: the manifest
    assert merged.returncode == 0, merged.stderr
    trained = cli("pipeline", "run", str(steps), "--run-id", "r", "--only", "train")
    assert trained.returncode == 0, trained.stderr
    done = cli("pipeline", "run", str(steps), "--run-id", "r", "--outcome-file", str(outcome))
    assert done.returncode == 0, done.stderr
    assert outcome.read_text() == "promoted\n"
    gen = json.loads((tmp_path / "steps/runs/r/generate/stage.json").read_text())
    assert gen["workers"] == 3 and gen["rows"] == 90 and gen["teacher_rows"] == 90  # each prompt asked once, by its worker
    a = (tmp_path / "plain/runs/r/train/final/model.safetensors").read_bytes()
    b = (tmp_path / "steps/runs/r/train/final/model.safetensors").read_bytes()
    assert a == b
    assert ledger(tmp_path / "plain")["versions"]["r"]["weights_fingerprint"] == \
        ledger(tmp_path / "steps")["versions"]["r"]["weights_fingerprint"]
