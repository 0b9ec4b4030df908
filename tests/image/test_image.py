"""The container image, for real: `make image-test` builds the cpu target (distill:cpu) and runs
these against it (DISTILL_IMAGE names the image). Every container starts with ``--network none``,
as the image's own user and as an arbitrary UID in group 0 (``--user 12345:0``, as OpenShift-style
clusters start images); host folders are mounted where SageMaker and users put them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.test_sagemaker import ml_tree
from tests.train.conftest import read_metrics

IMAGE = os.environ.get("DISTILL_IMAGE")
pytestmark = pytest.mark.skipif(not IMAGE, reason="needs the image: `make image-test` builds distill:cpu and runs these")
USERS = [None, "12345:0"]  # None: the image's own user (UID 10001, group 0)
ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def open_up(path: Path) -> Path:
    """Let any UID of the container write there (a host folder mounted into the container)."""
    path.mkdir(parents=True, exist_ok=True)
    for folder, dirs, files in os.walk(path):
        os.chmod(folder, 0o777)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666)
    return path


def docker_args(args: list[str], *, user: str | None = None, mounts: dict[Path, str] | None = None,
                env: dict[str, str] | None = None, name: str | None = None, extra: list[str] | None = None,
                network: str = "none") -> list[str]:
    """``network="host"`` only for a test that serves a teacher or a rendezvous on 127.0.0.1."""
    cmd = ["docker", "run", "--network", network, "--name", name or f"distill-test-{uuid.uuid4().hex[:10]}"]
    if user:
        cmd += ["--user", user]
    for host, target in (mounts or {}).items():
        cmd += ["-v", f"{host}:{target}"]
    for key, value in {**ENV, **(env or {})}.items():
        cmd += ["-e", f"{key}={value}"]
    return cmd + (extra or []) + [IMAGE, *args]


def run(args: list[str], timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    """``docker run IMAGE ARGS`` to the end; the container is removed afterwards."""
    cmd = docker_args(args, **kwargs)
    name = cmd[cmd.index("--name") + 1]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(cmd)} ran past {timeout} s")
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def sagemaker_job(root: Path, user: str | None, env: dict[str, str] | None = None, timeout: int = 600,
                  extra: list[str] | None = None) -> subprocess.CompletedProcess:
    """What SageMaker does: ``docker run IMAGE train`` with the job's tree at /opt/ml."""
    return run(["train"], user=user, mounts={open_up(root): "/opt/ml"}, env=env, timeout=timeout, extra=extra)


@pytest.mark.parametrize("user", USERS)
def test_version_names_the_build(user):
    proc = run(["--version"], user=user, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^distill \d+\.\d+\.\d+$", proc.stdout.splitlines()[0])
    assert "torch: 2.13.0" in proc.stdout and "cuda: -" in proc.stdout
    assert re.search(r"image: target=cpu, commit=[0-9a-f]{40}", proc.stdout), proc.stdout


def test_the_demo_runs_in_the_image(tmp_path):
    """What the README promises: `docker run IMAGE demo`, the whole demo (teacher corpus, student,
    baseline, eval), into the user's folder mounted as the working directory."""
    started = time.monotonic()
    proc = run(["demo"], mounts={open_up(tmp_path): "/work"}, env={"OMP_NUM_THREADS": "2"}, timeout=1500)
    print(f"docker run distill:cpu demo: {time.monotonic() - started:.0f} s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "gate: student.score >= 0.95 * teacher.score" in proc.stdout
    report = json.loads((tmp_path / "runs" / "demo" / "eval" / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "student", "seeds_only"}
    assert report["build"]["image"]["target"] == "cpu"
    print("demo scores:", {k: round(v["score"], 3) for k, v in report["models"].items()})


def test_the_smoke_demo_runs_as_an_arbitrary_uid(tmp_path):
    proc = run(["demo", "--smoke", "--out", "/work/smoke"], user="12345:0", mounts={open_up(tmp_path): "/work"}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "smoke" / "student" / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize("user", USERS)
def test_a_sagemaker_train_job_writes_a_loadable_student(user, tiny_student_dir, kd_corpus, tmp_path):
    root = ml_tree(tmp_path / "ml", {"stage": "train", "max_steps": 4, "tokens_per_batch": 256, "max_seq_len": 64,
                                     "lr": 0.001}, {"corpus": kd_corpus, "student": tiny_student_dir})
    proc = sagemaker_job(root, user)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(root / "model")
    assert sum(p.numel() for p in model.parameters()) > 0
    record = json.loads((root / "model" / "distill.json").read_text())
    assert record["build"]["image"]["target"] == "cpu" and record["build"]["torch"].startswith("2.13.0")
    assert re.search(r"metric: step=4 .*\bloss=", proc.stdout + proc.stderr)


@pytest.mark.parametrize("user", USERS)
def test_a_sagemaker_generate_job_writes_a_corpus(user, tiny_teacher_dir, tmp_path):
    from distill.corpus import open_corpus

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"prompt": f"What is {i} plus {i}?"}) + "\n" for i in range(5)))
    root = ml_tree(tmp_path / "ml", {"stage": "generate", "max_new_tokens": 6, "top_k": 4, "batch_size": 4},
                   {"prompts": seeds, "teacher": tiny_teacher_dir})
    proc = sagemaker_job(root, user)
    assert proc.returncode == 0, proc.stderr[-3000:]
    corpus = open_corpus(root / "model")
    assert corpus.num_rows == 5 and corpus.top_k == 4
    assert corpus.manifests[0]["build"]["image"]["target"] == "cpu"


