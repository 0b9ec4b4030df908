"""Specs, prompt files and runners shared by the pipeline tests (the shipped demo teacher and student)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]

# 600 common English-looking words: random 10-16 word prompts over them share almost no 3-grams
_SYLLABLES = ["ka", "lo", "mi", "ra", "to", "ne", "su", "vi", "po", "de", "ga", "ri", "ma", "zo", "pe", "lu", "an", "or"]


def vocabulary(size: int = 600, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))))
    return sorted(words)


def prompts(n: int, seed: int) -> list[str]:
    """``n`` distinct random prompts (none a near duplicate of another)."""
    rng = random.Random(seed)
    words = vocabulary()
    return [f"Question {seed}-{i}: what is " + " ".join(rng.choice(words) for _ in range(rng.randint(10, 16))) + "?"
            for i in range(n)]


def write_prompts(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    return path


def spec(tmp: Path, **overrides: Any) -> Path:
    """A small, fast spec on the demo teacher and student; ``overrides`` replace top-level keys."""
    body: dict[str, Any] = {
        "name": "test-pipeline",
        "store": str(tmp / "store"),
        "sources": [{"path": str(tmp / "src")}],
        "teacher": "demo",
        "student": "demo",
        "warm_start": "champion",
        "train_on": "all",
        "generate": {"max_new_tokens": 4, "temperature": 0, "batch_size": 128, "progress": False},
        "train": {"max_steps": 6, "save_every": 2, "kd_weight": 0.2},
        "eval": {"suite": "demo", "limit": 4, "max_new_tokens": 16, "speed_prompts": 1, "speed_rounds": 1},
        "gate": "challenger.score >= champion.score - 1 and challenger.score >= 0 * teacher.score",
    }
    name = overrides.pop("spec_name", "spec.yaml")
    body.update(overrides)
    path = tmp / name
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}


def cli(*args: str, timeout: float = 600, **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill", *args], env=env(), capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def ledger(store: Path) -> dict[str, Any]:
    return json.loads((store / "ledger.json").read_text())
