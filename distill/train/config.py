"""`distill train`'s config: every field is a YAML key and a command-line option (distill/options.py).

Layers, later winning (distill/config.py): the defaults below < the student recipe's ``train:``
block (and its ``lora:``, ``deepspeed``, ``attn_implementation``) < ``--config FILE`` < flags.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from distill.config import (
    COMMAND_LINE,
    Layer,
    bad,
    check_layer,
    field,
    load_config,
    read_yaml_layer,
)

Divergence = Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd"]
Schedule = Literal["cosine", "linear", "constant"]
Precision = Literal["auto", "bf16", "fp32"]
Tracker = Literal["none", "tensorboard", "mlflow"]

DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# attention implementations that keep packed rows apart given restarting position_ids and no mask
PACKING_ATTN = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")


@dataclass(frozen=True)
class TrainConfig:
    student: str = field("", help="student: recipe name (students/), recipe YAML, HF model dir, config .json "
                                  "(random init), or hub id")
    corpus: tuple[str, ...] = field((), help="corpus directory; repeat to read several as one corpus",
                                    default_text="required")
    out: str = field("", help="output directory: checkpoints/, metrics.jsonl, final/ (and adapter/ with LoRA)")
    tokenizer: str | None = field(None, help="tokenizer dir or id overriding the student's", default_text="the student's")
    kd_weight: float = field(0.5, help="loss = kd_weight * KD + (1 - kd_weight) * CE; 0 = plain SFT")
    prompt_loss_weight: float = field(0.0, help="also train next-token CE on the prompt's tokens, each weighted this "
                                                "much against a response token (0 = response tokens only)")
    divergence: Divergence = field("forward_kl", help="KD divergence over the teacher's top-k + tail bins "
                                                      "(docs/training.md defines each)")
    kd_temperature: float = field(1.0, help="softens both (k+1)-bin distributions; KD is scaled by T^2")
    jsd_beta: float = field(0.5, help="beta of the generalized JSD (0 forward-like, 1 reverse-like)")
    skew_alpha: float = field(0.1, help="alpha of skew KL / skew reverse KL")
    lora: bool = field(False, help="train a LoRA adapter instead of all weights (final/ holds the merged model)",
                       negative="--full", default_text="the recipe's, else full")
    lora_rank: int = field(16, help="LoRA rank")
    lora_alpha: int = field(32, help="LoRA alpha")
    lora_dropout: float = field(0.0, help="LoRA dropout")
    lora_targets: tuple[str, ...] = field(DEFAULT_LORA_TARGETS, help="module names LoRA wraps (repeat, or "
                                          "comma-separated)", separator=",",
                                          default_text="all attention + MLP projections")
    lr: float = field(1e-5, help="peak learning rate")
    weight_decay: float = field(0.0, help="AdamW weight decay")
    schedule: Schedule = field("cosine", help="learning-rate decay after warmup")
    warmup_steps: int = field(0, help="linear warmup steps")
    min_lr_ratio: float = field(0.0, help="final learning rate as a fraction of --lr")
    max_steps: int | None = field(None, help="optimizer steps (overrides --epochs)", default_text="--epochs")
    epochs: int = field(1, help="passes over the corpus when --max-steps is not given")
    tokens_per_batch: int | None = field(4096, help="padded tokens per micro-batch (length-grouped); with --packing, "
                                         "tokens_per_batch // max_seq_len packed sequences")
    batch_size: int | None = field(None, help="rows per micro-batch (instead of --tokens-per-batch)")
    grad_accum: int = field(1, help="micro-batches per optimizer step and rank")
    max_seq_len: int = field(2048, help="prompt + response tokens kept per row (the response is truncated)")
    packing: bool = field(False, help="pack whole rows into sequences of <= max_seq_len tokens (position_ids restart "
                                      "per row, no padding); needs sdpa, eager, flex_attention or flash_attention_2/3")
    gradient_checkpointing: bool = field(False, help="recompute decoder activations in backward")
    max_grad_norm: float = field(1.0, help="gradient clipping norm (0 disables)")
    precision: Precision = field("auto", help="auto = bf16 autocast on a CUDA GPU that has it, else fp32")
    seed: int = field(0, help="seed for init, data order and held-out rows")
    deepspeed: str | None = field(None, help="zero2, zero3 or a DeepSpeed JSON path", default_text="off")
    save_every: int = field(0, help="checkpoint every N steps (0: only the final model)")
    keep_checkpoints: int = field(2, help="complete checkpoints kept")
    resume: bool = field(False, help="continue from the newest complete checkpoint in --out")
    resume_lr_change: bool = field(False, help="with --resume, continue under learning-rate settings (--lr, "
                                               "--schedule, --warmup-steps, --min-lr-ratio, the step count) that "
                                               "differ from the checkpoint's")
    eval_every: int = field(0, help="evaluate on held-out corpus rows every N steps (0: start and end only if "
                                    "--eval-rows)")
    eval_rows: int = field(0, help="corpus rows held out for evaluation, never trained on (--eval-every alone: 64)")
    tracker: Tracker = field("none", help="experiment tracker for the per-step metrics")
    chunk_size: int | None = field(None, help="response positions per LM-head chunk", default_text="~16M logits per chunk")
    attn_implementation: str = field("sdpa", help="attention kernel: sdpa, eager, flex_attention, flash_attention_2")
    verify_corpus: bool = field(True, help="check every shard's sha256 before step 1")

    def __post_init__(self) -> None:
        if not self.student:
            bad("student", "required")
        if not self.corpus:
            bad("corpus", "at least one corpus directory is required")
        if not self.out:
            bad("out", "required")
        if not 0.0 <= self.kd_weight <= 1.0:
            bad("kd_weight", f"must be in [0, 1], got {self.kd_weight}")
        if not self.prompt_loss_weight >= 0.0:
            bad("prompt_loss_weight", f"must be >= 0, got {self.prompt_loss_weight}")
        for name, choices in (("divergence", Divergence), ("schedule", Schedule), ("precision", Precision),
                              ("tracker", Tracker)):
            if getattr(self, name) not in typing.get_args(choices):
                bad(name, f"choose one of {', '.join(typing.get_args(choices))}, got {getattr(self, name)!r}")
        if not self.kd_temperature > 0:
            bad("kd_temperature", f"must be > 0, got {self.kd_temperature}")
        if not 0.0 <= self.jsd_beta <= 1.0:
            bad("jsd_beta", f"must be in [0, 1], got {self.jsd_beta}")
        if not 0.0 <= self.skew_alpha < 1.0:
            bad("skew_alpha", f"must be in [0, 1), got {self.skew_alpha}")
        if self.lora_rank < 1:
            bad("lora_rank", f"must be >= 1, got {self.lora_rank}")
        if not self.lr > 0:
            bad("lr", f"must be > 0, got {self.lr}")
        if self.max_steps is not None and self.max_steps < 1:
            bad("max_steps", f"must be >= 1, got {self.max_steps}")
        if self.epochs < 1:
            bad("epochs", f"must be >= 1, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            bad("batch_size", f"must be >= 1, got {self.batch_size}")
        if self.batch_size is None and (self.tokens_per_batch is None or self.tokens_per_batch < self.max_seq_len):
            bad("tokens_per_batch", f"must be >= --max-seq-len ({self.max_seq_len}), got {self.tokens_per_batch}")
        if self.grad_accum < 1:
            bad("grad_accum", f"must be >= 1, got {self.grad_accum}")
        if self.max_seq_len < 2:
            bad("max_seq_len", f"must be >= 2, got {self.max_seq_len}")
        if self.max_grad_norm < 0:
            bad("max_grad_norm", f"must be >= 0, got {self.max_grad_norm}")
        for name in ("warmup_steps", "save_every", "eval_every", "eval_rows"):
            if getattr(self, name) < 0:
                bad(name, f"must be >= 0, got {getattr(self, name)}")
        if self.keep_checkpoints < 1:
            bad("keep_checkpoints", f"must be >= 1, got {self.keep_checkpoints}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            bad("min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        if self.chunk_size is not None and self.chunk_size < 1:
            bad("chunk_size", f"must be >= 1, got {self.chunk_size}")
        if self.packing and self.attn_implementation not in PACKING_ATTN:
            bad("packing", f"attention implementation {self.attn_implementation!r} would let packed rows attend to "
                           f"each other; set attn_implementation (student recipe or --config) to one of "
                           f"{', '.join(PACKING_ATTN)}, or train with --no-packing")


def load_train_config(config_path: "str | Layer | None", flags: dict[str, object]) -> TrainConfig:
    """Defaults < the student recipe's training defaults < ``--config`` YAML (or a ready Layer) < flags given."""
    from distill.train.student import resolve_student

    layers = []
    if isinstance(config_path, Layer):
        layers.append(config_path)
    elif config_path:
        layers.append(read_yaml_layer(config_path))
    layers.append(Layer(COMMAND_LINE, {k: v for k, v in flags.items() if v is not None}))
    student = tokenizer = None
    for layer in layers:  # checked first, so a bad file is reported before the student is looked up
        values = check_layer(TrainConfig, layer)
        student = values.get("student") or student
        tokenizer = values.get("tokenizer") or tokenizer
    if student:
        _, recipe_layer = resolve_student(str(student), tokenizer)
        if recipe_layer is not None:
            layers.insert(0, recipe_layer)
    return load_config(TrainConfig, layers=layers)
