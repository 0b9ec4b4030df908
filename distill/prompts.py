"""Prompt records and how they become the teacher's token ids.

A record is the unit every stage passes around: seeds read from JSONL/CSV/Parquet/`datasets`
folders, synthetic prompts from augmentation, eval prompts. ``encode_prompt`` is the ONE place a
record becomes token ids (chat template applied once, generation prompt added, no second BOS), so
every backend stores exactly the same prompt ids.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PromptRecord:
    """One prompt. ``messages`` is OpenAI chat format ending with a user turn (a system turn, if
    any, first). ``origin`` is provenance: {"source": "seed"|"synthetic", "file": ..., "line": ...,
    "parents": [...], "round": n}."""

    id: str
    messages: tuple[dict[str, str], ...]
    reference: str | None = None
    origin: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def prompt(self) -> str:
        """The last user turn's text."""
        return self.messages[-1]["content"]


def normalize_text(text: str) -> str:
    """Normalization used for ids and exact dedup: NFKC, collapsed whitespace, casefolded."""
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


def prompt_hash(messages: tuple[dict[str, str], ...] | list[dict[str, str]]) -> str:
    """Stable id of a prompt: sha256 over the normalized (role, content) pairs, 16 hex chars."""
    canon = [[m["role"], normalize_text(m["content"])] for m in messages]
    return hashlib.sha256(json.dumps(canon, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def encode_prompt(tokenizer: Any, messages: tuple[dict[str, str], ...] | list[dict[str, str]]) -> list[int]:
    """Token ids of ``messages`` with the tokenizer's chat template and the generation prompt.

    Without a chat template, the user text is tokenized as is. The template already writes any
    BOS it wants, so no special tokens are added a second time.
    """
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    text = "\n\n".join(m["content"] for m in messages)
    return [int(i) for i in tokenizer(text, add_special_tokens=True)["input_ids"]]
