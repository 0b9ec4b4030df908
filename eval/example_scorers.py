"""Scorer functions for eval/example.jsonl, named there as ``python:example_scorers:FUNCTION``.

A python scorer is ``function(output: str, reference: str | None) -> bool | float in [0, 1]``.
`distill eval` imports the module with the suite's folder (and the working directory) on sys.path.
"""


def word_count_at_most(output: str, reference: str | None) -> float:
    """1 when the output has at most ``reference`` words (a length constraint)."""
    return float(len(output.split()) <= int(reference or 0))


def yes_no(output: str, reference: str | None) -> bool:
    """The first word is yes/no and matches the reference, ignoring case and punctuation."""
    words = output.strip().split()
    first = words[0].strip(".,!:;").lower() if words else ""
    return first == (reference or "").strip().lower()
