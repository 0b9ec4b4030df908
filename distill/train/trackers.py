"""Where per-step metrics go: ``OUT/metrics.jsonl`` always, plus TensorBoard or MLflow when asked."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from distill.atomic import atomic_write_text
from distill.config import ConfigError


def check_tracker(kind: str) -> None:
    """Fail before OUT exists when the tracker's package is missing."""
    if kind == "none":
        return
    module = "torch.utils.tensorboard" if kind == "tensorboard" else "mlflow"
    try:
        __import__(module)
    except ImportError:
        raise ConfigError(f"--tracker {kind}: not installed (pip install 'distill[{kind}]')") from None


def open_tracker(kind: str, out: Path, config: dict[str, Any]) -> tuple[Callable[[dict, int], None], Callable[[], None]]:
    """A function(metrics, step) logging to the tracker, plus a close function."""
    if kind == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))
        writer.add_text("config", json.dumps(config, indent=2))

        def log(metrics: dict[str, Any], step: int) -> None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and key != "step":
                    writer.add_scalar(key, value, step)
        return log, writer.close
    if kind == "mlflow":
        import mlflow

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            # No server named: keep the run next to the model in a local file store (mlflow's own
            # default, sqlite in the working directory, needs the full mlflow package and is not OUT).
            # mlflow >= 3 refuses a file store unless this opt-in is set.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (out / "mlruns").resolve().as_uri()
        mlflow.set_tracking_uri(uri)
        mlflow.start_run(run_name=out.name)
        mlflow.log_params({k: str(v)[:250] for k, v in config.items()})

        def log(metrics: dict[str, Any], step: int) -> None:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"}, step=step)
        return log, mlflow.end_run
    return (lambda metrics, step: None), (lambda: None)


def _records_up_to(path: Path, step: int) -> list[str]:
    """The metric lines of steps <= ``step``. A line a crash tore (disk full, power loss) ends the
    readable log: the lines before it are kept and the run says what it dropped."""
    kept = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record_step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            print(f"{path}:{number}: torn or unreadable record (a crash mid-write); keeping the {len(kept)} "
                  f"record(s) before it and dropping {len(lines) - number + 1} line(s)", file=sys.stderr)
            break
        if record_step <= step:
            kept.append(line)
    return kept


class MetricsLog:
    """``OUT/metrics.jsonl`` (one JSON line per step or eval) and the tracker; a no-op off rank 0."""

    def __init__(self, out: Path, tracker: str, config: dict[str, Any], *, is_main: bool, resume_step: int | None):
        self.path = out / "metrics.jsonl"
        self.is_main = is_main
        self._log, self._close = (lambda m, s: None), (lambda: None)
        if not is_main:
            return
        kept = []
        if resume_step is not None and self.path.exists():  # drop lines logged after the checkpoint
            kept = _records_up_to(self.path, resume_step)
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self._log, self._close = open_tracker(tracker, out, config)

    def log(self, record: dict[str, Any]) -> None:
        if self.is_main:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            self._log(record, record["step"])
            if os.environ.get("DISTILL_PRINT_METRICS"):
                # one line per record for log scrapers (SageMaker metric definitions: distill/sagemaker.py)
                values = " ".join(f"{k}={v:.6g}" for k, v in record.items()
                                  if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool))
                print(f"metric: step={record['step']} {values}", flush=True)

    def close(self) -> None:
        self._close()
