"""The pipeline against real servers: an S3 store (moto in server mode, with the conditional-write
lock) and the MLflow registry (a real `mlflow server`)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from distill.errors import LockHeld
from tests.pipeline.helpers import cli, prompts, spec, write_prompts
from tests.pipeline.servers import mlflow_server, s3_server

pytestmark = pytest.mark.slow


@pytest.fixture
def s3(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with s3_server(tmp_path) as endpoint:
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket="distill")
        yield endpoint, client


def _options(endpoint: str) -> dict:
    return {"endpoint_url": endpoint, "key": "testing", "secret": "testing", "client_kwargs": {"region_name": "us-east-1"}}


def test_s3_store_and_source_end_to_end(tmp_path, s3):
    endpoint, client = s3
    client.put_object(Bucket="distill", Key="incoming/day1.jsonl",
                      Body="".join(json.dumps({"prompt": p}) + "\n" for p in prompts(40, seed=11)).encode())
    path = spec(tmp_path, store="s3://distill/pipelines/test", store_options=_options(endpoint),
                sources=[{"path": "s3://distill/incoming/"}], work=str(tmp_path / "work"))
    first = cli("pipeline", "run", str(path), "--run-id", "r1")
    assert first.returncode == 0, first.stderr
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="distill", Prefix="pipelines/test/")["Contents"]}
    for stage in ("collect", "generate", "train", "eval"):
        assert f"pipelines/test/runs/r1/{stage}/stage.json" in keys
    assert "pipelines/test/ledger.json" in keys and "pipelines/test/runs/r1/train/final/model.safetensors" in keys
    assert "pipelines/test/pipeline.lock" not in keys  # released
    ledger = json.loads(client.get_object(Bucket="distill", Key="pipelines/test/ledger.json")["Body"].read())
    assert ledger["aliases"] == {"champion": "r1"}

    again = cli("pipeline", "run", str(path), "--run-id", "r1")
    assert again.returncode == 0 and "already finished" in again.stderr

    # a second day lands; a fresh machine (empty work folder) runs it: stages come from the store
    client.put_object(Bucket="distill", Key="incoming/day2.jsonl",
                      Body="".join(json.dumps({"prompt": p}) + "\n" for p in prompts(10, seed=12)).encode())
    import shutil

    shutil.rmtree(tmp_path / "work")
    second = cli("pipeline", "run", str(path), "--run-id", "r2")
    assert second.returncode == 0, second.stderr
    assert "collect: 10 new prompt(s) from 1 file(s)" in second.stderr
    status = cli("pipeline", "status", str(path), "--json", "--plot", str(tmp_path / "status.png"))
    assert status.returncode == 0, status.stderr
    result = json.loads(status.stdout)
    assert result["champion"] == "r2" and [r["run"] for r in result["runs"]] == ["r1", "r2"]


def test_s3_lock_conditional_writes_and_stale_takeover(tmp_path, s3):
    from distill.pipeline.store import ObjectLock, open_store

    endpoint, client = s3
    store = open_store("s3://distill/locks", tmp_path / "work", "t", _options(endpoint))
    store.check()
    holder = store.lock(60, "first").acquire()
    try:
        with pytest.raises(LockHeld, match="run in progress by pid"):
            store.lock(60, "second").acquire()
    finally:
        holder.release()
    assert "Contents" not in client.list_objects_v2(Bucket="distill", Prefix="locks/")

    # a lock left by a dead machine: its heartbeat is old
    client.put_object(Bucket="distill", Key="locks/pipeline.lock", Body=json.dumps(
        {"owner": "x", "pid": 1, "host": "gone-host", "heartbeat": time.time() - 120, "heartbeat_iso": "then"}).encode())
    winners, losers = [], []

    def take(name: str) -> None:
        lock = ObjectLock(store, "pipeline.lock", 60, name)
        try:
            lock.acquire()
            winners.append(lock)
        except LockHeld as exc:
            losers.append(str(exc))

    threads = [threading.Thread(target=take, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(losers) == 3, (winners, losers)
    body = json.loads(client.get_object(Bucket="distill", Key="locks/pipeline.lock")["Body"].read())
    assert body["owner"] == winners[0].owner
    # the heartbeat keeps it fresh
    fast = ObjectLock(store, "pipeline.lock", 0.8, "fast")
    winners[0].release()
    fast.acquire()
    first_beat = json.loads(client.get_object(Bucket="distill", Key="locks/pipeline.lock")["Body"].read())["heartbeat"]
    time.sleep(1.0)
    later = json.loads(client.get_object(Bucket="distill", Key="locks/pipeline.lock")["Body"].read())["heartbeat"]
    assert later > first_beat
    with pytest.raises(LockHeld):
        ObjectLock(store, "pipeline.lock", 0.8, "other").acquire()
    fast.release()


def test_mlflow_registry_against_a_real_server(tmp_path):
    from mlflow.tracking import MlflowClient

    with mlflow_server(tmp_path) as uri:
        write_prompts(tmp_path / "src" / "a.jsonl", prompts(30, seed=21))
        promotion = {"registry": "mlflow", "mlflow_tracking_uri": uri, "mlflow_model_name": "demo-student"}
        path = spec(tmp_path, promotion=promotion)
        assert cli("pipeline", "run", str(path), "--run-id", "r1").returncode == 0
        write_prompts(tmp_path / "src" / "b.jsonl", prompts(10, seed=22))
        second = cli("pipeline", "run", str(path), "--run-id", "r2")
        assert second.returncode == 0, second.stderr
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        versions = {v.tags["distill_run"]: v for v in client.search_model_versions("name = 'demo-student'")}
        assert set(versions) == {"r1", "r2"}
        assert client.get_model_version_by_alias("demo-student", "champion").tags["distill_run"] == "r2"
        run = client.get_run(versions["r2"].run_id)
        assert run.data.params["train_on"] == "all" and "challenger.score" in run.data.metrics
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | {
            a.path for a in client.list_artifacts(run.info.run_id, "eval")}
        assert {"lineage.json", "eval/report.json"} <= artifacts

        rollback = cli("pipeline", "rollback", str(path))
        assert rollback.returncode == 0, rollback.stderr
        assert client.get_model_version_by_alias("demo-student", "champion").tags["distill_run"] == "r1"
        # a rerun of a finished run publishes nothing twice
        assert cli("pipeline", "run", str(path), "--run-id", "r2").returncode == 0
        assert len(client.search_model_versions("name = 'demo-student'")) == 2


def test_s3_store_with_shard_workers_on_separate_machines(tmp_path, s3):
    """The Argo layout on an S3 store: every step in its own work folder (its own pod): the merge
    finds the workers' shards in the store and asks the teacher nothing again."""
    endpoint, client = s3
    write_prompts(tmp_path / "src" / "a.jsonl", prompts(60, seed=13))
    path = spec(tmp_path, store="s3://distill/pipelines/sharded", store_options=_options(endpoint),
                generate={"max_new_tokens": 4, "temperature": 0, "batch_size": 128, "progress": False,
                          "rows_per_shard": 15})

    def step(name: str, *args: str):
        done = cli("pipeline", "run", str(path), "--run-id", "r", "--work", str(tmp_path / f"pod-{name}"), *args)
        assert done.returncode == 0, done.stderr
        return done

    step("prepare", "--only", "prepare")
    step("gen0", "--only", "generate", "--shard", "0/2")
    step("gen1", "--only", "generate", "--shard", "1/2")
    step("merge", "--only", "generate")
    step("train", "--only", "train")
    step("finish")
    marker = json.loads(client.get_object(Bucket="distill", Key="pipelines/sharded/runs/r/generate/stage.json")["Body"].read())
    assert marker["workers"] == 2 and marker["rows"] == 60 and marker["teacher_rows"] == 60
    ledger = json.loads(client.get_object(Bucket="distill", Key="pipelines/sharded/ledger.json")["Body"].read())
    assert ledger["aliases"] == {"champion": "r"}
