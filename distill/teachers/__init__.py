"""Teacher backends. ``load_teacher`` picks one from a recipe; heavy imports happen inside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.config import ConfigError
from distill.teachers.base import (
    GenerationRequest,
    SamplingParams,
    ScoreRequest,
    Teacher,
    TeacherOutput,
)

BACKENDS = ("hf", "vllm", "openai")

__all__ = [
    "BACKENDS",
    "GenerationRequest",
    "SamplingParams",
    "ScoreRequest",
    "Teacher",
    "TeacherOutput",
    "load_teacher",
    "teacher_recipe",
]


def teacher_recipe(spec: str) -> dict[str, Any]:
    """A teacher recipe as a mapping, from a recipe name, a recipe YAML, or a local HF model dir.

    A model directory (holding config.json) becomes ``{"model": DIR, "backend": "hf"}``. Relative
    ``model`` paths in a recipe are resolved against the recipe's folder.
    """
    from distill.recipes import resolve_recipe

    path = Path(spec)
    if path.is_dir() and (path / "config.json").is_file():
        return {"name": path.name, "model": str(path.resolve()), "backend": "hf"}
    recipe_path, recipe = resolve_recipe("teachers", spec)
    if "model" not in recipe:
        raise ConfigError(f"{recipe_path}: teacher recipe has no 'model' key")
    model = str(recipe["model"])
    if model.startswith((".", "/")) or (recipe_path.parent / model).exists():
        candidate = (recipe_path.parent / model).resolve()
        if candidate.exists():
            model = str(candidate)
    return {"name": recipe_path.parent.name if recipe_path.name == "recipe.yaml" else recipe_path.stem,
            **recipe, "model": model, "recipe_path": str(recipe_path)}


def load_teacher(spec: str, backend: str | None = None, **overrides: Any) -> Teacher:
    """Build the teacher named by ``spec`` on ``backend`` (default: the recipe's)."""
    recipe = teacher_recipe(spec)
    backend = backend or recipe.get("backend", "hf")
    if backend not in BACKENDS:
        raise ConfigError(f"--backend: unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    if backend == "hf":
        from distill.teachers.hf import HFTeacher

        return HFTeacher.from_recipe(recipe, **overrides)
    if backend == "vllm":
        from distill.teachers.vllm import VLLMTeacher

        return VLLMTeacher.from_recipe(recipe, **overrides)
    from distill.teachers.openai_http import OpenAITeacher

    return OpenAITeacher.from_recipe(recipe, **overrides)
