"""kill -9 at a random point of `pipeline run`, then the same run id again: the same final store as
an uninterrupted run. Two runs at once on one store: exactly one runs, the other exits 6; a dead
holder's lock is taken over."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pipeline.helpers import REPO, cli, env, ledger, prompts, spec, write_prompts

pytestmark = pytest.mark.slow


def _popen(path: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "distill", "pipeline", "run", str(path), *extra], env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)


def _final(store: Path, run_id: str) -> dict:
    state = ledger(store)
    decision = json.loads((store / f"runs/{run_id}/decision.json").read_text())
    weights = (store / f"runs/{run_id}/train/final/model.safetensors").read_bytes()
    return {"alias": state["aliases"], "outcome": state["runs"][run_id]["outcome"], "passed": decision["passed"],
            "values": decision["values"], "weights": weights, "watermarks": state["watermarks"],
            "weights_fingerprint": state["versions"][run_id]["weights_fingerprint"]}


def test_kill_9_at_a_random_point_then_rerun_gives_the_same_store(tmp_path):
    write_prompts(tmp_path / "src" / "a.jsonl", prompts(300, seed=5))
    reference = spec(tmp_path, spec_name="reference.yaml", store=str(tmp_path / "reference"))
    started = time.monotonic()
    done = cli("pipeline", "run", str(reference), "--run-id", "nightly")
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    expected = _final(tmp_path / "reference", "nightly")

    crashed = spec(tmp_path, spec_name="crashed.yaml", store=str(tmp_path / "crashed"))
    seed = int(os.environ.get("DISTILL_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    kills = 0
    for attempt in range(6):
        proc = _popen(crashed, "--run-id", "nightly")
        delay = rng.uniform(1.0, max(2.0, elapsed * 0.9))
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        output = proc.stdout.read()
        assert proc.returncode == 0, f"seed {seed}:\n{output}"
        break
    else:
        final = cli("pipeline", "run", str(crashed), "--run-id", "nightly")
        assert final.returncode == 0, f"seed {seed}:\n{final.stderr}"
    assert kills >= 1, f"seed {seed}: no kill landed before the run ended"
    got = _final(tmp_path / "crashed", "nightly")
    assert got == expected, f"seed {seed}: the crashed-and-resumed store differs"
    again = cli("pipeline", "run", str(crashed), "--run-id", "nightly")
    assert again.returncode == 0 and "already finished" in again.stderr


def test_two_runs_at_once_one_waits_out_with_exit_6_and_a_dead_holder_is_taken_over(tmp_path):
    write_prompts(tmp_path / "src" / "a.jsonl", prompts(200, seed=6))
    path = spec(tmp_path)
    first = _popen(path, "--run-id", "one")
    lock = tmp_path / "store" / "pipeline.lock"
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text()):
        assert first.poll() is None and time.monotonic() < deadline, first.stdout.read() if first.poll() is not None else "no lock"
        time.sleep(0.05)
    second = cli("pipeline", "run", str(path), "--run-id", "two")
    assert second.returncode == 6, second.stderr
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "in use by pid" in errors[0] and "distill pipeline run one" in errors[0]
    assert not (tmp_path / "store" / "runs" / "two").exists()

    first.send_signal(signal.SIGKILL)  # the holder dies without releasing anything
    first.wait()
    third = cli("pipeline", "run", str(path), "--run-id", "one")
    assert third.returncode == 0, third.stderr
    assert ledger(tmp_path / "store")["aliases"] == {"champion": "one"}


def test_sigterm_stops_at_a_safe_point_with_75_and_the_rerun_finishes(tmp_path):
    write_prompts(tmp_path / "src" / "a.jsonl", prompts(400, seed=8))
    path = spec(tmp_path)
    proc = _popen(path, "--run-id", "r")
    deadline = time.monotonic() + 120
    generate = tmp_path / "store/runs/r/generate"
    while not generate.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out
    assert not (tmp_path / "store/ledger.json").exists()
    rerun = cli("pipeline", "run", str(path), "--run-id", "r")
    assert rerun.returncode == 0, rerun.stderr
    assert "collect: done earlier, skipped" in rerun.stderr
