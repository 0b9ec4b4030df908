"""Real servers the pipeline tests talk to, each started as its own process on 127.0.0.1 and stopped
after: an S3-compatible server (moto in server mode) and an MLflow tracking server (SQLite)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def _process(args: list[str], ready_url: str, log: Path, timeout: float, cwd: Path) -> Iterator[subprocess.Popen]:
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
    try:
        _wait(ready_url, proc, log, timeout)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def s3_server(tmp: Path) -> Iterator[str]:
    """An S3-compatible endpoint (moto); yields its URL. Credentials: any, via the environment."""
    port = free_port()
    with _process([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                  f"http://127.0.0.1:{port}/moto-api/", tmp / "moto.log", 60, tmp):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def mlflow_server(tmp: Path) -> Iterator[str]:
    """``mlflow server`` on SQLite with artifacts in a folder; yields its tracking URI."""
    mlflow = shutil.which("mlflow", path=str(BIN)) or "mlflow"
    port = free_port()
    root = tmp / "mlflow"
    root.mkdir(exist_ok=True)
    args = [mlflow, "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", (root / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1"]
    with _process(args, f"http://127.0.0.1:{port}/health", tmp / "mlflow.log", 180, root):
        yield f"http://127.0.0.1:{port}"
