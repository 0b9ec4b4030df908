"""The one training loop: ``train_step`` over typed micro-batches, held-out eval, the step loop.

Loss (DESIGN.md §4): for each optimizer step,
``(kd_weight * sum KD + (1 - kd_weight) * sum CE) / N`` where the sums run over every response
token of every micro-batch on every rank and ``N`` is their global count, all-reduced *before*
the step's first backward, so each micro-batch's backward already sees the final divisor
(``loss_scale``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from distill.errors import TrainingDiverged
from distill.stop import STOP, requested_on_any_rank
from distill.train.config import TrainConfig


def lr_at(config: TrainConfig, step: int, total_steps: int) -> float:
    """Learning rate for 0-based optimizer step ``step``: linear warmup, then the schedule."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    span = max(1, total_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if config.schedule == "cosine" else 1.0 - progress
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * shape)


def loss_scale(grad_accum: int, world_size: int, global_tokens: float) -> float:
    """The factor on each micro-batch's loss sum before its backward.

    Dividing by the step's global response-token count is the one normalization. The factor
    ``grad_accum * world_size`` cancels what the engines do on their own: accelerate divides each
    micro-batch's loss by ``grad_accum``, and DDP / DeepSpeed average gradients over the ranks.
    """
    return grad_accum * world_size / max(global_tokens, 1.0)


@dataclass(frozen=True)
class MicroBatch:
    """One collated micro-batch: the model's inputs (on the device) and its token counts."""

    inputs: dict[str, torch.Tensor]
    num_tokens: int  # response tokens: the loss positions
    num_input_tokens: int  # real (non-padding) input tokens
    num_slots: int  # input positions including padding
    num_prompt_targets: int  # prompt positions trained with --prompt-loss-weight

    @classmethod
    def from_collated(cls, batch: dict[str, Any], device) -> "MicroBatch":
        inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()
                  if k not in ("num_tokens", "num_input_tokens")}
        prompt = int(batch["prompt_targets"].numel()) if "prompt_targets" in batch else 0
        return cls(inputs, int(batch["num_tokens"]), int(batch["num_input_tokens"]), int(batch["input_ids"].numel()),
                   prompt)


