"""Checkpoints of `distill train`: accelerate state + a typed train state + a COMPLETE marker, last.

``OUT/checkpoints/step-N/`` is written as ``.tmp-step-N/`` and renamed into place after the
marker, so a checkpoint either is complete or does not exist under its final name; ``--resume``
takes the newest complete one and continues with the same data order and RNG.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from distill.atomic import atomic_write_text, fsync_dir
from distill.config import ConfigError

MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"


@dataclass(frozen=True)
class TrainState:
    """Where a run stands after ``global_step`` optimizer steps: the data position to resume at."""

    global_step: int
    epoch: int
    step_in_epoch: int  # steps already taken in ``epoch``
    total_steps: int
    student_tokenizer_fingerprint: str
    packing: bool = False  # absent from checkpoints written before --packing existed

    @classmethod
    def read(cls, checkpoint: Path) -> "TrainState":
        data = json.loads((checkpoint / STATE_FILE).read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def complete_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints (marker present), oldest first."""
    folder = Path(out) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("step-*") if (p / MARKER).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def resume_point(out: Path, packing: bool) -> Path | None:
    """The checkpoint ``--resume`` continues from (None: start at step 0); refuses a plan change."""
    found = complete_checkpoints(out)
    if not found:
        return None
    state = TrainState.read(found[-1])
    if state.packing != packing:  # the data position only means something in the same plan
        raise ConfigError(f"--resume: {found[-1]} was trained with{'' if state.packing else 'out'} --packing; "
                          f"resume with {'--packing' if state.packing else '--no-packing'}")
    return found[-1]


def save_checkpoint(accelerator, out: Path, state: TrainState, keep: int) -> Path:
    """Write a complete checkpoint for ``state`` on every rank; keep the newest ``keep``."""
    final_dir = out / "checkpoints" / f"step-{state.global_step:07d}"
    tmp = out / "checkpoints" / f".tmp-step-{state.global_step:07d}"
    is_main = accelerator.is_main_process
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if is_main:
        atomic_write_text(tmp / STATE_FILE, json.dumps(dataclasses.asdict(state), indent=2))
        atomic_write_text(tmp / MARKER, f"step {state.global_step}\n")  # the marker goes last
        shutil.rmtree(final_dir, ignore_errors=True)
        os.replace(tmp, final_dir)
        fsync_dir(final_dir.parent)
        for old in complete_checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final_dir