@pytest.mark.parametrize("user", USERS)
def test_a_bad_hyperparameter_fails_the_job_with_a_reason(user, tiny_student_dir, kd_corpus, tmp_path):
    root = ml_tree(tmp_path / "ml", {"stage": "train", "max_stepz": 3}, {"corpus": kd_corpus, "student": tiny_student_dir})
    proc = sagemaker_job(root, user, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    failure = (root / "output" / "failure").read_text()
    assert failure.startswith("hyperparameters.json: max_stepz: unknown key") and len(failure) <= 1024


@pytest.mark.parametrize("user", USERS)
def test_two_processes_in_one_container_from_resourceconfig(user, tiny_student_dir, kd_corpus, tmp_path):
    root = ml_tree(tmp_path / "ml", {"stage": "train", "max_steps": 3, "tokens_per_batch": 256, "max_seq_len": 64,
                                     "lr": 0.001}, {"corpus": kd_corpus, "student": tiny_student_dir})
    proc = sagemaker_job(root, user, env={"DISTILL_NPROC_PER_NODE": "2", "DS_ACCELERATOR": "cpu"},
                         extra=["--add-host", "algo-1:127.0.0.1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--nnodes 1 --node_rank 0 --nproc_per_node 2 --master_addr algo-1 --master_port 29500" in proc.stderr
    assert "2 process(es)" in proc.stdout + proc.stderr
    assert (root / "model" / "config.json").is_file()


def stop_container(name: str, ready, timeout: float = 300) -> tuple[float, int]:
    """Wait until ``ready()``, then ``docker stop -t 120`` (SIGTERM, SIGKILL 120 s later, as
    SageMaker stops a job); returns (seconds from the stop to the exit, exit code)."""
    deadline = time.monotonic() + timeout
    while not ready():
        state = subprocess.run(["docker", "inspect", "--format", "{{.State.Running}}", name], capture_output=True, text=True)
        if state.stdout.strip() == "false":
            logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
            pytest.fail(f"the container ended before it was stopped: {logs.stderr[-3000:]}")
        assert time.monotonic() < deadline, "the container never got to the point to stop it at"
        time.sleep(0.1)
    sent = time.monotonic()
    subprocess.run(["docker", "stop", "-t", "120", name], check=True, capture_output=True)
    took = time.monotonic() - sent
    code = subprocess.run(["docker", "inspect", "--format", "{{.State.ExitCode}}", name], capture_output=True, text=True)
    return took, int(code.stdout.strip())


def stop_job(root: Path, ready) -> tuple[float, int, str]:
    """A SageMaker-style job started detached, stopped with ``docker stop -t 120`` once ``ready()``:
    (seconds to exit, exit code, its stderr)."""
    name = f"distill-stop-{uuid.uuid4().hex[:8]}"
    subprocess.run(docker_args(["train"], mounts={open_up(root): "/opt/ml"}, name=name, extra=["-d"]), check=True,
                   capture_output=True)
    try:
        took, code = stop_container(name, ready)
        return took, code, subprocess.run(["docker", "logs", name], capture_output=True, text=True).stderr
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_docker_stop_during_train_checkpoints_and_the_same_run_resumes_to_the_same_losses(tiny_student_dir, kd_corpus, tmp_path):
    hyper = {"stage": "train", "max_steps": 300, "tokens_per_batch": 512, "max_seq_len": 64, "lr": 0.001, "save_every": 0}
    channels = {"corpus": kd_corpus, "student": tiny_student_dir}
    ref = ml_tree(tmp_path / "ref", hyper, channels)
    assert sagemaker_job(ref, None).returncode == 0
    root = ml_tree(tmp_path / "ml", hyper, channels)
    state = root / "checkpoints" / "train"
    took, code, logs = stop_job(root, lambda: (state / "metrics.jsonl").is_file()
                                and any("loss" in m for m in read_metrics(state)))
    print(f"train: docker stop -> exit in {took:.1f} s")
    assert code == 75, logs[-3000:]
    assert re.search(r"error: SIGTERM: checkpoint of step \d+ of 300 written in .*; stopped [0-9.]+ s after the signal", logs), logs[-2000:]
    (checkpoint,) = (state / "checkpoints").glob("step-*")
    assert int(checkpoint.name.split("-")[1]) < 300 and took < 60
    again = sagemaker_job(root, None)  # the same `docker run`: resume is automatic in a job
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stderr
    got = {m["step"]: m["loss"] for m in read_metrics(state) if "loss" in m}
    want = {m["step"]: m["loss"] for m in read_metrics(ref / "checkpoints" / "train") if "loss" in m}
    assert sorted(got) == sorted(want) == list(range(1, 301))
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-7), step


def test_docker_stop_during_generate_keeps_whole_shards_and_the_same_run_completes_the_exact_corpus(tiny_teacher_dir, tmp_path):
    from distill.corpus import open_corpus

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"prompt": f"Question {i}: what is {i} plus {i + 1}?"}) + "\n" for i in range(120)))
    hyper = {"stage": "generate", "max_new_tokens": 24, "top_k": 5, "temperature": 0.7, "top_p": 0.9,
             "rows_per_shard": 4, "batch_size": 1}
    channels = {"prompts": seeds, "teacher": tiny_teacher_dir}
    ref = ml_tree(tmp_path / "ref", hyper, channels)
    assert sagemaker_job(ref, None).returncode == 0
    root = ml_tree(tmp_path / "ml", hyper, channels)
    data = root / "checkpoints" / "generate" / "data"
    took, code, logs = stop_job(root, lambda: len(list(data.glob("train-*.parquet"))) >= 2)
    print(f"generate: docker stop -> exit in {took:.1f} s")
    assert code == 75, logs[-3000:]
    assert re.search(r"shard\(s\) committed", logs) and took < 60, logs[-2000:]
    assert not (root / "checkpoints" / "generate" / "manifest.json").exists()
    shards = len(list(data.glob("train-*.parquet")))
    assert 2 <= shards < 30
    again = sagemaker_job(root, None)
    assert again.returncode == 0, again.stderr[-3000:]
    a = {r.id: r for r in open_corpus(root / "model").iter_rows()}
    b = {r.id: r for r in open_corpus(ref / "model").iter_rows()}
    assert sorted(a) == sorted(b) and len(a) == 120
    for key, row in a.items():
        np.testing.assert_array_equal(row.response_ids, b[key].response_ids)
        np.testing.assert_array_equal(row.topk_ids, b[key].topk_ids)
        np.testing.assert_array_equal(row.topk_logprobs, b[key].topk_logprobs)
    shutil.rmtree(tmp_path / "ref", ignore_errors=True)


