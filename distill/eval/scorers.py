"""Eval suites and their scorers.

A suite is a JSONL file, one row per line::

    {"prompt": "What is 7 * 6?", "reference": "42", "scorer": "regex:Answer: (-?\\d+)"}
    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}],
     "reference": "Paris", "scorer": "contains"}

Keys: ``prompt`` (str) or ``messages`` (OpenAI chat format ending with a user turn); ``reference``
(str or number; optional only for ``judge`` and ``python:`` scorers); ``scorer`` (below);
optional ``id`` and ``rubric`` (for ``judge``). Other keys are kept out of the way (ignored), so
a suite can carry its own metadata. Blank lines are skipped.

Scorers (each turns a model's output into a row score in [0, 1]):

- ``exact``: the output equals the reference after ``normalize_text`` (NFKC, whitespace
  collapsed, case-folded).
- ``regex:PATTERN``: the LAST match of PATTERN in the output (so a worked solution's final answer
  counts); its first capture group (or the whole match) is the answer, compared to the reference
  after normalization. If the reference itself matches PATTERN, its captured group is used, so a
  reference may be written either as ``42`` or as ``Answer: 42``.
- ``numeric`` or ``numeric:TOL``: the last number in the output (``-1,234.5``, ``3e-2``) is the
  answer; correct when ``|answer - reference| <= TOL`` (absolute; default 1e-6), or with
  ``numeric:TOL%`` within TOL percent of the reference.
- ``contains``: the normalized reference occurs in the normalized output.
- ``python:module:function``: ``function(output, reference)`` returns a bool or a float in
  [0, 1]. ``module`` is imported with the suite's folder and the working directory on sys.path.
- ``judge``: an LLM judge (a teacher, through the Teacher protocol) reads the row's ``rubric``
  (or a default one), the prompt, the reference if any and the output, and replies
  ``Score: N`` with N in 1..5; the row score is (N - 1) / 4.

A row the scorer cannot judge (empty output, no answer found, a python scorer that raised or
returned something out of range, a judge reply without a score) scores 0 and is counted per
reason in the report's ``failures``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from distill.config import ConfigError
from distill.dedup import words
from distill.prompts import normalize_text

KNOWN_SCORERS = ("exact", "regex:PATTERN", "numeric[:TOL|:TOL%]", "contains", "python:module:function", "judge")

# A number as people and models write it: sign, thousands separators, decimals, exponent.
# A sign right after a digit is a dash ("3-5"), not a minus.
_NUMBER_RE = re.compile(r"(?<![\d.])[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+)")

DEFAULT_RUBRIC = (
    "Judge whether the answer correctly and completely responds to the question; when a reference "
    "answer is given, the answer must agree with it."
)

JUDGE_TEMPLATE = """You are grading an answer to a question.
Rubric: {rubric}

Question:
{prompt}
{reference_block}
Answer to grade:
{output}

