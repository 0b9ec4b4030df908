"""Python scorers for the eval tests, named in suites as ``python:tests.eval.tiny_scorers:NAME``."""


def has_42(output: str, reference: str | None) -> bool:
    return "42" in output


def half(output: str, reference: str | None) -> float:
    return 0.5


def boom(output: str, reference: str | None) -> float:
    raise RuntimeError("scorer bug")


def out_of_range(output: str, reference: str | None) -> float:
    return 7.0
