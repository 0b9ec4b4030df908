"""`distill train`: KD on the teacher's top-k + CE on a corpus, full or LoRA, DeepSpeed-ready.

The package, by concern:

    config.py      TrainConfig (every field an option) and the layered loader
    student.py     the student recipe, tokenizer, model, LoRA and the loss wrapper
    data.py        the batch plan: length-grouped, token-budgeted, per rank, resumable
    launch.py      launcher environment, DeepSpeed config, the accelerate context
    checkpoint.py  TrainState, atomic checkpoints with a COMPLETE marker, resume
    trackers.py    metrics.jsonl + TensorBoard / MLflow
    loop.py        train_step, held-out eval, the step loop
    trainer.py     run(config): checks, set-up, loop, final model

OUT layout::

    OUT/train_config.json     the resolved config
    OUT/metrics.jsonl         one line per step (loss, kd, ce, lr, tokens/s) and per eval (eval_kl, eval_ce)
    OUT/checkpoints/step-N/   accelerate state (model, optimizer, RNG) + trainer_state.json + COMPLETE (last)
    OUT/adapter/              LoRA adapter (LoRA runs)
    OUT/final/                merged HF model dir: safetensors, config, generation config, tokenizer

Importing this package is light (no torch): the CLI builds its options from ``TrainConfig``.
"""

from __future__ import annotations

from typing import Any

from distill.train.config import TrainConfig, load_train_config

__all__ = ["TrainConfig", "load_train_config", "run"]


def run(config: TrainConfig) -> dict[str, Any]:
    """Train; returns a summary (steps, final losses, paths)."""
    from distill.train.trainer import run as run_training

    return run_training(config)