Reply with one line "Score: N", where N is an integer from 1 (wrong or useless) to 5 (fully correct)."""


class SuiteError(ConfigError):
    """A problem in a suite file; the message names file:line."""


@dataclass(frozen=True)
class Scorer:
    """A parsed scorer spec. ``arg`` is the regex pattern, the numeric tolerance or the
    python target; ``fn`` the compiled regex or the imported python function."""

    spec: str
    kind: str
    pattern: re.Pattern[str] | None = None
    tolerance: float = 1e-6
    relative: bool = False
    fn: Callable[..., Any] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class SuiteRow:
    id: str
    messages: tuple[dict[str, str], ...]
    reference: str | None
    scorer: Scorer
    rubric: str | None
    line: int

    @property
    def prompt(self) -> str:
        return self.messages[-1]["content"]


@dataclass(frozen=True)
class Suite:
    path: Path
    name: str
    rows: tuple[SuiteRow, ...]
    sha256: str

    def scorer_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row.scorer.kind] = counts.get(row.scorer.kind, 0) + 1
        return counts


@dataclass(frozen=True)
class RowResult:
    """How one output scored: ``score`` in [0, 1], the extracted ``answer`` (None when none was
    found), and ``failure`` (a reason string, or None when the scorer could judge the row)."""

    score: float
    answer: Any
    failure: str | None = None


# ---------------------------------------------------------------- suite loading


def resolve_suite_path(spec: str) -> Path:
    """A suite path, or the name of a suite shipped in ``eval/`` (with or without ``.jsonl``)."""
    path = Path(spec)
    if path.is_file():
        return path
    from distill.recipes import shipped_dir

    try:
        base = shipped_dir("eval")
    except FileNotFoundError:
        base = None
    if base is not None:
        for candidate in (base / spec, base / f"{spec}.jsonl"):
            if candidate.is_file():
                return candidate
    shipped = sorted(p.stem for p in base.glob("*.jsonl")) if base is not None else []
    raise ConfigError(f"--suite: '{spec}' is neither a file nor a shipped suite; shipped suites: {', '.join(shipped) or 'none'}")


def parse_scorer(spec: Any, where: str, search_dirs: tuple[Path, ...] = ()) -> Scorer:
    """Parse a scorer spec; errors name ``where`` (file:line) and list the known scorers."""
    if not isinstance(spec, str) or not spec.strip():
        raise SuiteError(f"{where}: 'scorer' must be a non-empty string; known scorers: {', '.join(KNOWN_SCORERS)}")
    spec = spec.strip()
    kind, _, arg = spec.partition(":")
    if kind in ("exact", "contains", "judge") and not arg:
        return Scorer(spec=spec, kind=kind)
    if kind == "regex" and arg:
        try:
            pattern = re.compile(arg)
        except re.error as exc:
            raise SuiteError(f"{where}: invalid regular expression in scorer '{spec}': {exc}") from None
        return Scorer(spec=spec, kind=kind, pattern=pattern)
    if kind == "numeric":
        if not arg:
            return Scorer(spec=spec, kind=kind)
        relative = arg.endswith("%")
        try:
            tolerance = float(arg[:-1] if relative else arg)
        except ValueError:
            tolerance = -1.0
        if not math.isfinite(tolerance) or tolerance < 0:
            raise SuiteError(f"{where}: scorer '{spec}': tolerance must be a number >= 0 (e.g. numeric:0.01 or numeric:1%)")
        return Scorer(spec=spec, kind=kind, tolerance=tolerance / 100 if relative else tolerance, relative=relative)
    if kind == "python":
        module_name, _, func_name = arg.partition(":")
        if not module_name or not func_name:
            raise SuiteError(f"{where}: scorer '{spec}' must be python:module:function")
        return Scorer(spec=spec, kind=kind, fn=_import_function(module_name, func_name, where, search_dirs))
    raise SuiteError(f"{where}: unknown scorer '{spec}'; known scorers: {', '.join(KNOWN_SCORERS)}")


def _import_function(module_name: str, func_name: str, where: str, search_dirs: tuple[Path, ...]) -> Callable[..., Any]:
    added = [str(d) for d in search_dirs if str(d) not in sys.path]
    sys.path[:0] = added
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an ImportError, or the module raising while it imports
        raise SuiteError(f"{where}: scorer python:{module_name}:{func_name}: cannot import '{module_name}': {exc}") from None
    finally:
        for d in added:
            sys.path.remove(d)
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise SuiteError(f"{where}: scorer python:{module_name}:{func_name}: module '{module_name}' has no function '{func_name}'")
    return fn


def load_suite(spec: str, limit: int | None = None) -> Suite:
    """Read and validate a whole suite before any model runs. Errors name file:line."""
    path = resolve_suite_path(spec)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a BOM must not cost the first row
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SuiteError(f"{path}:{line}: not valid UTF-8") from None
    search_dirs = (path.resolve().parent, Path.cwd())
    scorers: dict[Any, Scorer] = {}
    rows: list[SuiteRow] = []
    seen_ids: dict[str, int] = {}
    # JSONL lines end at "\n" only: U+2028 and friends are valid inside a JSON string
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SuiteError(f"{where}: malformed JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(record, dict):
            raise SuiteError(f"{where}: expected a JSON object with 'prompt' (or 'messages'), 'reference' and 'scorer'")
        messages = _messages(record, where)
        if "scorer" not in record:
            raise SuiteError(f"{where}: missing 'scorer'; known scorers: {', '.join(KNOWN_SCORERS)}")
        spec_key = record["scorer"] if isinstance(record["scorer"], str) else repr(record["scorer"])
        if spec_key not in scorers:
            scorers[spec_key] = parse_scorer(record["scorer"], where, search_dirs)
        scorer = scorers[spec_key]
        reference = record.get("reference")
        if isinstance(reference, bool) or not (reference is None or isinstance(reference, (str, int, float))):
            raise SuiteError(f"{where}: 'reference' must be a string or a number, got {type(reference).__name__}")
        if reference is not None:
            reference = str(reference)
        if (reference is None or not reference.strip()) and scorer.kind not in ("judge", "python"):
            raise SuiteError(f"{where}: missing or empty 'reference' (required by scorer '{scorer.spec}')")
        if scorer.kind == "numeric" and _last_number(reference) is None:
            raise SuiteError(f"{where}: reference {reference!r} holds no number (scorer '{scorer.spec}')")
        rubric = record.get("rubric")
        if rubric is not None and (not isinstance(rubric, str) or not rubric.strip()):
            raise SuiteError(f"{where}: 'rubric' must be a non-empty string")
        row_id = record.get("id")
        if row_id is None:
            row_id = f"{path.stem}-{lineno}"
        elif not isinstance(row_id, (str, int)) or isinstance(row_id, bool):
            raise SuiteError(f"{where}: 'id' must be a string or an integer")
        row_id = str(row_id)
        if row_id in seen_ids:
            raise SuiteError(f"{where}: duplicate id '{row_id}' (first on line {seen_ids[row_id]})")
        seen_ids[row_id] = lineno
        rows.append(SuiteRow(id=row_id, messages=messages, reference=reference, scorer=scorer, rubric=rubric, line=lineno))
    if not rows:
        raise SuiteError(f"{path}: the suite has no rows")
    if limit is not None:
        rows = rows[:limit]
    return Suite(path=path, name=path.stem, rows=tuple(rows), sha256=hashlib.sha256(raw).hexdigest())


def _messages(record: dict[str, Any], where: str) -> tuple[dict[str, str], ...]:
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise SuiteError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
        out = []
        for i, message in enumerate(messages):
            if (
                not isinstance(message, dict)
                or message.get("role") not in ("system", "user", "assistant")
                or not isinstance(message.get("content"), str)
            ):
                raise SuiteError(f"{where}: messages[{i}] must be {{\"role\": system|user|assistant, \"content\": str}}")
            out.append({"role": message["role"], "content": message["content"]})
        if out[-1]["role"] != "user" or not out[-1]["content"].strip():
            raise SuiteError(f"{where}: the last message must be a non-empty user turn")
        return tuple(out)
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise SuiteError(f"{where}: missing or empty 'prompt' (or 'messages')")
    return ({"role": "user", "content": prompt},)


# ---------------------------------------------------------------- scoring


def _last_number(text: str | None) -> float | None:
    if not text:
        return None
    matches = _NUMBER_RE.findall(text)
    if not matches:
        return None
    try:
        return float(matches[-1].replace(",", ""))
    except ValueError:
        return None


def _regex_answer(pattern: re.Pattern[str], text: str) -> str | None:
    last = None
    for last in pattern.finditer(text):
        pass
    if last is None:
        return None
    return last.group(1) if pattern.groups else last.group(0)


def extract_answer(scorer: Scorer, text: str) -> Any:
    """The answer a scorer reads from ``text``: the regex group, the last number, or the
    normalized text (exact, contains, python, judge). None when nothing was found."""
    if scorer.kind == "regex":
        assert scorer.pattern is not None
        answer = _regex_answer(scorer.pattern, text)
        return None if answer is None else normalize_text(answer)
    if scorer.kind == "numeric":
        return _last_number(text)
    normalized = normalize_text(text)
    return normalized or None


def _numbers_match(scorer: Scorer, answer: float, reference: float) -> bool:
    bound = scorer.tolerance * abs(reference) if scorer.relative else scorer.tolerance
    return abs(answer - reference) <= bound + 1e-12


def score_output(scorer: Scorer, output: str, reference: str | None) -> RowResult:
    """Score one output against its reference (not for ``judge``: see ``judge_prompt``)."""
    assert scorer.kind != "judge"
    if not output.strip():
        return RowResult(0.0, None, "empty_output")
    if scorer.kind == "python":
        assert scorer.fn is not None
        try:
            value = scorer.fn(output, reference)
        except Exception as exc:  # a user's scorer: count the row, keep going
            return RowResult(0.0, None, f"scorer_error: {type(exc).__name__}")
        if isinstance(value, bool):
            return RowResult(float(value), normalize_text(output), None)
        if isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0:
            return RowResult(float(value), normalize_text(output), None)
        return RowResult(0.0, None, "scorer_error: result not a bool or a number in [0, 1]")
    answer = extract_answer(scorer, output)
    if answer is None:
        return RowResult(0.0, None, "no_answer")
    assert reference is not None
    if scorer.kind == "exact":
        return RowResult(float(answer == normalize_text(reference)), answer)
    if scorer.kind == "contains":
        return RowResult(float(normalize_text(reference) in answer), answer)
    if scorer.kind == "regex":
        assert scorer.pattern is not None
        ref_answer = _regex_answer(scorer.pattern, reference)
        expected = normalize_text(ref_answer if ref_answer is not None else reference)
        return RowResult(float(answer == expected), answer)
    if scorer.kind == "numeric":
        expected_number = _last_number(reference)
        assert expected_number is not None  # checked when the suite was loaded
        return RowResult(float(_numbers_match(scorer, answer, expected_number)), answer)
    raise AssertionError(scorer.kind)


def answers_agree(scorer: Scorer, answer: Any, teacher_answer: Any) -> bool | None:
    """Whether a model's extracted answer equals the teacher's (numeric: within the tolerance,
    relative to the teacher's number). None when the teacher gave no answer (row not counted)."""
    if teacher_answer is None:
        return None
    if answer is None:
        return False
    if scorer.kind == "numeric":
        return _numbers_match(scorer, float(answer), float(teacher_answer))
    return answer == teacher_answer


# Scorers that read one answer out of the text (agreement compares those answers); the others
# judge the whole text, so agreement with the teacher is the overlap of the two texts.
EXTRACTING = ("regex", "numeric")


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (bit-parallel: one big-int
    step per token of ``b``, so long answers stay cheap)."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def rouge_l_f1(candidate: Sequence[str], reference: Sequence[str]) -> float:
    """ROUGE-L F1: the harmonic mean of LCS precision and recall over word tokens."""
    lcs = lcs_length(candidate, reference)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(candidate), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


def agreement_with_teacher(scorer: Scorer, text: str, teacher_text: str) -> float | None:
    """How far a model's output agrees with the teacher's on one row, in [0, 1]: for scorers that
    extract an answer (regex, numeric), 1 when the answers match and 0 otherwise; for the others
    (free-form text), ROUGE-L F1 of the normalized words (punctuation dropped). None when the teacher gave nothing."""
    if scorer.kind in EXTRACTING:
        teacher_answer = extract_answer(scorer, teacher_text) if teacher_text.strip() else None
        answer = extract_answer(scorer, text) if text.strip() else None
        agree = answers_agree(scorer, answer, teacher_answer)
        return None if agree is None else float(agree)
    reference = words(teacher_text)
    if not reference:
        return None
    return rouge_l_f1(words(text), reference)


# ---------------------------------------------------------------- LLM-as-judge

_JUDGE_SCORE_RE = re.compile(r"score\s*(?:[:=]|is)?\s*\**\s*([1-5])(?![\d.])", re.IGNORECASE)
_LONE_DIGIT_RE = re.compile(r"^\W*([1-5])\W*$")


def judge_prompt(row: SuiteRow, output: str) -> list[dict[str, str]]:
    """The chat messages the judge sees for one row."""
    reference_block = f"\nReference answer:\n{row.reference}\n" if row.reference else ""
    content = JUDGE_TEMPLATE.format(
        rubric=row.rubric or DEFAULT_RUBRIC,
        prompt=row.prompt,
        reference_block=reference_block,
        output=output,
    )
    return [{"role": "user", "content": content}]


def parse_judge_score(reply: str) -> int | None:
    """The 1..5 score in a judge's reply ("Score: 4", "score = 4", "**Score:** 4", or a lone
    digit), None when there is none."""
    match = _JUDGE_SCORE_RE.search(reply)
    if match is None:
        match = _LONE_DIGIT_RE.match(reply.strip())
    return int(match.group(1)) if match else None


def judge_result(output: str, reply: str | None) -> RowResult:
    if not output.strip():
        return RowResult(0.0, None, "empty_output")
    if reply is None:
        return RowResult(0.0, None, "judge_unavailable")
    score = parse_judge_score(reply)
    if score is None:
        return RowResult(0.0, None, "judge_unparsed")
    return RowResult((score - 1) / 4.0, normalize_text(output))
