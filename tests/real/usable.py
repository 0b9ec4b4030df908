"""An independent check of augmented prompts, written for the test and sharing no code with
distill's filters: a usable prompt is a question or an imperative request, written in the seeds'
script (ASCII Latin letters), with a word count within the seeds' range, and no words about
prompts, examples or the assistant."""

from __future__ import annotations

import re

IMPERATIVE_VERBS = {
    "write", "list", "name", "give", "explain", "describe", "rewrite", "make", "correct", "turn", "paraphrase",
    "change", "combine", "summarize", "summarise", "translate", "define", "use", "compare", "convert", "suggest",
    "tell", "create", "calculate", "find", "identify", "plan", "draft", "compose", "design", "recommend",
    "classify", "sort", "solve", "show", "provide", "state", "estimate", "imagine", "outline", "count", "add",
    "multiply", "divide", "subtract", "simplify", "rephrase", "shorten", "fix", "edit", "brainstorm", "help",
    "teach", "recommend", "choose", "pick", "share", "offer", "prepare", "build", "implement", "evaluate",
}
META = re.compile(r"\b(?:prompts?|examples?|json|array|assistant|chatbot|language model|here (?:are|is)|"
                  r"the (?:question|task|response) (?:is|must|should|requires))\b", re.IGNORECASE)


def word_count(text: str) -> int:
    return len(text.split())


def usable(text: str, min_words: int, max_words: int) -> tuple[bool, str]:
    """(ok, why not) for one prompt."""
    stripped = text.strip()
    if not stripped:
        return False, "empty"
    if any(ch.isalpha() and not ch.isascii() for ch in stripped):
        return False, "script"
    if not min_words <= word_count(stripped) <= max_words:
        return False, "length"
    if META.search(stripped):
        return False, "meta"
    first = re.sub(r"[^a-z]", "", stripped.split()[0].lower())
    if not (stripped.endswith("?") or first in IMPERATIVE_VERBS):
        return False, "not a question or request"
    return True, ""