def test_an_indexed_job_of_worker_containers_writes_the_corpus_of_one_run(tiny_tokenizer_dir, tmp_path):
    """What the Kubernetes Indexed Job (deploy/kubernetes/base/generate.yaml) does, with the image:
    N containers with JOB_COMPLETION_INDEX=0..N-1 and `--shard auto`, one shared volume, one
    OpenAI-compatible teacher (the project's test server on 127.0.0.1: host network); one worker
    is killed (SIGKILL, no warning) and started again, as the Job retries the index. The union of
    their shards is byte for byte the corpus of one unsharded run."""
    import yaml

    from distill.corpus import open_corpus
    from tests.teachers.openai_server import FaultyServer

    workers = 3
    config = open_up(tmp_path / "config")
    shutil.copytree(tiny_tokenizer_dir, config / "tokenizer")
    (config / "seeds.jsonl").write_text("".join(json.dumps({"prompt": f"Question {i}: what is {i} plus {i + 1}?"}) + "\n"
                                                for i in range(36)))
    open_up(config)
    shared = open_up(tmp_path / "shared")
    args = ["generate", "--teacher", "/config/teacher.yaml", "--prompts", "/config/seeds.jsonl", "--top-k", "5",
            "--max-new-tokens", "12", "--temperature", "0.7", "--rows-per-shard", "2", "--no-progress"]
    mounts = {config: "/config", shared: "/data"}
    with FaultyServer(fault_rate=0.2, stall_s=1.0, latency_s=0.15) as server:
        (config / "teacher.yaml").write_text(yaml.safe_dump({
            "model": "tiny", "tokenizer": "/config/tokenizer", "backend": "openai", "max_context": 4096,
            "endpoint": {"base_url": server.base_url, "server": "vllm", "concurrency": 4, "request_timeout_s": 0.8,
                         "backoff_base_s": 0.05, "backoff_max_s": 0.5}}))
        ref = run([*args, "--out", "/data/single"], mounts=mounts, network="host", timeout=600)
        assert ref.returncode == 0, ref.stderr[-3000:]
        names = [f"distill-worker-{i}-{uuid.uuid4().hex[:6]}" for i in range(workers)]
        env = {"DISTILL_SHARD_COUNT": str(workers)}
        for index, name in enumerate(names):
            subprocess.run(docker_args([*args, "--out", "/data/corpus", "--shard", "auto"], mounts=mounts, name=name,
                                       env={**env, "JOB_COMPLETION_INDEX": str(index)}, extra=["-d"], network="host"),
                           check=True, capture_output=True)
        try:
            # worker 1 commits shards 1, 4, 7, ...: kill it once it has one, then start it again
            data = shared / "corpus" / "data"
            deadline = time.monotonic() + 300
            while not (data.is_dir() and any(data.glob("train-00001-*.parquet"))):
                assert time.monotonic() < deadline, "worker 1 never committed a shard"
                time.sleep(0.1)
            subprocess.run(["docker", "kill", "--signal", "KILL", names[1]], check=True, capture_output=True)
            killed = subprocess.run(["docker", "wait", names[1]], capture_output=True, text=True).stdout.strip()
            assert killed == "137"
            mine = [p for p in data.glob("train-*.parquet") if int(p.name.split("-")[1]) % workers == 1]
            assert len(mine) < 6, "worker 1 had finished before it was killed"
            retry = run([*args, "--out", "/data/corpus", "--shard", "auto"], mounts=mounts,
                        env={**env, "JOB_COMPLETION_INDEX": "1"}, network="host", timeout=600)
            assert retry.returncode == 0, retry.stderr[-3000:]
            assert "resuming" in retry.stderr
            for name in (names[0], names[2]):
                code = subprocess.run(["docker", "wait", name], capture_output=True, text=True, timeout=600).stdout.strip()
                assert code == "0", subprocess.run(["docker", "logs", name], capture_output=True, text=True).stderr[-3000:]
        finally:
            for name in names:
                subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    single = json.loads((shared / "single" / "manifest.json").read_text())
    manifests = sorted((shared / "corpus").glob("manifest*.json"))
    assert len(manifests) == workers
    union = {s["path"]: s["sha256"] for m in manifests for s in json.loads(m.read_text())["shards"]}
    assert union == {s["path"]: s["sha256"] for s in single["shards"]} and len(union) == 18  # 36 rows, 2 per shard
    assert open_corpus(shared / "corpus").num_rows == open_corpus(shared / "single").num_rows == 36


