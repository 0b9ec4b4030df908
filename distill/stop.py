"""Graceful stop on SIGTERM: what a SageMaker StopTrainingJob, a spot interruption or a Kubernetes
eviction sends before it kills the process (SIGKILL 120 s later on SageMaker, after the pod's
grace period, 30 s by default, on Kubernetes).

The handler only records the signal; each stage polls ``STOP`` at its safe points and leaves a
resumable state behind, then raises ``Preempted`` (exit code 75):

- ``train``: at the next step boundary (every rank sees the flag through an all-reduce, so the
  ranks stop together), a complete checkpoint, written with the usual atomic protocol;
- ``generate``: the shard in flight is dropped (never half written), committed shards stay;
- ``augment`` (also inside ``generate --augment``): the round in flight is dropped, finished
  rounds stay;
- ``eval``: stops before writing any report;
- ``logs``: stops between batches of records; its output is written only at the end;
- ``pipeline run``: the running stage stops at its own safe point (above), or the run stops
  between stages; the rerun of the same run id skips the finished stages.

Other commands (``inspect``, ``init-student``, ``pipeline status`` / ``promote`` / ``rollback`` /
``render``) keep the default SIGTERM action: they end at once.

A rerun of the same command (``train``: with ``--resume``) continues from that state; the result
equals an uninterrupted run.
A second SIGTERM while stopping is ignored (the stage is already on its way out); SIGKILL still
ends everything, which is what periodic checkpoints are for.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any

from distill.errors import Preempted


class StopRequest:
    """The SIGTERM flag, and when it was raised (``time.monotonic``)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.at: float | None = None
        self.installed = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        """Handle SIGTERM from now on (main thread only; elsewhere a no-op). Python as a
        container's PID 1 would otherwise ignore SIGTERM."""
        if self.installed or threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._handle)
        self.installed = True

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum, self.at = signum, time.monotonic()
            print(f"{signal.Signals(signum).name} received: stopping at the next safe point, leaving a resumable state",
                  file=sys.stderr, flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.at if self.at is not None else 0.0

    def preempted(self, what: str, rerun: str = "rerun the same command to resume") -> Preempted:
        """The error to raise once ``what`` (the state left behind) is safe on disk."""
        name = signal.Signals(self.signum).name if self.signum else "stop"
        return Preempted(f"{name}: {what}; stopped {self.elapsed():.1f} s after the signal; {rerun}")

    def check(self, what: str) -> None:
        """Raise ``Preempted`` now if a stop was requested (for stages that hold nothing unsaved)."""
        if self.requested:
            raise self.preempted(what)


STOP = StopRequest()


def requested_on_any_rank(accelerator: Any) -> bool:
    """Whether any rank of a distributed run got the signal: an all-reduce of the flag, so every
    rank takes the same decision at the same step."""
    if accelerator.num_processes == 1:
        return STOP.requested
    import torch

    flag = torch.tensor([1.0 if STOP.requested else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)
