"""`distill pipeline` end to end on the demo teacher and student: incremental runs, the teacher
calls they make, the gate, promotion and rollback, idempotency, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from distill.cli import main
from tests.pipeline.helpers import ledger, prompts, spec, write_prompts


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["pipeline", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


@pytest.fixture
def counted(monkeypatch):
    """Teacher generation requests made inside the pipeline's generate stage."""
    from distill.pipeline.run import Run
    from distill.teachers.hf import HFTeacher

    calls = {"requests": 0, "in_generate": False, "generate_stage": []}
    real_generate = HFTeacher.generate
    real_stage = Run.generate

    def generate(self, requests, params):
        if calls["in_generate"]:
            calls["requests"] += len(requests)
        return real_generate(self, requests, params)

    def stage(self, *args, **kwargs):
        calls["in_generate"], before = True, calls["requests"]
        try:
            return real_stage(self, *args, **kwargs)
        finally:
            calls["in_generate"] = False
            calls["generate_stage"].append(calls["requests"] - before)

    monkeypatch.setattr(HFTeacher, "generate", generate)
    monkeypatch.setattr(Run, "generate", stage)
    return calls


@pytest.mark.slow
def test_incremental_runs_gate_promotion_rollback(tmp_path, counted):
    old = prompts(1000, seed=1)
    write_prompts(tmp_path / "src" / "old.jsonl", old)
    path = spec(tmp_path)
    store = tmp_path / "store"

    code, out = _run("run", str(path), "--run-id", "r1")
    assert code == 0, out
    assert counted["generate_stage"] == [1000]
    first = ledger(store)
    assert first["aliases"] == {"champion": "r1"} and first["runs"]["r1"]["outcome"] == "promoted"
    decision = json.loads((store / "runs/r1/decision.json").read_text())
    assert decision["champion"] is None and decision["champion_terms_held"] == ["challenger.score >= champion.score - 1"]

    # the same run id again: nothing done, said so, same exit code
    code, out = _run("run", str(path), "--run-id", "r1")
    assert code == 0 and "already finished" in out and counted["generate_stage"] == [1000]

    # 100 new prompts, plus a near duplicate and an exact duplicate of old ones
    new = prompts(100, seed=2)
    near = old[17].replace("?", "!") + " please"
    write_prompts(tmp_path / "src" / "new.jsonl", new + [near, old[3]])
    code, out = _run("run", str(path), "--run-id", "r2")
    assert code == 0, out
    assert counted["generate_stage"] == [1000, 100]  # exactly the new prompts went to the teacher
    collect = json.loads((store / "runs/r2/collect/collect.json").read_text())
    assert collect["kept"] == 100 and collect["dropped"] == {"duplicate_of_earlier_run": 1, "near_duplicate_of_earlier_run": 1}
    assert [f["file"].endswith("new.jsonl") for f in collect["files"]] == [True]  # old.jsonl is below the watermark
    report = [json.loads(line) for line in (store / "runs/r2/collect/report.jsonl").read_text().splitlines()]
    assert {r["reason"] for r in report} == {"duplicate_of_earlier_run", "near_duplicate_of_earlier_run"}
    train = json.loads((store / "runs/r2/train/stage.json").read_text())
    assert train["start"] == {"champion": "r1"} and list(train["corpora"]) == ["r1", "r2"]  # warm start, train_on all
    state = ledger(store)
    assert state["aliases"]["champion"] == "r2" and state["alias_history"]["champion"] == ["r1"]
    lineage = state["versions"]["r2"]
    assert {"corpora", "teacher", "generation", "prompt_window", "train_config_sha256", "code", "eval_report_sha256",
            "weights_fingerprint"} <= set(lineage)

    # nothing new: exit 7, nothing written
    code, out = _run("run", str(path))
    assert code == 7 and "no new or changed source file" in out
    assert sorted(p.name for p in (store / "runs").iterdir()) == ["r1", "r2"]

    # a challenger that cannot beat the champion: not promoted, exit 3, alias unchanged
    strict = spec(tmp_path, spec_name="strict.yaml", gate="challenger.score > champion.score + 1")
    write_prompts(tmp_path / "src" / "day3.jsonl", prompts(20, seed=3))
    code, out = _run("run", str(strict), "--run-id", "r3")
    assert code == 3, out
    assert "gate failed, not promoted; champion stays r2" in out
    state = ledger(store)
    assert state["aliases"]["champion"] == "r2" and state["runs"]["r3"]["outcome"] == "gate_failed"
    assert json.loads((store / "runs/r3/decision.json").read_text())["passed"] is False

    code, out = _run("status", str(path), "--json")
    assert code == 0, out
    status = json.loads(out[out.index("{"):])
    assert [r["run"] for r in status["runs"]] == ["r1", "r2", "r3"]
    assert [r["outcome"] for r in status["runs"]] == ["promoted", "promoted", "gate_failed"]
    assert Path(status["plot"]).stat().st_size > 1000

    code, out = _run("rollback", str(path))
    assert code == 0 and ledger(store)["aliases"]["champion"] == "r1"
    code, out = _run("promote", str(path), "--run", "r3")
    assert code == 0 and ledger(store)["aliases"]["champion"] == "r3"
    code, out = _run("promote", str(path), "--run", "nope")
    assert code == 2 and "--run nope: not a finished run" in out


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    write_prompts(tmp_path / "src" / "a.jsonl", prompts(3, seed=1))
    store = tmp_path / "store"

    bad = spec(tmp_path, spec_name="unknown.yaml", generate={"max_new_tokens": 4, "top_kk": 3})
    code, out = _run("run", str(bad))
    line = [x for x in out.splitlines() if x.startswith("error:")][0]
    assert code == 2 and "unknown.yaml:" in line and "generate.top_kk" in line and "did you mean 'top_k'" in line

    typo = spec(tmp_path, spec_name="typo.yaml", warm_strat="base")
    code, out = _run("run", str(typo))
    assert code == 2 and "typo.yaml:" in out and "did you mean 'warm_start'" in out

    owned = spec(tmp_path, spec_name="owned.yaml", train={"out": "x"})
    code, out = _run("run", str(owned))
    assert code == 2 and "train.out: set by the pipeline" in out

    gate = spec(tmp_path, spec_name="gate.yaml", gate="student.score >= 0.9")
    code, out = _run("run", str(gate))
    assert code == 2 and "gate.yaml:" in out and "unknown model 'student'" in out
    metric = spec(tmp_path, spec_name="metric.yaml", gate="challenger.accuracy >= 0.9")
    code, out = _run("run", str(metric))
    assert code == 2 and "unknown metric 'accuracy'" in out

    glob = spec(tmp_path, spec_name="glob.yaml", sources=[{"path": str(tmp_path / "src" / "*.csv")}])
    code, out = _run("run", str(glob))
    assert code == 2 and "sources.0.path" in out and "matches no seed file" in out

    unreachable = spec(tmp_path, spec_name="s3.yaml", store="s3://bucket/x",
                       store_options={"key": "k", "secret": "s", "endpoint_url": "http://127.0.0.1:9",
                                      "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}}})
    code, out = _run("run", str(unreachable))
    assert code == 74 and "store s3://bucket/x" in out, out

    assert not store.exists()  # nothing half-written


def test_run_ids():
    from distill.config import ConfigError
    from distill.pipeline.run import resolve_run_id

    assert resolve_run_id(None, "2026-12-07T02:00:00Z", b"", []) == "scheduled-20261207T020000Z"
    assert resolve_run_id(None, "2026-12-07T03:00:00+01:00", b"", []) == "scheduled-20261207T020000Z"
    a = resolve_run_id(None, None, b"spec", [(0, "f", "sha1", Path("f"))])
    assert a == resolve_run_id(None, None, b"spec", [(0, "f", "sha1", Path("f"))]) and a.startswith("auto-")
    assert a != resolve_run_id(None, None, b"spec", [(0, "f", "sha2", Path("f"))])
    with pytest.raises(ConfigError, match="--run-id"):
        resolve_run_id("../x", None, b"", [])
    with pytest.raises(ConfigError, match="--scheduled-time"):
        resolve_run_id(None, "yesterday", b"", [])


def test_request_logs_as_a_source(tmp_path, counted):
    """kind: logs: new log files go through `distill logs` (scrubbed, filtered) into the run."""
    import gzip

    def record(i: int, text: str, model: str = "gpt-4o", status: int = 200) -> str:
        return json.dumps({"request_id": f"r{i}", "timestamp": f"2026-11-02T10:{i % 60:02d}:00Z", "status_code": status,
                           "request": {"model": model, "messages": [{"role": "user", "content": text}]},
                           "response": {"choices": [{"message": {"role": "assistant", "content": "ok"}}]}})

    texts = prompts(12, seed=71)
    lines = [record(i, t) for i, t in enumerate(texts[:10])]
    lines.append(record(10, texts[10] + " mail me at jane.doe@example.com"))
    lines.append(record(11, texts[11], status=500))  # an error: dropped by default
    lines.append(record(12, "a prompt for another model entirely", model="other"))
    (tmp_path / "logs").mkdir()
    with gzip.open(tmp_path / "logs" / "day1.jsonl.gz", "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    path = spec(tmp_path, sources=[{"path": str(tmp_path / "logs"), "kind": "logs",
                                    "logs": {"model": ["gpt-4o*"], "format": "openai"}}])
    code, out = _run("run", str(path), "--run-id", "r1")
    assert code == 0, out
    assert counted["generate_stage"] == [11]  # 10 plain + the scrubbed one; no error, no other model
    collect = json.loads((tmp_path / "store/runs/r1/collect/collect.json").read_text())
    assert collect["kept"] == 11 and collect["logs"]["0"]["accepted"] == 11
    prompts_text = (tmp_path / "store/runs/r1/collect/prompts.jsonl").read_text()
    assert "jane.doe@example.com" not in prompts_text and "<EMAIL>" in prompts_text
    code, out = _run("run", str(path))
    assert code == 7  # no new log file

    bad = spec(tmp_path, spec_name="bad.yaml", sources=[{"path": str(tmp_path / "logs"), "kind": "logs",
                                                         "logs": {"modle": ["x"]}}])
    code, out = _run("run", str(bad))
    assert code == 2 and "sources.0.logs.modle" in out and "did you mean 'model'" in out