def test_the_pytorchjob_environment_trains_across_two_containers_as_one_process_does(tiny_student_dir, kd_corpus, tmp_path):
    """The training manifest as the Kubeflow Training Operator v1 runs it: the command and args of
    the rendered PyTorchJob, in two containers (Master, Worker) given the environment the operator
    injects (its pkg/controller.v1/pytorch/envvar.go at v1.9.0: MASTER_ADDR/PORT, PET_MASTER_ADDR/PORT,
    WORLD_SIZE = replicas x nprocPerNode, RANK and PET_NODE_RANK = the pod's index, PET_NPROC_PER_NODE,
    PET_NNODES, PYTHONUNBUFFERED), rendezvous on the loopback (host network), gloo. Two nodes x one
    process x one micro-batch give the per-step losses and final weights of one process with two
    micro-batches."""
    import socket

    import yaml

    from tests.kubernetes.manifests import RENDERED, documents
    from tests.train.test_train import assert_weights_close

    (job,) = [d for d in documents((RENDERED / "eks.yaml").read_text()) if d["kind"] == "PyTorchJob"]
    (container,) = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    command, args = container["command"], container["args"]
    assert args[-2:] == ["--config", "/config/train.yaml"]
    data = open_up(tmp_path / "data")
    shutil.copytree(kd_corpus, data / "corpus")
    shutil.copytree(tiny_student_dir, data / "student-start")
    config = open_up(tmp_path / "config")
    settings = {"student": "/data/student-start", "corpus": ["/data/corpus"], "tokens_per_batch": 256, "max_seq_len": 64,
                "lr": 1e-3, "seed": 0, "max_steps": 3, "resume": True}
    (config / "train.yaml").write_text(yaml.safe_dump({**settings, "out": "/data/two-nodes"}))
    (config / "one.yaml").write_text(yaml.safe_dump({**settings, "out": "/data/one-process", "grad_accum": 2}))
    open_up(tmp_path)
    mounts = {data: "/data", config: "/config"}
    one = run(["train", "--config", "/config/one.yaml"], mounts=mounts, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    nodes, nproc = 2, 1
    names = [f"distill-pytorchjob-{i}-{uuid.uuid4().hex[:6]}" for i in range(nodes)]
    for rank, name in enumerate(names):
        env = {"PYTHONUNBUFFERED": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "PET_MASTER_ADDR": "127.0.0.1",
               "PET_MASTER_PORT": port, "WORLD_SIZE": str(nodes * nproc), "RANK": str(rank), "PET_NODE_RANK": str(rank),
               "PET_NPROC_PER_NODE": str(nproc), "PET_NNODES": str(nodes), "DS_ACCELERATOR": "cpu"}
        # docker run's --entrypoint takes one program: the rest of the manifest's command goes first in the args
        subprocess.run(docker_args([*command[1:], *args], mounts=mounts, env=env, name=name,
                                   extra=["-d", "--entrypoint", command[0]], network="host"), check=True, capture_output=True)
    logs = {}
    try:
        for name in names:
            code = subprocess.run(["docker", "wait", name], capture_output=True, text=True, timeout=600).stdout.strip()
            done = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
            logs[name] = done.stdout + done.stderr
            assert code == "0", logs[name][-3000:]
    finally:
        for name in names:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    two_metrics = [m for m in read_metrics(data / "two-nodes") if "loss" in m]
    one_metrics = [m for m in read_metrics(data / "one-process") if "loss" in m]
    assert [m["step"] for m in two_metrics] == [m["step"] for m in one_metrics] == [1, 2, 3]
    for a, b in zip(two_metrics, one_metrics):
        assert a["response_tokens"] == b["response_tokens"]
        for key in ("loss", "kd", "ce"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)
    assert "2 process(es)" in logs[names[0]]  # the master's log: one run over both containers
    assert_weights_close(data / "two-nodes" / "final", data / "one-process" / "final", atol=1e-5)
