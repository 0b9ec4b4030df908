"""scripts/demo.sh (what `make demo` runs) end to end, at smoke size: every CLI call in it works."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_script_runs_every_step_and_writes_the_report(tmp_path):
    run = tmp_path / "demo"
    env = {**os.environ, "RUN": str(run), "AUGMENT": "12", "STEPS": "3", "LIMIT": "6",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "gate: student.score >= 0.95 * teacher.score" in done.stdout
    report = json.loads((run / "eval" / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "student", "seeds_only"}
    assert all(m["params"] > 0 for m in report["models"].values())
    manifest = json.loads((run / "corpus" / "manifest.json").read_text())
    assert manifest["augmentation"]["accepted"] == 12 and manifest["generation"]["temperature"] == 0.0
    for model in ("student", "seeds_only"):
        assert (run / model / "final" / "model.safetensors").is_file()
    assert "done: 3 steps" in (run / "baseline.log").read_text()
