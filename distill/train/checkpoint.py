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
import sys
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
    plan: dict = dataclasses.field(default_factory=dict)  # what the data position and schedule mean (run_plan)

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


LR_KEYS = ("lr", "schedule", "warmup_steps", "min_lr_ratio")
# A run may be resumed for more (or fewer) steps: the schedule then stretches to the new length,
# which the run says; everything else in the plan must match.
STRETCHABLE = ("total_steps",)


def run_plan(config, corpus, world_size: int, total_steps: int) -> dict:
    """What a checkpoint's data position and learning-rate schedule mean: resuming under another
    plan would continue at a position or a rate that means something else."""
    return {
        "corpus": sorted(str(m["identity_sha256"]) for m in corpus.manifests),
        "seed": config.seed, "max_seq_len": config.max_seq_len, "tokens_per_batch": config.tokens_per_batch,
        "batch_size": config.batch_size, "grad_accum": config.grad_accum, "world_size": world_size,
        "packing": config.packing, "eval_rows": config.eval_rows or (64 if config.eval_every else 0),
        "lr": config.lr, "schedule": config.schedule, "warmup_steps": config.warmup_steps,
        "min_lr_ratio": config.min_lr_ratio, "total_steps": total_steps,
    }


def resume_point(out: Path, plan: dict, allow_lr_change: bool = False) -> Path | None:
    """The checkpoint ``--resume`` continues from (None: start at step 0); refuses a plan change."""
    found = complete_checkpoints(out)
    if not found:
        return None
    state = TrainState.read(found[-1])
    if state.packing != plan["packing"]:  # the data position only means something in the same plan
        raise ConfigError(f"--resume: {found[-1]} was trained with{'' if state.packing else 'out'} --packing; "
                          f"resume with {'--packing' if state.packing else '--no-packing'}")
    if not state.plan:  # written before plans were recorded
        print(f"warning: {found[-1]} records no run plan; cannot check the corpus, seed and batch plan match",
              file=sys.stderr)
        return found[-1]
    ignore = set(STRETCHABLE) | (set(LR_KEYS) if allow_lr_change else set())
    changed = [f"{key} {state.plan.get(key)!r} -> {plan.get(key)!r}" for key in plan
               if key not in ignore and state.plan.get(key) != plan.get(key)]
    for key in ignore:
        if state.plan.get(key) != plan.get(key):
            print(f"--resume: {key} {state.plan.get(key)!r} -> {plan.get(key)!r}: the learning-rate schedule "
                  f"continues over the new setting", file=sys.stderr)
    if changed:
        lr_only = all(part.split(" ", 1)[0] in LR_KEYS for part in changed)
        raise ConfigError(
            f"--resume: {found[-1]} was trained under another plan ({'; '.join(changed)}); resume with the original "
            "settings, or train into a new --out" + (" (or pass --resume-lr-change to continue with the new "
                                                    "learning-rate settings)" if lr_only else ""))
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
