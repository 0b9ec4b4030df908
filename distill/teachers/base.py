"""The Teacher protocol: what every backend (HF in-process, vLLM, OpenAI-compatible HTTP) returns.

The trainer and the corpus writer never know which backend ran; they see only these values.
Token ids are the teacher's own (prompt ids built once, with the chat template, by
``distill.prompts``); top-k log-probs are from the RAW next-token distribution (temperature 1,
before top-p/top-k warping), sorted by log-prob descending.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Protocol, Sequence

import numpy as np

from distill.errors import DistillError, ExitCode

if TYPE_CHECKING:
    from distill.teachers.recipe import TeacherRecipe


FINISH_REASONS = ("stop", "length")


class TeacherError(DistillError, RuntimeError):
    """A teacher backend failed to answer as the contract requires (server error after retries,
    a response without the log-probs asked for, a malformed engine output). The message names the
    request and what to change."""

    exit_code = ExitCode.MODEL_FAILED


@dataclass(frozen=True)
class SamplingParams:
    """How the teacher samples responses. ``top_k_logprobs`` is how many log-probs to capture."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k_logprobs: int = 20  # 0: text and ids only (black-box teacher, or prompt augmentation)
    stop: tuple[str, ...] = ()
    # A JSON Schema (JSON text) the answer must follow, for backends with structured output
    # (``teacher.structured_output``); others ignore it and rely on the prompt.
    json_schema: str | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k_logprobs < 0:
            raise ValueError(f"top_k_logprobs must be >= 0, got {self.top_k_logprobs}")


@dataclass(frozen=True)
class GenerationRequest:
    """One response to sample. ``key`` is the corpus row id; ``seed`` makes the sample
    reproducible and independent of which other requests share its batch."""

    key: str
    prompt_ids: tuple[int, ...]
    seed: int
    # The chat messages the prompt ids were built from: only a chat-API endpoint (which applies
    # its own template server-side) needs them; every other backend uses the ids.
    messages: tuple[dict[str, str], ...] = field(default=(), compare=False, hash=False)


@dataclass(frozen=True)
class ScoreRequest:
    """A fixed (prompt, response) pair to teacher-force for top-k log-probs at each response position."""

    key: str
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]


@dataclass
class TeacherOutput:
    """One sampled (or scored) response.

    Shapes: ``response_ids`` [T] int32; ``topk_ids`` [T, k] int32 and ``topk_logprobs`` [T, k]
    float32 sorted descending per position (raw, temperature-1 distribution); ``sampled_logprobs``
    [T] float32, the raw log-prob of ``response_ids[t]``. The three log-prob arrays are None for
    a black-box teacher (text only).
    """

    key: str
    prompt_ids: np.ndarray
    response_ids: np.ndarray
    topk_ids: np.ndarray | None
    topk_logprobs: np.ndarray | None
    sampled_logprobs: np.ndarray | None
    finish_reason: str
    text: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        num_tokens = len(self.response_ids)
        assert self.finish_reason in FINISH_REASONS, self.finish_reason
        if self.topk_ids is not None:
            assert self.topk_logprobs is not None and self.sampled_logprobs is not None
            assert self.topk_ids.shape == self.topk_logprobs.shape, (self.topk_ids.shape, self.topk_logprobs.shape)
            assert self.topk_ids.ndim == 2 and self.topk_ids.shape[0] == num_tokens
            assert self.sampled_logprobs.shape == (num_tokens,)


class Teacher(Protocol):
    """A teacher model behind some backend.

    ``tokenizer`` is a Hugging Face tokenizer (the teacher's); ``max_context`` the longest
    prompt + response it accepts. ``generate`` and ``score`` yield one output per request, in any
    order (match on ``key``), streaming, so callers write shards with bounded memory.
    """

    tokenizer: Any
    max_context: int
    backend: str
    # Capabilities (read with getattr and these defaults; cheap, unlike ``fingerprint``): whether
    # the teacher returns text only, whether ``score`` works (log-probs of given text), and whether
    # ``SamplingParams.json_schema`` is enforced during decoding.
    black_box: bool = False
    can_score: bool = True
    structured_output: bool = False

    def fingerprint(self) -> dict[str, Any]:
        """Model id, revision or weights hash, backend and its version: goes into the manifest."""
        ...

    def load(self, score: bool = False) -> None:
        """Load or start the model now (for ``score`` requests when ``score``), so a teacher that
        cannot start fails before a run writes anything. Raises TeacherError naming the model."""
        ...

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> Iterator[TeacherOutput]: ...

    def score(self, requests: Sequence[ScoreRequest], top_k: int) -> Iterator[TeacherOutput]: ...

    def close(self) -> None: ...


def backend_settings(
    recipe: "TeacherRecipe", section: str, settings_cls: type, overrides: dict[str, Any], batch_size_key: str
) -> Any:
    """Build a backend's settings dataclass from the recipe's ``section`` block plus overrides.

    ``None`` overrides are ignored; the generic ``batch_size`` (``--batch-size``) maps to the
    backend's own knob ``batch_size_key``. Unknown keys and invalid values are ConfigErrors naming
    the recipe file and the known keys.
    """
    from dataclasses import fields

    from distill.config import ConfigError

    block = recipe.block(section)
    known = {f.name for f in fields(settings_cls)}
    for key, value in overrides.items():
        if value is None:
            continue
        key = batch_size_key if key == "batch_size" else key
        if key not in known:
            raise ConfigError(f"{recipe.source}: the {section} settings have no '{key}' (known: {', '.join(sorted(known))})")
        block[key] = value
    unknown = set(block) - known
    if unknown:
        raise ConfigError(f"{recipe.source}: unknown {section} key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    if section == "endpoint":
        if "base_url" not in block:
            raise ConfigError(f"{recipe.source}: the openai backend needs endpoint.base_url (e.g. http://teacher:8000/v1)")
        block.setdefault("served_model", recipe.served_model_name or recipe.model)
    try:
        return settings_cls(**block)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{recipe.source}: {exc}") from None
