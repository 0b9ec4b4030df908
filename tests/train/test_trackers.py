"""--tracker tensorboard | mlflow for real: what the run logs is readable back from the tracker and
equals metrics.jsonl; a tracker that is not installed is a clear error before OUT exists."""

from __future__ import annotations

import sys

import pytest

from tests.train.conftest import read_metrics, train_args
from tests.train.test_train import cli

TRACKED = ("loss", "kd", "ce", "lr", "tokens_per_s", "padding_share")


def run_tracked(student, corpus, out, tracker):
    result = cli(train_args(student, corpus, out, max_steps=3, tracker=tracker, eval_rows=16, eval_every=2))
    assert result.exit_code == 0, result.output
    steps = {m["step"]: m for m in read_metrics(out) if "loss" in m}
    evals = {m["step"]: m for m in read_metrics(out) if "eval_kl" in m}
    assert sorted(steps) == [1, 2, 3] and sorted(evals) == [0, 2, 3]
    return steps, evals


def test_tensorboard_event_file_holds_the_logged_scalars(tiny_student_dir, kd_corpus, tmp_path):
    pytest.importorskip("tensorboard")  # in the dev extra
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    steps, evals = run_tracked(tiny_student_dir, kd_corpus, out, "tensorboard")
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert set(TRACKED) | {"eval_kl", "eval_ce"} <= tags, tags
    for tag in TRACKED:
        logged = {e.step: e.value for e in events.Scalars(tag)}
        assert logged == pytest.approx({s: m[tag] for s, m in steps.items()}, rel=1e-6), tag
    for tag in ("eval_kl", "eval_ce"):
        logged = {e.step: e.value for e in events.Scalars(tag)}
        assert logged == pytest.approx({s: m[tag] for s, m in evals.items()}, rel=1e-6), tag
    assert "config" in "".join(events.Tags()["tensors"])  # the resolved config, as text


def test_mlflow_run_holds_params_and_metrics(tiny_student_dir, kd_corpus, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")  # mlflow-skinny is in the dev extra
    from mlflow.tracking import MlflowClient

    # no MLFLOW_TRACKING_URI: the run goes to a file store in OUT/mlruns
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "mlf"
    steps, evals = run_tracked(tiny_student_dir, kd_corpus, out, "mlflow")
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "mlf" and run.info.status == "FINISHED"
    assert run.data.params["kd_weight"] == "0.5" and run.data.params["max_steps"] == "3"
    assert run.data.params["divergence"] == "forward_kl"
    for tag in TRACKED:
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, tag)}
        assert history == pytest.approx({s: m[tag] for s, m in steps.items()}, rel=1e-9), tag
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "eval_kl")}
    assert history == pytest.approx({s: m["eval_kl"] for s, m in evals.items()}, rel=1e-9)

    # MLFLOW_TRACKING_URI names the store: the run goes there, nothing in OUT/mlruns
    store = (tmp_path / "store").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out2 = tmp_path / "mlf2"
    result = cli(train_args(tiny_student_dir, kd_corpus, out2, max_steps=1, tracker="mlflow"))
    assert result.exit_code == 0, result.output
    assert not (out2 / "mlruns").exists()
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_name for r in runs] == ["mlf2"]
    loss = client.get_metric_history(runs[0].info.run_id, "loss")
    assert [(m.step, m.value) for m in loss] == [(1, pytest.approx(read_metrics(out2)[0]["loss"], rel=1e-9))]


@pytest.mark.parametrize("tracker,module", [("tensorboard", "torch.utils.tensorboard"), ("mlflow", "mlflow")])
def test_tracker_not_installed_fails_before_out(tracker, module, tiny_student_dir, kd_corpus, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError, as when not installed
    out = tmp_path / "out"
    result = cli(train_args(tiny_student_dir, kd_corpus, out, max_steps=1, tracker=tracker))
    assert result.exit_code == 2 and f"--tracker {tracker}" in result.output and f"distill[{tracker}]" in result.output
    assert not out.exists()
