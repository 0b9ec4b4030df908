"""SIGTERM (a SageMaker stop or spot interruption, a Kubernetes eviction, `docker stop`) in every
stage: a resumable state is left, the process exits 75 with one line saying how long it took, and
the same command again finishes with exactly what an uninterrupted run gives.

Each run sends itself SIGTERM at a fixed point (a patched function counts its calls), so the
signal lands at the same moment on any machine, fast or slow; the real signal handler does the
rest. One test also signals from outside, as an orchestrator does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from distill.cli import main
from distill.errors import ExitCode
from tests.train.conftest import REPO, read_metrics, train_args

PREEMPTED = int(ExitCode.PREEMPTED)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def run_signalled(module: str, name: str, call: int, args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """``distill ARGS`` in a subprocess that sends itself SIGTERM as call number ``call`` of
    ``module.name`` starts (``name`` may be ``Class.method``; the call itself then goes on)."""
    owner, _, attr = name.rpartition(".")
    code = ("import os, signal, sys, importlib\n"
            f"m = importlib.import_module({module!r})\n"
            f"for part in {owner!r}.split('.') if {owner!r} else []: m = getattr(m, part)\n"
            f"real = getattr(m, {attr!r}); n = [0]\n"
            "def signalled(*a, **k):\n"
            "    n[0] += 1\n"
            f"    if n[0] == {call}: os.kill(os.getpid(), signal.SIGTERM)\n"
            "    return real(*a, **k)\n"
            f"setattr(m, {attr!r}, signalled)\n"
            "from distill.cli import entry; sys.argv[0] = 'distill'; entry()")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=ENV, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_train_sigterm_checkpoints_then_resumes_to_the_uninterrupted_losses(tiny_student_dir, kd_corpus, tmp_path):
    steps = 16
    args = dict(max_steps=steps, save_every=0, tokens_per_batch=512)
    ref = tmp_path / "ref"
    assert CliRunner().invoke(main, train_args(tiny_student_dir, kd_corpus, ref, **args)).exit_code == 0
    out = tmp_path / "stopped"
    # SIGTERM as step 6 starts (0-based call 5 of train_step): step 6 completes, then the loop stops
    proc = run_signalled("distill.train.loop", "train_step", 6, train_args(tiny_student_dir, kd_corpus, out, **args))
    assert proc.returncode == PREEMPTED, proc.stderr[-3000:]
    (line,) = error_lines(proc.stderr)
    assert line.startswith("error: SIGTERM: checkpoint of step 6 of 16 written in ") and "with --resume to continue" in line
    seconds = float(line.split("stopped ")[1].split(" s after")[0])
    assert 0 <= seconds < 60
    assert [p.name for p in (out / "checkpoints").glob("step-*")] == ["step-0000006"]
    assert not (out / "final").exists()
    assert [m["step"] for m in read_metrics(out) if "loss" in m] == list(range(1, 7))
    # the same command again, with --resume: continues from the checkpoint
    again = CliRunner().invoke(main, train_args(tiny_student_dir, kd_corpus, out, resume=True, **args))
    assert again.exit_code == 0, again.output
    got = {m["step"]: m["loss"] for m in read_metrics(out) if "loss" in m}
    want = {m["step"]: m["loss"] for m in read_metrics(ref) if "loss" in m}
    assert sorted(got) == list(range(1, steps + 1))
    for step in range(1, steps + 1):
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-7), step
    assert (out / "final" / "config.json").is_file()


def test_train_stops_on_an_outside_sigterm(tiny_student_dir, kd_corpus, tmp_path):
    """As an orchestrator does it: the signal comes from another process, at whatever step."""
    out = tmp_path / "run"
    args = train_args(tiny_student_dir, kd_corpus, out, max_steps=400, save_every=0, tokens_per_batch=512)
    proc = subprocess.Popen([sys.executable, "-m", "distill", *map(str, args)], env=ENV, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not ((out / "metrics.jsonl").is_file() and any("loss" in m for m in read_metrics(out))):
        time.sleep(0.2)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    assert proc.returncode == PREEMPTED, stderr[-3000:]
    assert took < 60, took
    (checkpoint,) = (out / "checkpoints").glob("step-*")
    logged = [m["step"] for m in read_metrics(out) if "loss" in m]
    assert int(checkpoint.name.split("-")[1]) == logged[-1] < 400


GENERATE = ["--max-new-tokens", "8", "--top-k", "5", "--temperature", "0.7", "--top-p", "0.9", "--samples-per-prompt", "2",
            "--rows-per-shard", "2", "--batch-size", "1", "--no-progress"]


def test_generate_sigterm_drops_the_shard_in_flight_and_the_rerun_completes_it(tiny_teacher_dir, tmp_path):
    from distill.corpus import open_corpus

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"prompt": f"Question {i}: what is {i} plus {i + 1}?"}) + "\n" for i in range(6)))
    ref, out = tmp_path / "ref", tmp_path / "stopped"
    args = ["generate", "--teacher", tiny_teacher_dir, "--prompts", seeds, *GENERATE]
    assert CliRunner().invoke(main, [*map(str, args), "--out", str(ref)]).exit_code == 0
    # 12 rows, 2 per shard, one teacher call per shard: SIGTERM as shard 3 (the 4th) is answered
    proc = run_signalled("distill.teachers.hf", "HFTeacher.generate", 4, [*args, "--out", out])
    assert proc.returncode == PREEMPTED, proc.stderr[-3000:]
    (line,) = error_lines(proc.stderr)
    assert "3 of 6 shard(s) committed" in line and "shard 3 in flight dropped" in line, line
    assert not (out / "manifest.json").exists()
    assert len(list((out / "data").glob("train-*.parquet"))) == 3
    again = CliRunner().invoke(main, [*map(str, args), "--out", str(out)])
    assert again.exit_code == 0, again.output
    a = {r.id: r for r in open_corpus(out).iter_rows()}
    b = {r.id: r for r in open_corpus(ref).iter_rows()}
    assert sorted(a) == sorted(b) and len(a) == 12
    for key, row in a.items():
        np.testing.assert_array_equal(row.response_ids, b[key].response_ids)
        np.testing.assert_array_equal(row.topk_ids, b[key].topk_ids)
        np.testing.assert_array_equal(row.topk_logprobs, b[key].topk_logprobs)


def test_augment_sigterm_keeps_finished_rounds_and_the_rerun_gives_the_same_prompts(tiny_teacher_dir, tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in (
        "Plan a three day trip to Lisbon for two people on a small budget.", "Write a haiku about autumn leaves.",
        "Explain how a bicycle gear system trades speed for force.", "Summarize the causes of the French Revolution.")))
    common = ["augment", "--teacher", tiny_teacher_dir, "--prompts", seeds, "-n", "500", "--requests-per-round", "2",
              "--max-rounds", "3", "--few-shot", "2", "--generation-max-tokens", "24", "--no-progress",
              "--request-form", "off", "--length-range", "0", "--no-script-check", "--min-words", "1"]
    ref, out = tmp_path / "ref", tmp_path / "stopped"
    assert CliRunner().invoke(main, [*map(str, common), "--out", str(ref)]).exit_code == 0
    # each round writes its prompts in one teacher call (scoring is a separate one, teacher.score):
    # SIGTERM as round 2 is written
    proc = run_signalled("distill.teachers.hf", "HFTeacher.generate", 2, [*common, "--out", out])
    assert proc.returncode == PREEMPTED, proc.stderr[-3000:]
    (line,) = error_lines(proc.stderr)
    assert "the round in flight dropped" in line, line
    assert sorted(p.name for p in (out / "rounds").glob("*.json")) == ["round-00001.json"]
    assert not (out / "augment.json").exists()
    again = CliRunner().invoke(main, [*map(str, common), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert (out / "prompts.jsonl").read_text() == (ref / "prompts.jsonl").read_text()


def test_eval_sigterm_leaves_no_report(tiny_teacher_dir, tmp_path):
    suite = tmp_path / "suite.jsonl"
    suite.write_text("".join(json.dumps({"prompt": f"What is {i} plus 1?", "reference": str(i + 1), "scorer": "contains"}) + "\n"
                             for i in range(8)))
    out = tmp_path / "eval"
    args = ["eval", "--model", f"a={tiny_teacher_dir}", "--model", f"b={tiny_teacher_dir}", "--suite", suite, "--out", out,
            "--max-new-tokens", "4", "--batch-size", "4", "--speed-prompts", "2", "--speed-rounds", "1"]
    # SIGTERM during model b's first batch, after model a's report was written (marked incomplete)
    proc = run_signalled("distill.teachers.hf", "generate_batch", 3, args)
    assert proc.returncode == PREEMPTED, proc.stderr[-3000:]
    (line,) = error_lines(proc.stderr)
    assert "eval: no report written" in line, line
    assert not (out / "report.json").exists() and not (out / "report.md").exists()


def test_commands_that_do_not_poll_the_flag_keep_the_default_sigterm(tmp_path):
    """inspect / init-student never look at the stop flag: SIGTERM must end them at once (the
    default action), not be recorded and ignored."""
    from distill.cli import STOP_AWARE, _command

    assert _command(["--debug", "train", "--resume"]) == "train" and _command(["--version"]) is None
    assert _command(["pipeline", "run", "spec.yaml"]) == "pipeline run" and _command(["pipeline", "status", "x"]) == "pipeline status"
    assert STOP_AWARE == {"generate", "augment", "train", "eval", "logs", "pipeline run"}
    code = ("import os, signal, sys, time\n"
            "import distill.inspect as ins\n"
            "def slow(*a, **k):\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(30)\n"
            "ins.run = slow\n"
            "from distill.cli import entry; sys.argv[0] = 'distill'; entry()")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code, "inspect", str(tmp_path)], env=ENV, cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == -signal.SIGTERM and time.monotonic() - started < 20, proc.stderr[-2000:]
