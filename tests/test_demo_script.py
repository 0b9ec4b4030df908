"""scripts/demo.sh (what `make demo` and `distill demo` run) end to end, at smoke size: every CLI
call in it works, also from a folder outside the repository (the shipped data is found)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_distill_demo_runs_every_step_and_writes_the_report(tmp_path):
    run = tmp_path / "runs" / "demo"  # the default --out
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run([sys.executable, "-m", "distill", "demo", "--smoke"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "gate: student.score >= 0.95 * teacher.score" in done.stdout
    report = json.loads((run / "eval" / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "student", "seeds_only"}
    assert all(m["params"] > 0 for m in report["models"].values())
    manifest = json.loads((run / "corpus" / "manifest.json").read_text())
    assert manifest["augmentation"]["accepted"] == 16 and manifest["generation"]["temperature"] == 0.0
    for model in ("student", "seeds_only"):
        assert (run / model / "final" / "model.safetensors").is_file()
        assert json.loads((run / model / "final" / "distill.json").read_text())["kind"] == "distill-student"
    assert "done: 4 steps" in (run / "baseline.log").read_text()


def test_distill_demo_without_bash_says_so(monkeypatch):
    from click.testing import CliRunner

    from distill.cli import main

    monkeypatch.setenv("PATH", "/nonexistent")
    result = CliRunner().invoke(main, ["demo", "--smoke"])
    assert result.exit_code == 1 and "error: distill demo: bash not found on PATH" in result.output
