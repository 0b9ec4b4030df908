"""Teacher backends. ``load_teacher`` picks one from a recipe; heavy imports happen inside it."""

from __future__ import annotations

import typing
from typing import Any

from distill.config import ConfigError
from distill.teachers.base import (
    GenerationRequest,
    SamplingParams,
    ScoreRequest,
    Teacher,
    TeacherOutput,
)
from distill.teachers.recipe import Backend, TeacherRecipe, read_teacher_recipe

BACKENDS: tuple[str, ...] = typing.get_args(Backend)

__all__ = [
    "BACKENDS",
    "Backend",
    "GenerationRequest",
    "SamplingParams",
    "ScoreRequest",
    "Teacher",
    "TeacherOutput",
    "TeacherRecipe",
    "load_teacher",
    "teacher_recipe",
]


def teacher_recipe(spec: str) -> TeacherRecipe:
    """The typed teacher recipe ``spec`` names: a recipe name, a recipe YAML, or a local HF model dir
    (``{model: DIR, backend: hf}``). Relative paths in a recipe resolve against its folder."""
    return read_teacher_recipe(spec)


def load_teacher(spec: str, backend: str | None = None, **overrides: Any) -> Teacher:
    """Build the teacher named by ``spec`` on ``backend`` (default: the recipe's)."""
    recipe = teacher_recipe(spec)
    backend = backend or recipe.backend
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
