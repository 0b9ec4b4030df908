"""Time from SIGTERM to exit for `distill train`, and the size of the checkpoint it writes.

The run sends itself SIGTERM as a chosen step starts (the test suite's fixed-point helper, so
every machine stops at the same step); the real handler then finishes that step, writes a full
checkpoint and exits 75. Prints the error line (which carries both times) and the checkpoint size.

    python bench/stop_time.py --student DIR --corpus DIR [--step 3]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", required=True)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--step", type=int, default=3, help="SIGTERM as this step (1-based) starts")
    parser.add_argument("--tokens-per-batch", type=int, default=1024)
    args = parser.parse_args()
    from tests.test_preemption import error_lines, run_signalled

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = ["train", "--student", args.student, "--corpus", args.corpus, "--out", out, "--max-steps", args.step + 10,
               "--tokens-per-batch", args.tokens_per_batch, "--max-seq-len", 512, "--lr", "1e-4", "--precision", "fp32"]
        proc = run_signalled("distill.train.loop", "train_step", args.step, cmd, timeout=1200)
        size = sum(p.stat().st_size for p in out.glob("checkpoints/step-*/**/*") if p.is_file())
    lines = error_lines(proc.stderr)
    print(f"# SIGTERM to exit, `distill train` ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)\n")
    print(f"- machine: {platform.machine()}, CPU only; student `{args.student}`, corpus `{args.corpus}`")
    print(f"- exit code {proc.returncode}; checkpoint {size / 1e6:.0f} MB")
    print(f"- {lines[0] if lines else proc.stderr[-500:]}")


if __name__ == "__main__":
    main()
