"""End to end on the demo: scripts/demo_logs.py writes a gateway's OpenAI-format log of demo-task
traffic -> distill logs -> distill generate (the demo teacher answers, top-k log-probs) -> distill
train; and the logged answers as a CE-only corpus (--responses logged) that trains too."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from distill.cli import main
from tests.train.conftest import REPO, read_metrics


@pytest.mark.slow
def test_demo_traffic_from_log_to_student(tmp_path):
    log = tmp_path / "gateway.jsonl.gz"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "demo_logs.py"), "--out", str(log), "--records", "150"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    counts = dict(part.rsplit(" ", 1) for part in done.stdout.split(": ", 1)[1].strip().split(", "))
    prompts = tmp_path / "prompts"
    run = CliRunner().invoke(main, ["logs", "--logs", str(log), "--out", str(prompts), "--decontaminate", "demo",
                                    "--where", 'env == "prod"', "--no-progress"])
    assert run.exit_code == 0, run.output
    summary = json.loads((prompts / "logs.json").read_text())
    assert summary["rejected"]["error"] == int(counts["errors"])
    assert summary["rejected"]["conversation_prefix"] > 0 and summary["rejected"]["duplicate"] > 0
    text = (prompts / "prompts.jsonl").read_text()
    assert "kid.learner@example.org" not in text and "415-555-0188" not in text
    suite = {json.loads(line)["prompt"] for line in (REPO / "eval" / "demo.jsonl").read_text().splitlines() if line.strip()}
    kept = [json.loads(line) for line in text.splitlines()]
    assert not suite & {r["messages"][-1]["content"] for r in kept}
    for responses, corpus_name in (("teacher", "corpus"), ("logged", "corpus-logged")):
        corpus = tmp_path / corpus_name
        args = ["generate", "--teacher", "demo", "--prompts", str(prompts / "prompts.jsonl"), "--out", str(corpus),
                "--responses", responses, "--max-new-tokens", "32", "--no-progress"]
        if responses == "teacher":
            args += ["--top-k", "8", "--temperature", "0"]
        run = CliRunner().invoke(main, args)
        assert run.exit_code == 0, run.output
        student = tmp_path / f"student-{responses}"
        run = CliRunner().invoke(main, ["train", "--student", "demo", "--corpus", str(corpus), "--out", str(student),
                                        "--max-steps", "4", "--seed", "0"])
        assert run.exit_code == 0, run.output
        metrics = [m for m in read_metrics(student) if "loss" in m]
        assert len(metrics) == 4 and all(m["loss"] == m["loss"] for m in metrics)
        if responses == "logged":
            assert all(m["kd"] == 0 for m in metrics)
        else:
            assert any(m["kd"] > 0 for m in metrics)
        assert (student / "final" / "model.safetensors").is_file()