@dataclass
class Engine:
    """What the loop drives: the prepared model-with-loss, its optimizer and the accelerator."""

    accelerator: Any
    wrapper: Any  # StudentWithLoss, prepared
    optimizer: Any
    params: list
    config: TrainConfig
    kd_weight: float

    def reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a float64 vector over ranks."""
        if self.accelerator.num_processes > 1:
            return self.accelerator.reduce(values, reduction="sum")
        return values


def train_step(engine: Engine, micro: list[MicroBatch], step: int, total_steps: int) -> dict[str, float]:
    """One optimizer step over this rank's micro-batches; returns the step's metrics (all ranks)."""
    config, accelerator, wrapper, optimizer = engine.config, engine.accelerator, engine.wrapper, engine.optimizer
    device = accelerator.device
    t0 = time.perf_counter()
    lr = lr_at(config, step, total_steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
    counts = torch.tensor([sum(m.num_tokens for m in micro), sum(m.num_input_tokens for m in micro),
                           sum(m.num_slots for m in micro)], dtype=torch.float64, device=device)
    global_tokens, global_inputs, global_slots = engine.reduce_sum(counts).tolist()
    scale = loss_scale(config.grad_accum, accelerator.num_processes, global_tokens)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # kd, ce, total, prompt CE: kept on the device
    no_prompt = torch.zeros((), device=device)
    for batch in micro:
        with accelerator.accumulate(wrapper):
            out = wrapper(**batch.inputs, kd_weight=engine.kd_weight, prompt_loss_weight=config.prompt_loss_weight)
            accelerator.backward(out.total * scale)
            if accelerator.sync_gradients and config.max_grad_norm > 0 and not config.deepspeed:
                accelerator.clip_grad_norm_(engine.params, config.max_grad_norm)
            # Called on every micro-batch: inside accumulate() the wrapped optimizer only steps on
            # the last one (and DeepSpeed's engine keeps its own accumulation boundary).
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        prompt_ce = out.prompt_ce if out.prompt_ce is not None else no_prompt
        sums += torch.stack([out.kd, out.ce, out.total.detach(), prompt_ce]).to(torch.float64)
    local_prompt = torch.tensor([sum(m.num_prompt_targets for m in micro)], dtype=torch.float64, device=device)
    kd_sum, ce_sum, total_sum, prompt_sum, global_prompt = engine.reduce_sum(torch.cat([sums, local_prompt])).tolist()
    if not math.isfinite(total_sum):
        raise TrainingDiverged(f"the loss is {total_sum} at step {step + 1} (lr {lr:.3g})")
    elapsed = time.perf_counter() - t0
    n = max(global_tokens, 1.0)
    metrics = {"step": step + 1, "loss": total_sum / n, "kd": kd_sum / n, "ce": ce_sum / n, "lr": lr,
               "response_tokens": int(global_tokens), "tokens_per_s": global_inputs / elapsed,
               "padding_share": 1.0 - global_inputs / max(global_slots, 1.0), "step_time_s": elapsed}
    if config.prompt_loss_weight > 0:
        metrics["prompt_ce"] = prompt_sum / max(global_prompt, 1.0)
    return metrics


def evaluate(engine: Engine, batches: list[dict[str, Any]], step: int, top_k: int) -> dict[str, Any]:
    """Forward KL to the teacher (top-k + tail) and CE per response token on the held-out rows."""
    wrapper = engine.wrapper
    wrapper.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=engine.accelerator.device)
    n = 0
    with torch.no_grad():
        for batch in batches:
            micro = MicroBatch.from_collated(batch, engine.accelerator.device)
            out = wrapper(**micro.inputs, kd_weight=0.0, evaluation=True)
            sums += torch.stack([out.kd, out.ce]).to(torch.float64)
            n += micro.num_tokens
    wrapper.train()
    kd, ce = sums.tolist()
    record: dict[str, Any] = {"step": step, "eval_ce": ce / max(n, 1), "eval_tokens": int(n)}
    if top_k:
        record["eval_kl"] = kd / max(n, 1)
    return record


@dataclass
class LoopPlan:
    """What the loop runs: the step iterator, where it starts and ends, when it evaluates and saves."""

    steps: Iterator[tuple[int, int, list[dict[str, Any]]]]  # (epoch, step in epoch, collated micro-batches)
    start_step: int
    start_epoch: int
    start_step_in_epoch: int
    total_steps: int
    eval_batches: list[dict[str, Any]]
    top_k: int


def run_loop(engine: Engine, plan: LoopPlan, log: Callable[[dict[str, Any]], None],
             save: Callable[[int, int, int], None], progress) -> tuple[int, dict[str, Any], dict[str, Any] | None]:
    """Steps until ``plan.total_steps`` (or the data ends); ``save(step, epoch, step_in_epoch)``
    writes a checkpoint (periodically, and at the end when --save-every is set). Returns
    (steps done, last step's metrics, the final eval or None)."""
    config = engine.config
    device = engine.accelerator.device
    step, last = plan.start_step, {}
    epoch, step_in_epoch = plan.start_epoch, plan.start_step_in_epoch
    if plan.eval_batches and step == 0:
        log(evaluate(engine, plan.eval_batches, 0, plan.top_k))
    engine.wrapper.train()
    while step < plan.total_steps:
        try:
            epoch, step_in_epoch, collated = next(plan.steps)
        except StopIteration:
            break
        micro = [MicroBatch.from_collated(b, device) for b in collated]
        last = {"epoch": epoch, **train_step(engine, micro, step, plan.total_steps)}
        last = {"step": last.pop("step"), **last}
        step += 1
        log(last)
        progress.update(1)
        progress.set_postfix(loss=f"{last['loss']:.4f}", kd=f"{last['kd']:.4f}", ce=f"{last['ce']:.4f}",
                             tok_s=f"{last['tokens_per_s']:.0f}")
        if plan.eval_batches and config.eval_every and step % config.eval_every == 0 and step < plan.total_steps:
            log(evaluate(engine, plan.eval_batches, step, plan.top_k))
        periodic = bool(config.save_every and step % config.save_every == 0 and step < plan.total_steps)
        if periodic:
            save(step, epoch, step_in_epoch)
        if step < plan.total_steps and requested_on_any_rank(engine.accelerator):
            started = time.monotonic()
            if not periodic:  # this step's checkpoint may already be on disk
                save(step, epoch, step_in_epoch)
            raise STOP.preempted(f"checkpoint of step {step} of {plan.total_steps} written in "
                                 f"{time.monotonic() - started:.1f} s", "rerun the same command with --resume to continue")
    final_eval = evaluate(engine, plan.eval_batches, step, plan.top_k) if plan.eval_batches else None
    if final_eval:
        log(final_eval)
    if step > 0 and config.save_every:
        save(step, epoch, step_in_epoch)
    return step, last, final_eval


def diverged_message(exc: TrainingDiverged, out: Path, bf16: bool) -> str:
    """What to do about a diverged run, and which checkpoints are left."""
    kept = sorted((out / "checkpoints").glob("step-*")) if (out / "checkpoints").is_dir() else []
    return (f"{exc}: training diverged, so no final model was saved; lower --lr (or the recipe's train.lr), "
            f"keep --max-grad-norm > 0" + (", or train in fp32 (--precision fp32)" if bf16 else "")
            + (f"; checkpoints kept: {', '.join(p.name for p in kept)} in {out / 'checkpoints'} (the newest may "
               f"already hold the diverging update)" if kept else "; no checkpoint was written (--save-every)"))
