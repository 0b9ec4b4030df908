"""The student: its recipe (typed), tokenizer, config and weights, LoRA, and the loss wrapper.

A student recipe (students/*.yaml) is a ``StudentRecipe``: unknown keys are errors naming the file
and line. Its ``train:`` block, ``lora:`` block, ``deepspeed`` and ``attn_implementation`` become
the lowest config layer of ``distill train`` (distill/train/config.py), each key remembering its
line, so a bad value there is reported at ``students/x.yaml:14: train.lr``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.config import ConfigError, Layer, bad, field, load_config, read_yaml_layer


@dataclass(frozen=True)
class StudentRecipe:
    """A student recipe file. Exactly one of ``model`` (weights) and ``config`` (random init)."""

    description: str = field("", help="one line shown in listings")
    model: str | None = field(None, help="HF model dir (relative to the recipe) or hub id")
    config: str | dict | None = field(None, help="model config for random init: a mapping, or a config .json path")
    tokenizer: str | None = field(None, help="tokenizer dir or hub id (default: the model's)")
    attn_implementation: str | None = field(None, help="attention kernel for training")
    deepspeed: str | None = field(None, help="zero2, zero3 or a DeepSpeed JSON path (relative to the recipe)")
    lora: dict = field(default_factory=dict, help="LoRA defaults: enabled, rank, alpha, dropout, targets")
    train: dict = field(default_factory=dict, help="training defaults: any `distill train` option")

    def __post_init__(self) -> None:
        if (self.model is None) == (self.config is None):
            bad("model", "give exactly one of 'model' (weights) or 'config' (random init)")
        if self.config is not None and self.tokenizer is None:
            bad("tokenizer", "a 'config' student needs 'tokenizer'")
        unknown = set(self.lora) - set(LORA_KEYS)
        if unknown:
            bad("lora", f"unknown key(s) {sorted(unknown)}; known: {', '.join(LORA_KEYS)}")


LORA_KEYS = {"enabled": "lora", "rank": "lora_rank", "alpha": "lora_alpha", "dropout": "lora_dropout",
             "targets": "lora_targets"}


@dataclass(frozen=True)
class StudentSource:
    """Where the student comes from: pretrained weights (``model``) or a config (random init)."""

    model: str | None  # HF model dir or hub id
    config: dict[str, Any] | None  # config mapping for random init
    tokenizer: str
    origin: str  # what --student named, for messages


def _weights_in(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))


def _recipe_defaults(recipe: StudentRecipe, file_layer: Layer) -> Layer:
    """The recipe's training defaults as a config layer that remembers each key's line."""
    from distill.recipes import recipe_relative

    values: dict[str, Any] = {}
    paths: dict[str, str] = {}
    for key, target in LORA_KEYS.items():
        if key in recipe.lora:
            values[target], paths[target] = recipe.lora[key], f"lora.{key}"
    if recipe.deepspeed:
        ds = recipe.deepspeed
        values["deepspeed"] = ds if ds in ("zero2", "zero3") else recipe_relative(file_layer.name, ds)
    if recipe.attn_implementation:
        values["attn_implementation"] = recipe.attn_implementation
    for key, value in recipe.train.items():
        name = str(key).replace("-", "_")
        values[name], paths[name] = value, f"train.{key}"
    return Layer(file_layer.name, values, file_layer.lines, paths)


def resolve_student(spec: str, tokenizer: str | None = None) -> tuple[StudentSource, Layer | None]:
    """--student value -> (source, the recipe's training defaults as a config layer, or None).

    Accepted: an HF model dir (config.json + weights; config.json alone = random init), a
    config .json (random init; tokenizer from its folder or --tokenizer), a recipe YAML path, a
    dir holding recipe.yaml, a shipped recipe name, or a hub id (``org/name``).
    """
    from distill.recipes import find_recipe, looks_like_hub_id, recipe_relative

    path = Path(spec)
    if path.is_dir() and (path / "config.json").is_file() and not (path / "recipe.yaml").is_file():
        config = None if _weights_in(path) else json.loads((path / "config.json").read_text())
        return StudentSource(None if config else str(path), config, tokenizer or str(path), spec), None
    if path.is_file() and path.suffix == ".json":
        return StudentSource(None, json.loads(path.read_text()), tokenizer or str(path.parent), spec), None
    recipe_path = find_recipe("students", spec)
    if recipe_path is None:
        if looks_like_hub_id(spec):
            return StudentSource(spec, None, tokenizer or spec, spec), None  # e.g. Qwen/Qwen2.5-0.5B-Instruct
        raise ConfigError(f"--student: '{spec}' not found: not a student recipe, HF model dir, config .json or hub id")
    file_layer = read_yaml_layer(recipe_path)
    recipe = load_config(StudentRecipe, file_layer)
    config = recipe.config
    if isinstance(config, str):
        config = json.loads(Path(recipe_relative(recipe_path, config)).read_text())
    model = recipe_relative(recipe_path, recipe.model) if recipe.model else None
    tok = tokenizer or (recipe_relative(recipe_path, recipe.tokenizer) if recipe.tokenizer else model)
    assert tok is not None  # StudentRecipe checks a config student names its tokenizer
    source = StudentSource(model, dict(config) if config else None, tok, str(recipe_path))
    return source, _recipe_defaults(recipe, file_layer)


def load_tokenizer(source: StudentSource):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source.tokenizer)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--student {source.origin}: cannot load tokenizer {source.tokenizer!r}: {exc}") from None


def student_config(source: StudentSource, tokenizer):
    """The student's transformers config (vocab_size filled from the tokenizer for random init)."""
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


def load_model(source: StudentSource, model_config, dtype, attn: str):
    from transformers import AutoModelForCausalLM

    if source.config is not None:
        return AutoModelForCausalLM.from_config(model_config, dtype=dtype, attn_implementation=attn)
    try:
        return AutoModelForCausalLM.from_pretrained(source.model, dtype=dtype, attn_implementation=attn)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--student {source.origin}: cannot load weights from {source.model!r}: {exc}") from None


def add_lora(model, config):
    """Wrap ``model`` in a LoRA adapter from ``config``'s lora_* fields; returns (model, LoraConfig)."""
    from peft import LoraConfig, get_peft_model

    lora_config = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                             target_modules=list(config.lora_targets), task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora_config), lora_config
    except ValueError as exc:
        raise ConfigError(f"--lora-targets {','.join(config.lora_targets)}: {exc}") from None


def check_packing_support(attn: str) -> None:
    """--packing relies on transformers turning restarting position_ids (and no attention mask)
    into per-row attention; fail before step 1 where the installed release cannot."""
    import transformers

    try:
        if attn.startswith("flash_attention"):
            from transformers.modeling_flash_attention_utils import (
                prepare_fa_kwargs_from_position_ids,  # noqa: F401
            )
        else:
            from transformers.masking_utils import find_packed_sequence_indices  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"--packing: transformers {transformers.__version__} cannot keep packed rows apart with {attn} attention "
            "(no packed-sequence support from position_ids); upgrade transformers (5.x has it) or train with --no-packing"
        ) from None


def student_with_loss_cls():
    """The ``StudentWithLoss`` module class (built lazily: torch is imported only when training)."""
    import torch

    from distill.losses import chunked_head_loss

    class StudentWithLoss(torch.nn.Module):
        """Wraps the HF (or PEFT) model so the engine's forward returns loss sums, never logits.

        The decoder runs on the whole padded (or packed) batch; only response positions are
        gathered and sent through the LM head, chunk by chunk (``chunked_head_loss``). Going
        through the wrapped modules keeps ZeRO-3's gather/release hooks firing for every parameter.
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
