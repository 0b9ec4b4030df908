"""Decontamination: no synthetic prompt may share a word n-gram with any prompt of an eval suite.

A suite is named like ``--decontaminate demo`` (``eval/demo.jsonl`` or the JSONL files in
``eval/demo/``, found through ``distill.recipes.shipped_dir("eval")``) or given as a path to a
JSONL file or folder of them. Each line is an object with a ``prompt`` string (or OpenAI
``messages``, whose contents count). N-grams are over the same lower-cased word tokens as
dedup (punctuation ignored), 13 by default as in the GPT-3 contamination analysis. A suite prompt
shorter than n words contaminates a text that contains all of its words in a row.
"""

from __future__ import annotations

import json
from pathlib import Path

from distill.config import ConfigError
from distill.dedup import words


def suite_names() -> list[str]:
    from distill.recipes import shipped_dir

    try:
        base = shipped_dir("eval")
    except FileNotFoundError:
        return []
    names = {p.stem for p in base.glob("*.jsonl")} | {p.name for p in base.iterdir() if p.is_dir() and any(p.glob("*.jsonl"))}
    return sorted(names)


def resolve_suite(spec: str) -> list[Path]:
    """JSONL files of the suite ``spec`` (a path, or a name in the shipped ``eval/`` folder)."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise ConfigError(f"--decontaminate: folder {path} holds no .jsonl suite files")
        return files
    if "/" not in spec and "\\" not in spec:
        from distill.recipes import shipped_dir

        try:
            base = shipped_dir("eval")
        except FileNotFoundError:
            base = None
        if base is not None:
            if (base / f"{spec}.jsonl").is_file():
                return [base / f"{spec}.jsonl"]
            if (base / spec).is_dir() and any((base / spec).glob("*.jsonl")):
                return sorted((base / spec).glob("*.jsonl"))
    shipped = ", ".join(suite_names()) or "(none)"
    raise ConfigError(f"--decontaminate: unknown suite '{spec}': not a file or folder, nor a shipped suite; shipped suites: {shipped}")


def read_suite_prompts(files: list[Path]) -> list[str]:
    """All prompt texts of the suite files; a malformed line is an error naming file and line."""
    texts: list[str] = []
    for path in files:
        try:
            lines = path.read_bytes().decode("utf-8-sig").split("\n")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not valid UTF-8 (byte {exc.start})") from None
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{lineno}: invalid JSON in eval suite: {exc.msg}") from None
            if isinstance(row, dict) and isinstance(row.get("prompt"), str):
                texts.append(row["prompt"])
            elif isinstance(row, dict) and isinstance(row.get("messages"), list):
                texts.extend(str(m.get("content", "")) for m in row["messages"] if isinstance(m, dict))
            else:
                raise ConfigError(f"{path}:{lineno}: eval suite line needs a 'prompt' string or a 'messages' list")
    if not texts:
        raise ConfigError(f"--decontaminate: suite {', '.join(map(str, files))} holds no prompts")
    return texts


class NgramIndex:
    """The set of word n-grams of a suite; ``match(text)`` returns a shared n-gram or None."""

    def __init__(self, texts: list[str], n: int = 13):
        assert n >= 1
        self.n = n
        self.grams: set[tuple[str, ...]] = set()
        self.short: dict[int, set[tuple[str, ...]]] = {}  # suite prompts with fewer than n words
        for text in texts:
            toks = words(text)
            if not toks:
                continue
            if len(toks) < n:
                self.short.setdefault(len(toks), set()).add(tuple(toks))
            else:
                self.grams.update(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))

    def match(self, text: str, toks: list[str] | None = None) -> tuple[str, ...] | None:
        """A word n-gram of ``text`` found in the suite, or None (``toks``: ``words(text)`` if known)."""
        toks = words(text) if toks is None else toks
        for i in range(len(toks) - self.n + 1):
            gram = tuple(toks[i : i + self.n])
            if gram in self.grams:
                return gram
        for length, grams in self.short.items():
            for i in range(len(toks) - length + 1):
                gram = tuple(toks[i : i + length])
                if gram in grams:
                    return gram
        return None


def load_suite_index(spec: str, n: int = 13) -> tuple[NgramIndex, list[Path], int]:
    """(index, suite files, number of suite prompts) for ``--decontaminate spec``."""
    files = resolve_suite(spec)
    texts = read_suite_prompts(files)
    return NgramIndex(texts, n), files, len(texts)
