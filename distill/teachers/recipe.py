"""The teacher recipe, typed: every key a recipe file may hold, with unknown keys an error.

A recipe is named on the CLI by name (``--teacher qwen2.5-72b-instruct``), by path to a YAML
file, or by a local HF model folder (``{model: DIR, backend: hf}``). The backend blocks (``hf:``,
``vllm:``, ``endpoint:``) and ``augment:`` are checked against their own settings by the backend
that reads them, with the recipe file in the message.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from distill.config import ConfigError, Layer, bad, field, load_config, read_yaml_layer

Backend = Literal["hf", "vllm", "openai"]


@dataclass(frozen=True)
class TeacherRecipe:
    model: str = field("", help="HF model dir (relative to the recipe) or hub id; for `openai`, the served model name")
    backend: Backend = field("hf", help="hf (in-process transformers), vllm (offline engine) or openai (HTTP endpoint)")
    description: str = field("", help="one line shown in listings")
    revision: str | None = field(None, help="hub revision, recorded in the corpus manifest")
    tokenizer: str | None = field(None, help="tokenizer dir or hub id (default: the model's)")
    tokenizer_revision: str | None = field(None, help="hub revision of the tokenizer")
    max_context: int | None = field(None, help="prompt + response tokens the teacher takes")
    batch_size: int | None = field(None, help="hf: prompts per generate() call")
    device: str | None = field(None, help="hf: auto, cpu, cuda, cuda:N")
    dtype: str | None = field(None, help="hf: auto, float32, bfloat16, float16")
    trust_remote_code: bool | None = field(None, help="hf: run the model repository's own code")
    kv_cache: str | None = field(None, help="hf: auto, dynamic, static or shrinking")
    served_model_name: str | None = field(None, help="openai: the model name requests carry (default: model)")
    hf: dict = field(default_factory=dict, help="hf backend settings (the keys above, nested)")
    vllm: dict = field(default_factory=dict, help="vLLM engine settings (VLLMEngineConfig keys)")
    endpoint: dict = field(default_factory=dict, help="OpenAI-compatible endpoint settings (EndpointConfig keys)")
    augment: dict = field(default_factory=dict, help="augmentation templates: meta_prompt, judge_prompt, judge_rubric")
    name: str = field("", help="short name (default: the recipe file's or folder's name)")

    # Where the recipe was read from, for messages (not a key of the file).
    source: str = dataclasses.field(default="teacher recipe", compare=False, metadata={"internal": True})

    def __post_init__(self) -> None:
        if not self.model:
            bad("model", "the teacher recipe names no model")

    def block(self, section: str) -> dict[str, Any]:
        """A copy of the ``hf``/``vllm``/``endpoint``/``augment`` block."""
        return dict(getattr(self, section))

    @classmethod
    def from_mapping(cls, values: dict[str, Any], source: str = "teacher recipe") -> "TeacherRecipe":
        """A recipe from a mapping (tests, programmatic use); errors name ``source``."""
        return dataclasses.replace(load_config(cls, Layer(source, values)), source=source)


def read_teacher_recipe(spec: str) -> TeacherRecipe:
    """A teacher recipe from a recipe name, a recipe YAML, or a local HF model dir."""
    from distill.recipes import find_recipe, recipe_names, recipe_relative

    path = Path(spec)
    if path.is_dir() and (path / "config.json").is_file():
        return TeacherRecipe(model=str(path.resolve()), backend="hf", name=path.name, source=str(path))
    recipe_path = find_recipe("teachers", spec)
    if recipe_path is None:
        raise ConfigError(f"'{spec}' is neither a YAML file nor a teacher recipe; shipped teachers: "
                          f"{', '.join(recipe_names('teachers'))}")
    layer = read_yaml_layer(recipe_path)
    if "source" in layer.values:
        raise ConfigError(f"{layer.where('source')}: unknown key for TeacherRecipe")
    recipe = load_config(TeacherRecipe, layer)
    name = recipe.name or (recipe_path.parent.name if recipe_path.name == "recipe.yaml" else recipe_path.stem)
    return dataclasses.replace(recipe, model=recipe_relative(recipe_path, recipe.model), name=name,
                               source=str(recipe_path))
