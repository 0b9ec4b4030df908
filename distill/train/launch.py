"""The distributed context of `distill train`: launcher environment, DeepSpeed config, accelerate state.

The same command runs in one process, under ``torchrun``, ``accelerate launch`` or the
``deepspeed`` launcher: accelerate reads RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR from the
launcher's environment. ``distributed(config)`` sets accelerate up and always puts the process
back as it found it (environment, accelerate singletons, a process group it created), so several
runs in one process (tests, the pipeline) do not leak into each other.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from distill.config import ConfigError


def deepspeed_config(spec: str, *, grad_accum: int, max_grad_norm: float, bf16: bool) -> dict[str, Any]:
    """Load zero2 / zero3 (shipped in students/deepspeed/) or a path; fill the "auto" values."""
    from distill.recipes import shipped_dir

    path = shipped_dir("students") / "deepspeed" / f"{spec}.json" if spec in ("zero2", "zero3") else Path(spec)
    if not path.is_file():
        raise ConfigError(f"--deepspeed: {path} not found (use zero2, zero3 or a JSON path)")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    # Micro-batches are token-budgeted, so DeepSpeed's per-GPU batch size is only a label.
    fill = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": grad_accum,
            "gradient_clipping": max_grad_norm}
    for key, value in fill.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
    ds.pop("train_batch_size", None)
    if ds.get("gradient_accumulation_steps") != grad_accum:
        raise ConfigError(f"{path}: gradient_accumulation_steps {ds['gradient_accumulation_steps']} != --grad-accum {grad_accum}")
    for key in ("bf16", "fp16"):
        block = ds.setdefault(key, {})
        if block.get("enabled", "auto") == "auto":
            block["enabled"] = bf16 if key == "bf16" else False
    return ds


def launcher_deepspeed(environ: dict[str, str]) -> str | None:
    """The --deepspeed value that ``accelerate launch --use_deepspeed`` asked for through its
    environment (``--deepspeed_config_file`` or ``--zero_stage``), or None when it did not.

    The trainer builds DeepSpeed itself (token-budgeted micro-batches, our "auto" values), so the
    launcher's choice is turned into --deepspeed rather than left to accelerate's own plugin.
    """
    if environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return None
    path = environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    if path and path != "none":
        return path
    stage = environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") or "2"  # accelerate's own default stage
    if stage in ("2", "3"):
        return f"zero{stage}"
    raise ConfigError(f"accelerate launch --use_deepspeed: ZeRO stage {stage} has no shipped config; "
                      "pass --zero_stage 2|3 or --deepspeed_config_file PATH to the launcher, or --deepspeed zero2|zero3|PATH")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def distributed(config) -> Iterator[Any]:
    """An ``Accelerator`` for ``config`` (bf16 on a CUDA GPU that has it, DeepSpeed when asked),
    torn down on exit whatever happens inside."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported() and config.precision != "fp32"
    if config.precision == "bf16" and not bf16:
        raise ConfigError("--precision bf16 needs a CUDA GPU with bf16 support; use auto or fp32 here")
    plugin = None
    if config.deepspeed:
        plugin = DeepSpeedPlugin(hf_ds_config=deepspeed_config(
            config.deepspeed, grad_accum=config.grad_accum, max_grad_norm=config.max_grad_norm, bf16=bf16))
    rendezvous: dict[str, str] = {}
    if plugin is not None and "WORLD_SIZE" not in os.environ:
        # one process without a launcher: a 1-process rendezvous instead of DeepSpeed probing for MPI
        rendezvous = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                      "MASTER_PORT": str(_free_port())}
        os.environ.update(rendezvous)
    # accelerate marks the process environment as DeepSpeed when given a plugin; put it back afterwards
    use_deepspeed_env = os.environ.get("ACCELERATE_USE_DEEPSPEED")
    try:
        if plugin is not None and not cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # accelerate sets up no process group for DeepSpeed on CPU (it would report 1 process
            # while DeepSpeed later runs 2); a CPU (gloo) state first makes ranks and world size right.
            from accelerate.state import PartialState

            PartialState(cpu=True)
        accelerator = Accelerator(
            mixed_precision="bf16" if bf16 else "no", deepspeed_plugin=plugin,
            # cpu=True would silently turn DeepSpeed off; with DS_ACCELERATOR=cpu it runs on CPU as is
            gradient_accumulation_steps=config.grad_accum, cpu=not cuda and plugin is None,
        )
        if plugin is not None:
            assert accelerator.distributed_type == DistributedType.DEEPSPEED, accelerator.distributed_type
        yield accelerator
    finally:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        if use_deepspeed_env is None:
            os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)
        else:
            os.environ["ACCELERATE_USE_DEEPSPEED"] = use_deepspeed_env
        if rendezvous:  # we made this 1-process group: leave the caller's process as we found it
            for key in rendezvous:
                os.environ.pop(key, None)
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
