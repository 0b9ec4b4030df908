"""Resolving a --model spec and opening it: in-process transformers, or a Teacher backend (vLLM, HTTP)."""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from distill.config import ConfigError
from distill.eval.config import EvalConfig
from distill.eval.generation import Generation, generate_greedy
from distill.eval.kl import TeacherRef, kl_to_teacher


def resolve_model(spec: str) -> tuple[str, str]:
    """(model, backend) for a ``--model`` PATH: a local model dir, a recipe (teacher or student,
    by name or path) whose ``model`` is a dir or hub id, or a hub id ``org/name``. The backend is
    "hf" (loaded here with transformers) unless a teacher recipe names vllm or openai: such a
    model is then run through its Teacher backend. A spec that names nothing is a ConfigError; a
    dir that exists but does not load is reported later as that model's failure."""
    from distill.recipes import find_recipe, looks_like_hub_id
    from distill.teachers import teacher_recipe

    path = Path(spec)
    if path.is_dir() and not (path / "recipe.yaml").is_file():
        if not (path / "config.json").is_file() and (path / "final" / "config.json").is_file():
            return str(path / "final"), "hf"  # a `distill train` output folder: its merged model
        return str(path), "hf"
    teacher_path, student_path = find_recipe("teachers", spec), find_recipe("students", spec)
    if teacher_path is not None:
        try:
            recipe = teacher_recipe(spec)
            return recipe.model, recipe.backend
        except ConfigError:
            if student_path != teacher_path:  # a recipe YAML path may be either kind: try the other
                raise
            try:
                return _student_model(spec), "hf"
            except ConfigError:
                pass
            raise
    if student_path is not None:
        return _student_model(spec), "hf"
    if looks_like_hub_id(spec):
        return spec, "hf"  # e.g. Qwen/Qwen2.5-0.5B-Instruct
    raise ConfigError(f"--model: '{spec}' is not a model directory, a teacher/student recipe, or a hub id (org/name)")


def _student_model(spec: str) -> str:
    from distill.train.student import resolve_student

    source, _ = resolve_student(spec)
    if source.model is None:
        raise ConfigError(f"--model {spec}: student recipe {source.origin} names no 'model' to evaluate (train "
                          "it first, then pass the output dir)")
    return source.model


def _torch_device_dtype(config: EvalConfig) -> tuple[Any, Any]:
    import torch

    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype_name = config.dtype
    if dtype_name == "auto":
        dtype_name = "bfloat16" if device.startswith("cuda") else "float32"
    return torch.device(device), getattr(torch, dtype_name)


def load_model(path: str, device: Any, dtype: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if Path(path).is_dir() and not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model directory (nor a `distill train` output with final/)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.to(device)
    model.eval()
    return model, tokenizer




def count_params(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _sync(device: Any) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


# A prompt as every backend needs it: token ids (chat template applied once, here) and the chat
# messages they came from (for chat-API endpoints that template server-side).
Prompt = tuple[list[int], tuple[dict[str, str], ...]]


@dataclass
class _Opened:
    """A model ready to answer: ``generate(prompts, capture_top_k, desc)`` greedy-decodes
    (prompt ids, chat messages) pairs; ``kl`` is None when the backend exposes no full distribution."""

    via: str
    tokenizer: Any
    params: int | None
    generate: Callable[[Sequence[Prompt], int, str | None], list[Generation]]
    kl: Callable[[TeacherRef, str | None], tuple[float, int]] | None
    sync: Callable[[], None]
    close: Callable[[], None]


def _open_hf(model_path: str, config: EvalConfig) -> _Opened:
    import torch

    device, dtype = _torch_device_dtype(config)
    try:
        model, tokenizer = load_model(model_path, device, dtype)
    except Exception as exc:
        raise RuntimeError(f"cannot load model: {type(exc).__name__}: {exc}") from exc

    def generate(prompts: Sequence[Prompt], capture_top_k: int, desc: str | None) -> list[Generation]:
        return generate_greedy(model, tokenizer, [ids for ids, _ in prompts], batch_size=config.batch_size,
                               max_new_tokens=config.max_new_tokens, capture_top_k=capture_top_k, desc=desc,
                               sort_by_length=desc is not None)

    def close() -> None:
        nonlocal model
        model = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    return _Opened(
        via="transformers", tokenizer=tokenizer, params=count_params(model), generate=generate,
        kl=lambda ref, desc: kl_to_teacher(model, ref, batch_size=config.batch_size, desc=desc),
        sync=lambda: _sync(device), close=close,
    )


def params_from_safetensors(model_dir: str | Path) -> int | None:
    """Parameter count from the safetensors headers of a local model dir (no weights read)."""
    files = sorted(Path(model_dir).glob("*.safetensors")) if Path(model_dir).is_dir() else []
    if not files:
        return None
    total = 0
    for path in files:
        with path.open("rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(header_len))
        total += sum(int(np.prod(t["shape"])) for key, t in header.items() if key != "__metadata__")
    return total


def _open_backend(spec: str, model_path: str, config: EvalConfig) -> _Opened:
    """A model served by its Teacher backend (vLLM, OpenAI-compatible HTTP): greedy through the
    protocol; its speed includes the backend's own overheads; no KL (no full distribution)."""
    from tqdm import tqdm

    from distill.teachers import load_teacher
    from distill.teachers.base import GenerationRequest, SamplingParams

    try:
        teacher = load_teacher(spec)
    except Exception as exc:
        raise RuntimeError(f"failed to start '{spec}': {type(exc).__name__}: {exc}") from exc

    def generate(prompts: Sequence[Prompt], capture_top_k: int, desc: str | None) -> list[Generation]:
        # Messages too: a chat-API endpoint applies its own template server-side.
        requests = [
            GenerationRequest(key=str(i), prompt_ids=tuple(ids), seed=0, messages=tuple(messages))
            for i, (ids, messages) in enumerate(prompts)
        ]
        # Backends reject k beyond the vocabulary; the tail bin carries whatever is left.
        k = min(capture_top_k, len(teacher.tokenizer))
        params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=0.0, top_k_logprobs=k)
        outputs: dict[str, Any] = {}
        for out in tqdm(teacher.generate(requests, params), total=len(requests), desc=desc, unit="req",
                        disable=desc is None, leave=False):
            outputs[out.key] = out
        return [
            Generation(
                prompt_ids=list(prompts[i][0]), response_ids=[int(t) for t in outputs[str(i)].response_ids],
                text=outputs[str(i)].text, topk_ids=outputs[str(i)].topk_ids,
                topk_logprobs=outputs[str(i)].topk_logprobs,
            )
            for i in range(len(prompts))
        ]

    return _Opened(
        via=str(teacher.backend), tokenizer=teacher.tokenizer, params=params_from_safetensors(model_path),
        generate=generate, kl=None, sync=lambda: None, close=teacher.close,
    )


def _open(path: str, config: EvalConfig) -> tuple[_Opened, str]:
    model_path, backend = resolve_model(path)
    if backend == "hf":
        return _open_hf(model_path, config), model_path
    return _open_backend(path, model_path, config), model_path
