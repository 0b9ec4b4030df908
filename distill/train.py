"""`distill train`: the one training loop. KD (teacher top-k) + CE on a corpus, full or LoRA.

Runs on accelerate; DeepSpeed ZeRO-2/3 comes from a JSON config (``--deepspeed zero2|zero3|PATH``).
The same command runs in one process, under ``torchrun``, ``accelerate launch`` or the
``deepspeed`` launcher: accelerate reads RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR from the
launcher's environment.

Loss (DESIGN.md §4): for each optimizer step,
``(kd_weight * sum KD + (1 - kd_weight) * sum CE) / N`` where the sums run over every response
token of every micro-batch on every rank and ``N`` is their global count, all-reduced *before*
the step's first backward. Each micro-batch's backward therefore sees the final divisor; the
factor ``grad_accum * world_size`` cancels the averaging that DeepSpeed/DDP/accelerate apply.

Order of work, so that bad input fails before anything is written: config -> student recipe
-> corpus (manifests, schema, checksums) -> tokenizer fingerprint and vocabulary -> batch plan
-> model -> only then ``OUT`` is created.

OUT layout::

    OUT/train_config.json     the resolved config
    OUT/metrics.jsonl         one line per step (loss, kd, ce, lr, tokens/s) and per eval (eval_kl, eval_ce)
    OUT/checkpoints/step-N/   accelerate state (model, optimizer, RNG) + trainer_state.json + COMPLETE (last)
    OUT/adapter/              LoRA adapter (LoRA runs)
    OUT/final/                merged HF model dir: safetensors, config, generation config, tokenizer
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.config import ConfigError, field, load_config, read_yaml

SCHEDULES = ("cosine", "linear", "constant")
TRACKERS = ("none", "tensorboard", "mlflow")
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# attention implementations that keep packed rows apart given restarting position_ids and no mask
PACKING_ATTN = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")
STUDENT_KEYS = {"model", "config", "tokenizer", "lora", "deepspeed", "train", "description", "attn_implementation"}
PRECISIONS = ("auto", "bf16", "fp32")  # the CLI's --precision choices (cli.py lists them too, to stay light)


@dataclass(frozen=True)
class TrainConfig:
    student: str = field("", help="student: recipe name (students/), recipe YAML, HF model dir, or config.json for random init")
    corpus: tuple[str, ...] = field((), help="corpus directories (one or more, read as one corpus)")
    out: str = field("", help="output directory (checkpoints, metrics, final model)")
    tokenizer: str | None = field(None, help="tokenizer dir or id overriding the student's")
    kd_weight: float = field(0.5, help="loss = kd_weight * KD + (1 - kd_weight) * CE; 0 = plain SFT")
    prompt_loss_weight: float = field(0.0, help="also train next-token CE on the prompt's tokens, each weighted this "
                                                "much against a response token (0 = response tokens only)")
    divergence: str = field("forward_kl", help="forward_kl | reverse_kl | jsd | skew_kl | skew_reverse_kl | tvd")
    kd_temperature: float = field(1.0, help="softens both (k+1)-bin distributions; KD is scaled by T^2")
    jsd_beta: float = field(0.5, help="beta of the generalized JSD (0 forward-like, 1 reverse-like)")
    skew_alpha: float = field(0.1, help="alpha of skew KL / skew reverse KL")
    lora: bool = field(False, help="train a LoRA adapter instead of all weights (final is merged)")
    lora_rank: int = field(16, help="LoRA rank")
    lora_alpha: int = field(32, help="LoRA alpha")
    lora_dropout: float = field(0.0, help="LoRA dropout")
    lora_targets: tuple[str, ...] = field(DEFAULT_LORA_TARGETS, help="module names LoRA wraps")
    lr: float = field(1e-5, help="peak learning rate")
    weight_decay: float = field(0.0, help="AdamW weight decay")
    schedule: str = field("cosine", help="decay after warmup: cosine | linear | constant")
    warmup_steps: int = field(0, help="linear warmup steps")
    min_lr_ratio: float = field(0.0, help="final learning rate as a fraction of --lr")
    max_steps: int | None = field(None, help="optimizer steps (overrides --epochs)")
    epochs: int = field(1, help="passes over the corpus when --max-steps is not given")
    tokens_per_batch: int | None = field(4096, help="padded tokens per micro-batch (length-grouped); with --packing, "
                                         "tokens_per_batch // max_seq_len packed sequences")
    batch_size: int | None = field(None, help="rows per micro-batch (instead of --tokens-per-batch)")
    grad_accum: int = field(1, help="micro-batches per optimizer step and rank")
    max_seq_len: int = field(2048, help="prompt + response tokens kept per row (response truncated)")
    packing: bool = field(False, help="pack whole rows into sequences of <= max_seq_len tokens (position_ids restart per "
                                      "row, no padding); needs sdpa, eager, flex_attention or flash_attention_2/3")
    gradient_checkpointing: bool = field(False, help="recompute decoder activations in backward")
    max_grad_norm: float = field(1.0, help="gradient clipping norm (0 disables)")
    precision: str = field("auto", help="auto (bf16 autocast on a CUDA GPU that has it, else fp32) | bf16 | fp32")
    seed: int = field(0, help="seed for init, data order and held-out rows")
    deepspeed: str | None = field(None, help="zero2 | zero3 | path to a DeepSpeed JSON config")
    save_every: int = field(0, help="checkpoint every N steps (0: only the final model)")
    keep_checkpoints: int = field(2, help="complete checkpoints kept")
    resume: bool = field(False, help="continue from the newest complete checkpoint in OUT")
    eval_every: int = field(0, help="evaluate on held-out corpus rows every N steps (0: start and end only if --eval-rows)")
    eval_rows: int = field(0, help="corpus rows held out for evaluation (never trained on)")
    tracker: str = field("none", help="none | tensorboard | mlflow")
    chunk_size: int | None = field(None, help="response positions per LM-head chunk (default: ~16M logits)")
    attn_implementation: str = field("sdpa", help="attention kernel: sdpa | eager | flash_attention_2")
    verify_corpus: bool = field(True, help="check every shard's sha256 before step 1")

    def __post_init__(self) -> None:
        from distill.losses import DIVERGENCES

        def bad(flag: str, msg: str) -> None:
            raise ConfigError(f"--{flag}: {msg}")

        if not self.student:
            bad("student", "required")
        if not self.corpus:
            bad("corpus", "at least one corpus directory is required")
        if not self.out:
            bad("out", "required")
        if not 0.0 <= self.kd_weight <= 1.0:
            bad("kd-weight", f"must be in [0, 1], got {self.kd_weight}")
        if not self.prompt_loss_weight >= 0.0:
            bad("prompt-loss-weight", f"must be >= 0, got {self.prompt_loss_weight}")
        if self.divergence not in DIVERGENCES:
            bad("divergence", f"unknown {self.divergence!r}; choose one of {', '.join(DIVERGENCES)}")
        if not self.kd_temperature > 0:
            bad("kd-temperature", f"must be > 0, got {self.kd_temperature}")
        if not 0.0 <= self.jsd_beta <= 1.0:
            bad("jsd-beta", f"must be in [0, 1], got {self.jsd_beta}")
        if not 0.0 <= self.skew_alpha < 1.0:
            bad("skew-alpha", f"must be in [0, 1), got {self.skew_alpha}")
        if self.lora_rank < 1:
            bad("lora-rank", f"must be >= 1, got {self.lora_rank}")
        if not self.lr > 0:
            bad("lr", f"must be > 0, got {self.lr}")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"choose one of {', '.join(SCHEDULES)}")
        if self.max_steps is not None and self.max_steps < 1:
            bad("max-steps", f"must be >= 1, got {self.max_steps}")
        if self.epochs < 1:
            bad("epochs", f"must be >= 1, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            bad("batch-size", f"must be >= 1, got {self.batch_size}")
        if self.batch_size is None and (self.tokens_per_batch is None or self.tokens_per_batch < self.max_seq_len):
            bad("tokens-per-batch", f"must be >= --max-seq-len ({self.max_seq_len}), got {self.tokens_per_batch}")
        if self.grad_accum < 1:
            bad("grad-accum", f"must be >= 1, got {self.grad_accum}")
        if self.max_seq_len < 2:
            bad("max-seq-len", f"must be >= 2, got {self.max_seq_len}")
        if self.precision not in PRECISIONS:
            bad("precision", f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.max_grad_norm < 0:
            bad("max-grad-norm", f"must be >= 0, got {self.max_grad_norm}")
        if self.warmup_steps < 0 or self.save_every < 0 or self.eval_every < 0 or self.eval_rows < 0:
            bad("warmup-steps/save-every/eval-every/eval-rows", "must be >= 0")
        if self.keep_checkpoints < 1:
            bad("keep-checkpoints", f"must be >= 1, got {self.keep_checkpoints}")
        if self.tracker not in TRACKERS:
            bad("tracker", f"choose one of {', '.join(TRACKERS)}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            bad("min-lr-ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        if self.packing and self.attn_implementation not in PACKING_ATTN:
            bad("packing", f"attention implementation {self.attn_implementation!r} would let packed rows attend to each "
                           f"other; set attn_implementation (student recipe or --config) to one of {', '.join(PACKING_ATTN)}, "
                           "or train with --no-packing")


class TrainingDiverged(ConfigError):
    """The loss went non-finite: the run stops before saving a broken final model."""


# ----------------------------------------------------------------------------- student recipes

@dataclass(frozen=True)
class StudentSource:
    """Where the student comes from: pretrained weights (``model``) or a config (random init)."""

    model: str | None  # HF model dir or hub id
    config: dict[str, Any] | None  # config mapping for random init
    tokenizer: str
    origin: str  # what --student named, for messages


def _weights_in(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))


def resolve_student(spec: str, tokenizer: str | None = None) -> tuple[StudentSource, dict[str, Any]]:
    """--student value -> (source, the recipe's training defaults as TrainConfig keys).

    Accepted: an HF model dir (config.json + weights; config.json alone = random init), a
    config .json (random init; tokenizer from its folder or --tokenizer), a recipe YAML path, a
    dir holding recipe.yaml, a shipped recipe name, or a hub id (``org/name``).
    """
    path = Path(spec)
    if path.is_dir() and (path / "config.json").is_file() and not (path / "recipe.yaml").is_file():
        config = None if _weights_in(path) else json.loads((path / "config.json").read_text())
        return StudentSource(None if config else str(path), config, tokenizer or str(path), spec), {}
    if path.is_file() and path.suffix == ".json":
        return StudentSource(None, json.loads(path.read_text()), tokenizer or str(path.parent), spec), {}
    from distill.recipes import resolve_recipe

    try:
        recipe_path, recipe = resolve_recipe("students", spec)
    except ConfigError:
        if spec.count("/") == 1 and not path.exists() and not spec.endswith((".yaml", ".yml", ".json")):
            return StudentSource(spec, None, tokenizer or spec, spec), {}  # hub id, e.g. Qwen/Qwen2.5-0.5B-Instruct
        raise ConfigError(f"--student: '{spec}' not found: not a student recipe, HF model dir, config .json or hub id") from None
    defaults: dict[str, Any] = {}
    unknown = set(recipe) - STUDENT_KEYS
    if unknown:
        raise ConfigError(f"{recipe_path}: unknown keys {sorted(unknown)}; known: {sorted(STUDENT_KEYS)}")
    if ("model" in recipe) == ("config" in recipe):
        raise ConfigError(f"{recipe_path}: give exactly one of 'model' (weights) or 'config' (random init)")

    def local(value: str) -> str:
        candidate = (recipe_path.parent / value)
        return str(candidate.resolve()) if value.startswith(".") or candidate.exists() else value

    config = recipe.get("config")
    if isinstance(config, str):
        config = json.loads(Path(local(config)).read_text())
    model = local(recipe["model"]) if recipe.get("model") else None
    tok = tokenizer or (local(recipe["tokenizer"]) if recipe.get("tokenizer") else model)
    if tok is None:
        raise ConfigError(f"{recipe_path}: a 'config' student needs 'tokenizer'")
    lora = recipe.get("lora") or {}
    if not isinstance(lora, dict):
        raise ConfigError(f"{recipe_path}: 'lora' must be a mapping (enabled, rank, alpha, dropout, targets)")
    for key, target in (("enabled", "lora"), ("rank", "lora_rank"), ("alpha", "lora_alpha"),
                        ("dropout", "lora_dropout"), ("targets", "lora_targets")):
        if key in lora:
            defaults[target] = lora[key]
    if recipe.get("deepspeed"):
        ds = str(recipe["deepspeed"])
        defaults["deepspeed"] = ds if ds in ("zero2", "zero3") else local(ds)
    if recipe.get("attn_implementation"):
        defaults["attn_implementation"] = recipe["attn_implementation"]
    train = recipe.get("train") or {}
    if not isinstance(train, dict):
        raise ConfigError(f"{recipe_path}: 'train' must be a mapping of training defaults")
    defaults.update(train)
    return StudentSource(model, dict(config) if config else None, tok, str(recipe_path)), defaults


def _check_keys(mapping: dict[str, Any], where: str) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {}
    for key, value in mapping.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise ConfigError(f"{where}: unknown key '{key}' for TrainConfig; known keys: {', '.join(sorted(names))}")
        out[name] = value
    return out


def load_train_config(yaml_path: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """Defaults < the student recipe's training defaults < --config YAML < flags given."""
    file_values = _check_keys(read_yaml(yaml_path), str(yaml_path)) if yaml_path else {}
    given = {k: v for k, v in _check_keys(overrides, "command line").items() if v is not None}
    student = given.get("student") or file_values.get("student")
    recipe_defaults: dict[str, Any] = {}
    if student:
        _, recipe_defaults = resolve_student(str(student), given.get("tokenizer") or file_values.get("tokenizer"))
        recipe_defaults = _check_keys(recipe_defaults, f"student recipe {student}")
    return load_config(TrainConfig, None, {**recipe_defaults, **file_values, **given})


# ----------------------------------------------------------------------------- helpers

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


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def complete_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints (COMPLETE marker present), oldest first."""
    folder = out / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("step-*") if (p / "COMPLETE").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _open_tracker(kind: str, out: Path, config: dict[str, Any]):
    """A function(metrics, step) logging to the tracker, plus a close function."""
    if kind == "tensorboard":
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--tracker tensorboard: install it with `pip install distill[tensorboard]`") from None
        writer = SummaryWriter(str(out / "tensorboard"))
        writer.add_text("config", json.dumps(config, indent=2))

        def log(metrics: dict[str, Any], step: int) -> None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and key != "step":
                    writer.add_scalar(key, value, step)
        return log, writer.close
    if kind == "mlflow":
        try:
            import mlflow
        except ImportError:
            raise ConfigError("--tracker mlflow: install it with `pip install distill[mlflow]`") from None
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


# ----------------------------------------------------------------------------- the model

def _student_with_loss_cls():
    import torch

    from distill.losses import chunked_head_loss

    class StudentWithLoss(torch.nn.Module):
        """Wraps the HF (or PEFT) model so the engine's forward returns loss sums, never logits.

        The decoder runs on the whole padded (or packed) batch; only response positions are gathered and sent
        through the LM head, chunk by chunk (``chunked_head_loss``). Going through the wrapped
        modules keeps ZeRO-3's gather/release hooks firing for every parameter.
        """

        def __init__(self, model, loss_options: dict[str, Any], chunk_size: int | None, flatten_packed: bool = False):
            super().__init__()
            self.model = model
            self.loss_options = loss_options
            self.chunk_size = chunk_size
            # flash attention finds packed rows (cu_seqlens) only in a batch of one sequence
            self.flatten_packed = flatten_packed

        def base(self):
            return self.model.get_base_model() if hasattr(self.model, "peft_config") else self.model

        def forward(self, input_ids, positions, targets, attention_mask=None, position_ids=None, topk_ids=None,
                    topk_logprobs=None, kd_weight: float = 0.0, evaluation: bool = False, prompt_positions=None,
                    prompt_targets=None, prompt_loss_weight: float = 0.0):
            base = self.base()
            if position_ids is not None and self.flatten_packed:
                # [S, L] -> [1, S*L]: every row still starts at position 0, and flat positions are unchanged
                input_ids, position_ids = input_ids.reshape(1, -1), position_ids.reshape(1, -1)
            hidden = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                        use_cache=False).last_hidden_state
            flat = hidden.reshape(-1, hidden.shape[-1])
            options = {"divergence_name": "forward_kl", "temperature": 1.0} if evaluation else self.loss_options
            sums = chunked_head_loss(
                flat.index_select(0, positions), base.get_output_embeddings(), targets, topk_ids, topk_logprobs,
                kd_weight=kd_weight, chunk_size=self.chunk_size, **options,
            )
            if evaluation or prompt_positions is None or prompt_loss_weight <= 0:
                return sums
            # Prompt tokens: plain next-token CE (the corpus has no teacher distribution there).
            prompt = chunked_head_loss(flat.index_select(0, prompt_positions), base.get_output_embeddings(),
                                       prompt_targets, None, None, kd_weight=0.0, chunk_size=self.chunk_size)
            return sums._replace(total=sums.total + prompt_loss_weight * prompt.total, prompt_ce=prompt.ce)

    return StudentWithLoss


def check_packing_support(attn: str) -> None:
    """--packing relies on transformers turning restarting position_ids (and no attention mask)
    into per-row attention; fail before step 1 where the installed release cannot."""
    import transformers

    try:
        if attn.startswith("flash_attention"):
            from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids  # noqa: F401
        else:
            from transformers.masking_utils import find_packed_sequence_indices  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"--packing: transformers {transformers.__version__} cannot keep packed rows apart with {attn} attention "
            "(no packed-sequence support from position_ids); upgrade transformers (5.x has it) or train with --no-packing"
        ) from None


def _load_tokenizer(source: StudentSource):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source.tokenizer)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--student {source.origin}: cannot load tokenizer {source.tokenizer!r}: {exc}") from None


def _student_config(source: StudentSource, tokenizer):
    from transformers import AutoConfig

    if source.config is not None:
        config = dict(source.config)
        model_type = config.pop("model_type", None)
        if not model_type:
            raise ConfigError(f"--student {source.origin}: config needs model_type (e.g. qwen2)")
        if not config.get("vocab_size"):
            config["vocab_size"] = -(-len(tokenizer) // 64) * 64
        config.setdefault("eos_token_id", tokenizer.eos_token_id)
        config.setdefault("pad_token_id", tokenizer.pad_token_id)
        try:
            return AutoConfig.for_model(model_type, **config)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"--student {source.origin}: bad model config: {exc}") from None
    try:
        return AutoConfig.from_pretrained(source.model)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--student {source.origin}: cannot load {source.model!r}: {exc}") from None


def _load_model(source: StudentSource, model_config, dtype, attn: str):
    from transformers import AutoModelForCausalLM

    if source.config is not None:
        return AutoModelForCausalLM.from_config(model_config, dtype=dtype, attn_implementation=attn)
    try:
        return AutoModelForCausalLM.from_pretrained(source.model, dtype=dtype, attn_implementation=attn)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--student {source.origin}: cannot load weights from {source.model!r}: {exc}") from None


# ----------------------------------------------------------------------------- run

def run(config: TrainConfig) -> dict[str, Any]:
    """Train; returns a summary (steps, final losses, paths). See the module docstring."""
    import torch

    from distill.corpus import CorpusError, open_corpus
    from distill.fingerprint import tokenizer_fingerprint

    out = Path(config.out)
    rank_env = int(os.environ.get("RANK", "0"))
    is_main_env = rank_env == 0

    def say(msg: str) -> None:
        if is_main_env:
            print(msg, file=sys.stderr, flush=True)

    # ---- checks that need no model: nothing is written before they pass
    if config.deepspeed is None and launcher_deepspeed(os.environ):
        config = dataclasses.replace(config, deepspeed=launcher_deepspeed(os.environ))
        say(f"DeepSpeed from accelerate launch --use_deepspeed: --deepspeed {config.deepspeed}")
    if out.exists() and not config.resume and (complete_checkpoints(out) or (out / "final").exists()
                                               or (out / "metrics.jsonl").exists()):
        raise ConfigError(f"--out {out}: already holds a training run; pass --resume to continue it or choose a new --out")
    source, _ = resolve_student(config.student, config.tokenizer)
    if config.tracker != "none":  # fail now, not after OUT exists
        module = "torch.utils.tensorboard" if config.tracker == "tensorboard" else "mlflow"
        try:
            __import__(module)
        except ImportError:
            raise ConfigError(f"--tracker {config.tracker}: not installed (pip install 'distill[{config.tracker}]')") from None
    try:
        corpus = open_corpus(list(config.corpus))
        if config.verify_corpus:
            corpus.verify()
    except CorpusError as exc:
        raise ConfigError(f"--corpus: {exc}") from None
    tokenizer = _load_tokenizer(source)
    student_fp = tokenizer_fingerprint(tokenizer)
    if not corpus.tokenizer_fingerprint:
        say(f"warning: corpus {config.corpus[0]} records no tokenizer fingerprint; cannot check it matches the student's")
    if corpus.tokenizer_fingerprint and corpus.tokenizer_fingerprint != student_fp:
        raise ConfigError(
            f"--corpus {config.corpus[0]}: tokenizer fingerprint {corpus.tokenizer_fingerprint[:12]} differs from the "
            f"student's ({source.tokenizer}: {student_fp[:12]}). Logit KD needs the teacher's tokenizer; "
            "use a student from the same family or a corpus generated by a matching teacher")
    model_config = _student_config(source, tokenizer)
    vocab_size = int(model_config.vocab_size)
    if vocab_size < len(tokenizer):
        raise ConfigError(f"--student {source.origin}: vocab_size {vocab_size} < tokenizer length {len(tokenizer)}")
    if config.packing:
        check_packing_support(config.attn_implementation)
    kd_weight = config.kd_weight
    if corpus.black_box and kd_weight > 0:
        say(f"note: corpus {config.corpus[0]} is black-box (no teacher log-probs, top_k=0): "
            f"training with CE on the teacher's responses only; --kd-weight {kd_weight} is ignored")
        kd_weight = 0.0

    # ---- distributed setup (reads the launcher's environment)
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported() and config.precision != "fp32"
    if config.precision == "bf16" and not bf16:
        raise ConfigError("--precision bf16 needs a CUDA GPU with bf16 support; use auto or fp32 here")
    plugin = None
    if config.deepspeed:
        plugin = DeepSpeedPlugin(hf_ds_config=deepspeed_config(
            config.deepspeed, grad_accum=config.grad_accum, max_grad_norm=config.max_grad_norm, bf16=bf16))
    if plugin is not None and "WORLD_SIZE" not in os.environ:
        # a single process without a launcher: give DeepSpeed a 1-process rendezvous instead of
        # letting it probe for MPI
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        rendezvous = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        os.environ.update(rendezvous)
    else:
        rendezvous = {}
    # accelerate marks the process environment as DeepSpeed when given a plugin; put it back afterwards
    use_deepspeed_env = os.environ.get("ACCELERATE_USE_DEEPSPEED")
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
        from accelerate.utils import DistributedType

        assert accelerator.distributed_type == DistributedType.DEEPSPEED, accelerator.distributed_type
    try:
        return _train(config, accelerator, corpus, tokenizer, source, model_config, kd_weight, student_fp, out, say)
    finally:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config
        from accelerate.state import AcceleratorState, GradientState

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


def _train(config, accelerator, corpus, tokenizer, source, model_config, kd_weight, student_fp, out, say):
    import torch
    from accelerate.utils import set_seed
    from tqdm import tqdm

    from distill import train_data

    rank, world = accelerator.process_index, accelerator.num_processes
    is_main = accelerator.is_main_process
    spec = train_data.BatchSpec(
        max_seq_len=config.max_seq_len, tokens_per_batch=None if config.batch_size else config.tokens_per_batch,
        batch_size=config.batch_size, grad_accum=config.grad_accum, world_size=world, seed=config.seed,
        packing=config.packing,
    )
    lengths = corpus.lengths()
    eval_rows = config.eval_rows or (64 if config.eval_every else 0)  # --eval-every alone: 64 rows
    held_out = train_data.holdout_rows(corpus.row_group_offsets, corpus.num_rows, eval_rows, config.seed)
    steps_per_epoch = [train_data.steps_in(train_data.plan_epoch(lengths, corpus.row_group_offsets, spec, 0, held_out), spec)]
    if steps_per_epoch[0] == 0:
        raise ConfigError(
            f"--corpus: {corpus.num_rows} rows make no full optimizer step (need {spec.micro_per_step} micro-batches of "
            f"<= {config.tokens_per_batch or config.batch_size} {'tokens' if config.batch_size is None else 'rows'}; "
            f"held out {len(held_out)}); lower --grad-accum/--tokens-per-batch or add data")
    if config.max_steps is not None:
        total_steps = config.max_steps
    else:
        steps_per_epoch += [train_data.steps_in(train_data.plan_epoch(lengths, corpus.row_group_offsets, spec, e, held_out), spec)
                            for e in range(1, config.epochs)]
        total_steps = sum(steps_per_epoch)

    # ---- model
    set_seed(config.seed)
    dtype = torch.bfloat16 if (accelerator.mixed_precision == "bf16" and config.deepspeed) else torch.float32
    model = _load_model(source, model_config, dtype, config.attn_implementation)
    model.config.use_cache = False
    if config.gradient_checkpointing:
        # transformers >= 5.2x renamed it; the lent GPU machine's older release has only the old name
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora_config = None
    if config.lora:
        from peft import LoraConfig, get_peft_model

        lora_config = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                 target_modules=list(config.lora_targets), task_type="CAUSAL_LM")
        try:
            model = get_peft_model(model, lora_config)
        except ValueError as exc:
            raise ConfigError(f"--lora-targets {','.join(config.lora_targets)}: {exc}") from None
    loss_options = {"divergence_name": config.divergence, "temperature": config.kd_temperature,
                    "beta": config.jsd_beta, "alpha": config.skew_alpha}
    wrapper = _student_with_loss_cls()(model, loss_options, config.chunk_size,
                                       flatten_packed=config.attn_implementation.startswith("flash_attention"))
    params = [p for p in wrapper.parameters() if p.requires_grad]
    # Fused AdamW: one kernel over all parameters instead of ~10 ops per tensor (on the demo
    # student on CPU ~0.5-1 ms a step instead of ~3.5-4.5). DeepSpeed steps the optimizer on its
    # own flattened partitions, so it keeps torch's default implementation.
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                                  fused=None if config.deepspeed else True)

    # ---- OUT: everything above passed; from here on we write
    resume_from = complete_checkpoints(out)[-1] if config.resume and complete_checkpoints(out) else None
    if resume_from is not None:
        saved_packing = json.loads((resume_from / "trainer_state.json").read_text()).get("packing", False)
        if saved_packing != config.packing:  # the data position only means something in the same plan
            raise ConfigError(f"--resume: {resume_from} was trained with{'' if saved_packing else 'out'} --packing; "
                              f"resume with {'--packing' if saved_packing else '--no-packing'}")
    if is_main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        _atomic_write(out / "train_config.json", json.dumps(dataclasses.asdict(config), indent=2))
    accelerator.wait_for_everyone()
    wrapper, optimizer = accelerator.prepare(wrapper, optimizer)
    device = accelerator.device

    start_step, epoch, step_in_epoch = 0, 0, 0
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state = json.loads((resume_from / "trainer_state.json").read_text())
        start_step, epoch, step_in_epoch = state["global_step"], state["epoch"], state["step_in_epoch"]
        say(f"resumed from {resume_from} (step {start_step})")
    elif config.resume:
        say(f"--resume: no complete checkpoint in {out}/checkpoints; starting from step 0")
    metrics_path = out / "metrics.jsonl"
    if is_main:
        kept = []
        if resume_from is not None and metrics_path.exists():  # drop lines logged after the checkpoint
            kept = [line for line in metrics_path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= start_step]
        _atomic_write(metrics_path, "".join(line + "\n" for line in kept))
    tracker_log, tracker_close = _open_tracker(config.tracker, out, dataclasses.asdict(config)) if is_main else (
        (lambda m, s: None), (lambda: None))

    stats = train_data.VocabStats(vocab_size=int(model_config.vocab_size))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collate_kwargs = {"max_seq_len": config.max_seq_len, "pad_id": int(pad_id), "top_k": corpus.top_k,
                      "stats": stats, "log": say, "prompt_loss": config.prompt_loss_weight > 0}
    eval_batches = []
    if len(held_out):
        reader = train_data.RowReader(corpus)
        rows = [reader.row(int(i)) for i in held_out]
        rows.sort(key=lambda r: len(r.prompt_ids) + len(r.response_ids))
        per = max(1, (config.tokens_per_batch or config.max_seq_len * (config.batch_size or 1)) // config.max_seq_len)
        eval_batches = [train_data.collate(rows[i:i + per], **{**collate_kwargs, "prompt_loss": False})
                        for i in range(0, len(rows), per)]

    def to_device(batch):
        return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()
                if k not in ("num_tokens", "num_input_tokens")}

    def reduce_sum(values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=device)
        if world > 1:
            t = accelerator.reduce(t, reduction="sum")
        return t.tolist()

    def evaluate(step: int) -> dict[str, Any]:
        wrapper.eval()
        kd = ce = n = 0.0
        with torch.no_grad():
            for batch in eval_batches:
                sums = wrapper(**to_device(batch), kd_weight=0.0, evaluation=True)
                kd += float(sums.kd)
                ce += float(sums.ce)
                n += batch["num_tokens"]
        wrapper.train()
        record = {"step": step, "eval_ce": ce / max(n, 1), "eval_tokens": int(n)}
        if corpus.top_k:
            record["eval_kl"] = kd / max(n, 1)
        return record

    def log_metrics(record: dict[str, Any]) -> None:
        if is_main:
            with open(metrics_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            tracker_log(record, record["step"])

    def save_checkpoint(step: int) -> None:
        final_dir = out / "checkpoints" / f"step-{step:07d}"
        tmp = out / "checkpoints" / f".tmp-step-{step:07d}"
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        if is_main:
            state = {"global_step": step, "epoch": cur_epoch, "step_in_epoch": cur_step_in_epoch + 1,
                     "total_steps": total_steps, "student_tokenizer_fingerprint": student_fp, "packing": config.packing}
            if state["step_in_epoch"] >= steps_for_epoch(cur_epoch):
                state["epoch"], state["step_in_epoch"] = cur_epoch + 1, 0
            _atomic_write(tmp / "trainer_state.json", json.dumps(state, indent=2))
            _atomic_write(tmp / "COMPLETE", f"step {step}\n")  # the marker goes last
            shutil.rmtree(final_dir, ignore_errors=True)
            os.replace(tmp, final_dir)
            for old in complete_checkpoints(out)[:-config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    def steps_for_epoch(e: int) -> int:
        if e < len(steps_per_epoch):
            return steps_per_epoch[e]
        return train_data.steps_in(train_data.plan_epoch(lengths, corpus.row_group_offsets, spec, e, held_out), spec)

    say(f"training {source.origin} on {corpus.num_rows} rows ({len(held_out)} held out), top_k={corpus.top_k}, "
        f"kd_weight={kd_weight}, divergence={config.divergence}, {'LoRA' if config.lora else 'full'}, "
        f"{world} process(es), deepspeed={config.deepspeed or 'off'}, {total_steps} steps")
    if eval_batches and start_step == 0:
        log_metrics(evaluate(0))

    steps = train_data.iter_steps(
        corpus, lengths, spec, rank=rank, start_epoch=epoch, start_step=step_in_epoch,
        num_epochs=None if config.max_steps is not None else config.epochs, exclude=held_out,
        collate_kwargs=collate_kwargs,
    )
    bar = tqdm(total=total_steps, initial=start_step, disable=not is_main, desc="train", dynamic_ncols=True)
    wrapper.train()
    step = start_step
    last: dict[str, Any] = {}
    cur_epoch, cur_step_in_epoch = epoch, step_in_epoch
    scale_factor = config.grad_accum * world
    while step < total_steps:
        try:
            cur_epoch, cur_step_in_epoch, micro = next(steps)
        except StopIteration:
            break
        t0 = time.perf_counter()
        lr = lr_at(config, step, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        local_tokens = sum(m["num_tokens"] for m in micro)
        local_inputs = sum(m["num_input_tokens"] for m in micro)
        local_slots = sum(m["input_ids"].numel() for m in micro)
        global_tokens, global_inputs, global_slots = reduce_sum([local_tokens, local_inputs, local_slots])
        scale = scale_factor / max(global_tokens, 1.0)
        kd_sum = ce_sum = total_sum = prompt_sum = 0.0
        local_prompt = sum(int(m["prompt_targets"].numel()) for m in micro if "prompt_targets" in m)
        for batch in micro:
            with accelerator.accumulate(wrapper):
                sums = wrapper(**to_device(batch), kd_weight=kd_weight, prompt_loss_weight=config.prompt_loss_weight)
                accelerator.backward(sums.total * scale)
                if accelerator.sync_gradients and config.max_grad_norm > 0 and not config.deepspeed:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            kd_sum += float(sums.kd)
            ce_sum += float(sums.ce)
            total_sum += float(sums.total.detach())
            prompt_sum += float(sums.prompt_ce) if sums.prompt_ce is not None else 0.0
        kd_sum, ce_sum, total_sum, prompt_sum, global_prompt = reduce_sum([kd_sum, ce_sum, total_sum, prompt_sum, local_prompt])
        if not math.isfinite(total_sum):
            bar.close()
            tracker_close()
            kept = sorted((out / "checkpoints").glob("step-*")) if (out / "checkpoints").is_dir() else []
            raise TrainingDiverged(
                f"the loss is {total_sum} at step {step + 1} (lr {lr:.3g}): training diverged, so no final model was "
                f"saved; lower --lr (or the recipe's train.lr), keep --max-grad-norm > 0"
                + (", or train in fp32 (--precision fp32)" if accelerator.mixed_precision == "bf16" else "")
                + (f"; checkpoints kept: {', '.join(p.name for p in kept)} in {out / 'checkpoints'} (the newest may "
                   f"already hold the diverging update)" if kept else "; no checkpoint was written (--save-every)"))
        step += 1
        elapsed = time.perf_counter() - t0
        n = max(global_tokens, 1.0)
        last = {"step": step, "epoch": cur_epoch, "loss": total_sum / n, "kd": kd_sum / n, "ce": ce_sum / n,
                "lr": lr, "response_tokens": int(global_tokens), "tokens_per_s": global_inputs / elapsed,
                "padding_share": 1.0 - global_inputs / max(global_slots, 1.0), "step_time_s": elapsed}
        if config.prompt_loss_weight > 0:
            last["prompt_ce"] = prompt_sum / max(global_prompt, 1.0)
        log_metrics(last)
        bar.update(1)
        bar.set_postfix(loss=f"{last['loss']:.4f}", kd=f"{last['kd']:.4f}", ce=f"{last['ce']:.4f}",
                        tok_s=f"{last['tokens_per_s']:.0f}")
        if eval_batches and config.eval_every and step % config.eval_every == 0 and step < total_steps:
            log_metrics(evaluate(step))
        if config.save_every and step % config.save_every == 0 and step < total_steps:
            save_checkpoint(step)
    bar.close()
    final_eval = evaluate(step) if eval_batches else None
    if final_eval:
        log_metrics(final_eval)
    if step > 0 and config.save_every:
        save_checkpoint(step)
    final = _save_final(accelerator, wrapper, model_config, tokenizer, source, lora_config, out, config, say)
    tracker_close()
    if stats.oov_topk_entries or stats.dropped_rows or stats.long_prompts:
        say(f"vocabulary: {stats.oov_topk_entries} teacher top-k entries >= student vocab {stats.vocab_size} moved to "
            f"the tail bucket; {stats.dropped_rows} rows with unembeddable ids and {stats.long_prompts} rows with "
            f"prompts > --max-seq-len skipped")
    summary = {"steps": step, "final": str(final), "metrics": str(metrics_path), **{k: last.get(k) for k in ("loss", "kd", "ce")},
               "eval": final_eval, "oov_topk_entries": stats.oov_topk_entries}
    say(f"done: {step} steps; loss {last.get('loss', float('nan')):.4f} (kd {last.get('kd', 0):.4f}, ce "
        f"{last.get('ce', 0):.4f})" + (f"; held-out KL {final_eval['eval_kl']:.4f}" if final_eval and 'eval_kl' in final_eval else "")
        + f"; model in {final}")
    return summary


def _save_final(accelerator, wrapper, model_config, tokenizer, source, lora_config, out, config, say) -> Path:
    """Write OUT/final (merged HF model dir) and, for LoRA, OUT/adapter. Atomic renames."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(wrapper)  # ZeRO-3: gathered to full tensors
    final = out / "final"
    if accelerator.is_main_process:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()  # the copy built below must be a plain CPU model, not partitioned
        state_dict = {k[len("model."):]: v.detach().cpu() for k, v in state_dict.items() if k.startswith("model.")}
        dtype = next(iter(state_dict.values())).dtype
        fresh = AutoModelForCausalLM.from_config(model_config, dtype=dtype)
        if lora_config is not None:
            from peft import get_peft_model

            fresh = get_peft_model(fresh, lora_config)
        missing, unexpected = fresh.load_state_dict(state_dict, strict=False)
        tied = set(getattr(fresh, "_tied_weights_keys", None) or [])
        bad = [k for k in missing if not any(k.endswith(str(t)) for t in tied) and "lm_head" not in k]
        assert not bad and not unexpected, (bad[:5], unexpected[:5])
        if lora_config is not None:
            adapter_tmp = out / ".adapter.tmp"
            shutil.rmtree(adapter_tmp, ignore_errors=True)
            fresh.save_pretrained(str(adapter_tmp))
            tokenizer.save_pretrained(str(adapter_tmp))
            shutil.rmtree(out / "adapter", ignore_errors=True)
            os.replace(adapter_tmp, out / "adapter")
            fresh = fresh.merge_and_unload()
        fresh.tie_weights()
        tmp = out / ".final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        fresh.config.use_cache = True
        if source.model and Path(source.model, "generation_config.json").is_file():
            generation = GenerationConfig.from_pretrained(source.model)
        else:
            generation = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        fresh.generation_config = generation
        fresh.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final
