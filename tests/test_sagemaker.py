"""The SageMaker training-job contract (distill/sagemaker.py), run the way SageMaker runs the image:
``distill train`` with nothing else, against a temporary /opt/ml tree (DISTILL_SAGEMAKER_ROOT)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from distill.sagemaker import METRIC_DEFINITIONS, decode_hyperparameters, torchrun_args
from tests.train.conftest import REPO


def ml_tree(root: Path, hyperparameters: dict, channels: dict[str, Path], host: str = "algo-1") -> Path:
    """/opt/ml as SageMaker lays it out: hyperparameter values JSON-encoded as the SDK sends them."""
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps({k: json.dumps(v) for k, v in hyperparameters.items()}))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": host, "hosts": [host]}))
    for name, source in channels.items():
        target = root / "input" / "data" / name
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            target.mkdir(parents=True)
            shutil.copy(source, target / source.name)
    return root


def run_job(root: Path, extra_env: dict | None = None, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "DISTILL_SAGEMAKER_ROOT": str(root), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO), **(extra_env or {})}
    # its own process group, so a hung job's torchrun workers go with it on timeout
    proc = subprocess.Popen([sys.executable, "-m", "distill", "train"], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"the job ran past {timeout} s: {stderr[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_hyperparameters_are_json_decoded_as_the_sdk_encodes_them(tmp_path):
    path = tmp_path / "hp.json"
    path.write_text(json.dumps({"stage": '"train"', "lr": "0.001", "max-steps": "40", "corpus": '["a", "b"]',
                                "note": "plain text", "lora": "true"}))
    assert decode_hyperparameters(path) == {"stage": "train", "lr": 0.001, "max_steps": 40, "corpus": ["a", "b"],
                                            "note": "plain text", "lora": True}


def test_torchrun_arguments_from_resourceconfig():
    config = {"current_host": "algo-2", "hosts": ["algo-3", "algo-1", "algo-2"]}
    assert torchrun_args(config, 8) == ["--nnodes", "3", "--node_rank", "1", "--nproc_per_node", "8",
                                        "--master_addr", "algo-1", "--master_port", "29500"]
    assert torchrun_args({"current_host": "algo-1", "hosts": ["algo-1"]}, 1)[:4] == ["--nnodes", "1", "--node_rank", "0"]
    from distill.config import ConfigError

    with pytest.raises(ConfigError, match="current_host 'algo-9' is not among hosts"):
        torchrun_args({"current_host": "algo-9", "hosts": ["algo-1"]}, 1)


def test_a_train_job_writes_a_loadable_student_and_prints_metrics(tiny_student_dir, kd_corpus, tmp_path):
    root = ml_tree(tmp_path / "ml", {"stage": "train", "max_steps": 4, "tokens_per_batch": 256, "max_seq_len": 64,
                                     "lr": 0.001, "eval_rows": 4},
                   {"corpus": kd_corpus, "student": tiny_student_dir})
    proc = run_job(root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(root / "model")
    assert sum(p.numel() for p in model.parameters()) > 0
    assert (root / "checkpoints" / "train" / "metrics.jsonl").is_file() and not (root / "output" / "failure").exists()
    # the estimator's metric definitions match what the job prints
    log = proc.stdout + proc.stderr
    for definition in METRIC_DEFINITIONS:
        found = re.findall(definition["Regex"], log)
        if definition["Name"].startswith(("train:", "validation:")):
            assert found and all(float(v) == float(v) for v in found), definition
    # a restarted job (spot) finds the finished run and resumes it: nothing retrained
    again = run_job(root)
    assert again.returncode == 0, again.stderr[-3000:]


def test_a_generate_job_writes_a_corpus(tiny_teacher_dir, tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"prompt": f"What is {i} plus {i}?"}) + "\n" for i in range(5)))
    root = ml_tree(tmp_path / "ml", {"stage": "generate", "max_new_tokens": 6, "top_k": 4, "batch_size": 4},
                   {"prompts": seeds, "teacher": tiny_teacher_dir})
    proc = run_job(root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from distill.corpus import open_corpus

    corpus = open_corpus(root / "model")
    assert corpus.num_rows == 5 and corpus.top_k == 4
    assert (root / "checkpoints" / "generate" / "manifest.json").is_file()  # the resumable state


@pytest.mark.parametrize("hyperparameters, expected, code", [
    ({"stage": "train", "lr": "fast"}, "hyperparameters.json: lr: ", 2),
    ({"stage": "train", "max_stepz": 3}, "hyperparameters.json: max_stepz: unknown key", 2),
    ({"stage": "deploy"}, "hyperparameters.json: stage: must be one of generate, augment, train, eval, pipeline, got 'deploy'", 2),
])
def test_a_bad_hyperparameter_writes_the_failure_file(hyperparameters, expected, code, tiny_student_dir, kd_corpus, tmp_path):
    root = ml_tree(tmp_path / "ml", hyperparameters, {"corpus": kd_corpus, "student": tiny_student_dir})
    proc = run_job(root)
    assert proc.returncode == code, proc.stderr[-2000:]
    failure = (root / "output" / "failure").read_text()
    assert failure.startswith(expected) and len(failure) <= 1024, failure
    assert [line for line in proc.stderr.splitlines() if line.startswith("error: ")] == [f"error: {failure}"]
    assert not (root / "model").exists() or not any((root / "model").iterdir())


@pytest.mark.slow
def test_two_processes_on_one_node_under_torchrun(tiny_student_dir, kd_corpus, tmp_path):
    # the host must resolve here (on SageMaker, algo-1 does)
    root = ml_tree(tmp_path / "ml", {"stage": "train", "max_steps": 3, "tokens_per_batch": 256, "max_seq_len": 64,
                                     "lr": 0.001}, {"corpus": kd_corpus, "student": tiny_student_dir}, host="localhost")
    import socket

    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = run_job(root, {"DISTILL_NPROC_PER_NODE": "2", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false",
                          "DISTILL_MASTER_PORT": str(port)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"--nnodes 1 --node_rank 0 --nproc_per_node 2 --master_addr localhost --master_port {port}" in proc.stderr
    assert "2 process(es)" in proc.stdout + proc.stderr
    assert (root / "model" / "config.json").is_file()


@pytest.mark.slow
def test_sigterm_reaches_the_torchrun_workers_which_checkpoint_and_the_rerun_matches(tiny_student_dir, kd_corpus, tmp_path):
    """A stopped or interrupted 2-process job: SageMaker signals the container's process, which
    passes it to torchrun, which passes it to the workers (their own sessions); they checkpoint at
    the same step, the job exits 75, and the job run again continues to the uninterrupted losses."""
    import socket
    import time

    from tests.train.conftest import read_metrics

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    hyper = {"stage": "train", "max_steps": 60, "tokens_per_batch": 256, "max_seq_len": 64, "lr": 0.001, "save_every": 0}
    channels = {"corpus": kd_corpus, "student": tiny_student_dir}
    env = {"DISTILL_NPROC_PER_NODE": "2", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}
    ref = ml_tree(tmp_path / "ref", hyper, channels, host="localhost")
    assert run_job(ref, {**env, "DISTILL_MASTER_PORT": str(free_port())}).returncode == 0
    root = ml_tree(tmp_path / "ml", hyper, channels, host="localhost")
    full_env = {**os.environ, "DISTILL_SAGEMAKER_ROOT": str(root), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                "PYTHONPATH": str(REPO), **env, "DISTILL_MASTER_PORT": str(free_port())}
    proc = subprocess.Popen([sys.executable, "-m", "distill", "train"], env=full_env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    state = root / "checkpoints" / "train"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not ((state / "metrics.jsonl").is_file()
                                               and any("loss" in m for m in read_metrics(state))):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # to the job's own process only, as tini passes docker stop's signal on
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the stopped job did not exit within 120 s")
    assert proc.returncode == 75, stderr[-3000:]
    (checkpoint,) = (state / "checkpoints").glob("step-*")
    assert int(checkpoint.name.split("-")[1]) < 60 and not (root / "model" / "config.json").exists()
    assert "rerun the same job to resume" in (root / "output" / "failure").read_text()
    again = run_job(root, {**env, "DISTILL_MASTER_PORT": str(free_port())})
    assert again.returncode == 0, again.stderr[-3000:]
    got = {m["step"]: m["loss"] for m in read_metrics(state) if "loss" in m}
    want = {m["step"]: m["loss"] for m in read_metrics(ref / "checkpoints" / "train") if "loss" in m}
    assert sorted(got) == sorted(want) == list(range(1, 61))
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), step
    assert (root / "model" / "config.json").is_file()


def test_an_eval_job_writes_the_report_and_a_failed_gate_fails_the_job(tiny_teacher_dir, tmp_path):
    suite = tmp_path / "suite.jsonl"
    suite.write_text("".join(json.dumps({"prompt": f"What is {i} plus 1?", "reference": str(i + 1), "scorer": "contains"})
                             + "\n" for i in range(4)))
    root = ml_tree(tmp_path / "ml", {"stage": "eval", "max_new_tokens": 4, "batch_size": 4, "speed_prompts": 2,
                                     "speed_rounds": 1, "gate": "student.score > 1.5"},
                   {"suite": suite, "teacher": tiny_teacher_dir, "student": tiny_teacher_dir})
    proc = run_job(root)
    assert proc.returncode == 3, proc.stderr[-3000:]
    report = json.loads((root / "model" / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "student"} and report["gate"]["passed"] is False
    assert (root / "output" / "failure").read_text().startswith("gate: student.score > 1.5 -> FAILED")
    assert re.search(METRIC_DEFINITIONS[-1]["Regex"], proc.stdout)


def test_a_damaged_resourceconfig_names_the_file(tiny_student_dir, kd_corpus, tmp_path):
    root = ml_tree(tmp_path / "ml", {"stage": "train", "max_steps": 2}, {"corpus": kd_corpus, "student": tiny_student_dir})
    (root / "input" / "config" / "resourceconfig.json").write_text('{"current_host": "algo-1",\n "hosts": [')
    proc = run_job(root)
    assert proc.returncode == 2, proc.stderr[-2000:]
    failure = (root / "output" / "failure").read_text()
    assert failure.startswith(str(root / "input" / "config" / "resourceconfig.json") + ":2: invalid JSON"), failure


def test_a_pipeline_job_runs_a_scheduled_run_and_a_retry_resumes_it(tmp_path):
    """stage: pipeline, as the rendered EventBridge schedule starts it: the spec in the config
    channel, the schedule's time as the run id; the retried invocation finds the run finished."""
    from tests.pipeline.helpers import prompts, spec, write_prompts

    write_prompts(tmp_path / "src" / "a.jsonl", prompts(20, seed=61))
    spec_file = spec(tmp_path, spec_name="pipeline.yaml")
    hyper = {"stage": "pipeline", "scheduled_time": "2026-12-07T02:00:00Z", "nothing_new_ok": True}
    first = ml_tree(tmp_path / "ml1", hyper, {"config": spec_file})
    done = run_job(first)
    assert done.returncode == 0, done.stderr
    outcome = json.loads((first / "model" / "outcome.json").read_text())
    assert outcome["run"] == "scheduled-20261207T020000Z" and outcome["outcome"] == "promoted"
    assert (first / "checkpoints" / "pipeline").is_dir() or (tmp_path / "store").is_dir()
    assert re.search(r"^metric: model=challenger score=[0-9.]+$", done.stdout, re.M)
    again = run_job(ml_tree(tmp_path / "ml2", hyper, {"config": spec_file}))
    assert again.returncode == 0 and "already finished" in again.stderr
    bad = ml_tree(tmp_path / "ml3", {**hyper, "run_idd": "x"}, {"config": spec_file})
    failed = run_job(bad)
    assert failed.returncode == 2
    assert "run_idd: unknown key for stage pipeline" in (bad / "output" / "failure").read_text()
