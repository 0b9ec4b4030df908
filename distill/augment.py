"""Prompt augmentation: the teacher writes new prompts from a few seed prompts shown as examples.

One round: draw ``few_shot`` examples per request at random (seeds, optionally mixed with
prompts accepted in earlier rounds), fill the meta-prompt, let the teacher write; parse each
generation into one or several prompts, normalize them, and run every candidate through the
filters in this order, stopping at the first that rejects it (its reason is counted once):

    empty, truncated, broken_format, off_script, too_short, refusal, assistant_voice, not_a_request,
    meta_prompt_echo, seed_copy, exact_duplicate, too_long, length_outlier, near_duplicate, contaminated,
    improbable, judge_unparseable, judge_below_threshold

``off_script``, ``length_outlier`` and ``improbable`` are measured against the seeds: letters in a
script no seed uses, a word or line count far outside the seeds' range, and a mean token log-prob
under the teacher (the candidate scored as a user turn) well below the seeds'. ``not_a_request``
(English: neither a question nor an instruction) applies when the seeds themselves are requests. The teacher is asked
for a JSON array of prompts, and backends with structured output (vLLM guided decoding, an
endpoint's ``response_format``) are held to it; what models write anyway (preambles, numbered or
bulleted lists, "Prompt:" labels, fences) is parsed too.

Rounds continue until ``num_prompts`` are accepted or ``max_rounds`` are spent; the stats say
which. Only the Teacher protocol is used (``generate`` with ``top_k_logprobs=0``, ``tokenizer``,
``max_context``), so the HF, vLLM and HTTP backends all work unchanged.

Determinism: every random draw comes from (seed, round) and every request carries its own
sampling seed; candidates are processed in request order whatever order the backend yields.
Resumability: each finished round is one JSON file written atomically under ``rounds/``; a
re-run reloads them and continues with the next round. ``augment.json`` is written last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import re
import string
import sys
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np

from distill.atomic import atomic_write_text
from distill.build_info import build_info
from distill.config import ConfigError, bad, field
from distill.lock import FolderLock
from distill.stop import STOP
from distill.prompts import PromptRecord, encode_prompt, normalize_text, prompt_hash
from distill.teachers import Backend, TeacherRecipe

AUGMENT_FORMAT_VERSION = 1
SHINGLE_KINDS = ("word", "char")
REJECT_REASONS = (
    "empty",
    "truncated",
    "broken_format",
    "off_script",
    "too_short",
    "refusal",
    "assistant_voice",
    "not_a_request",
    "meta_prompt_echo",
    "seed_copy",
    "exact_duplicate",
    "too_long",
    "length_outlier",
    "near_duplicate",
    "contaminated",
    "improbable",
    "judge_unparseable",
    "judge_below_threshold",
)

# The default meta-prompt. ``{examples}`` receives the few-shot prompts, each rendered as
# "Prompt: <text>" and separated by a blank line; ``{num_new}`` the number of prompts asked for.
# The teacher is asked for a JSON array of strings (the output contract that structured output
# enforces where the backend has it); ``parse_prompts`` also splits the other shapes models write.
DEFAULT_META_PROMPT = (
    "Here are example prompts that users sent to an AI assistant, as a JSON array:\n"
    "\n"
    "{examples_json}\n"
    "\n"
    "Write {num_new} new prompts of the same kind. Each new prompt must be self-contained and "
    "answerable, must differ from the examples and from the other new prompts in its details "
    "(topic, names, numbers, wording), and must not contain its answer. Answer with a JSON array "
    "of {num_new} strings, one new prompt per string, and nothing else."
)
# A meta-prompt that shows its examples as JSON ({examples_json}) asks for a JSON array back. On
# backends that take token ids and cannot enforce a schema (hf, an endpoint's completions API
# off vLLM), the reply is primed with this text, so even a small model starts the array.
JSON_ANSWER_PREFIX = '["'
DEFAULT_JUDGE_PROMPT = (
    "Rate the following prompt, which a user might send to an AI assistant, from 1 (unusable) "
    "to 5 (excellent) against this rubric:\n"
    "{rubric}\n"
    "\n"
    "Prompt:\n"
    "{prompt}\n"
    "\n"
    "Reply with the score only: one digit from 1 to 5."
)
DEFAULT_JUDGE_RUBRIC = (
    "The prompt is a clear, self-contained request with one well-defined task and all the "
    "information needed to answer it; it is not a refusal, not an answer, not a fragment."
)
EXAMPLE_PREFIX = "Prompt: "
TEMPLATE_FIELDS = {
    # template key: (required placeholders, allowed placeholders)
    "meta_prompt": (set(), {"examples", "examples_json", "num_new"}),  # one of the examples fields
    "judge_prompt": ({"prompt"}, {"prompt", "rubric"}),
}
RECIPE_KEYS = ("meta_prompt", "judge_prompt", "judge_rubric")
JUDGE_TOP_K = 20  # log-probs the judge's rating is read from
JUDGE_ANSWER_PREFIX = "Score:"  # the judge's reply starts here, so its next tokens are the rating
RATING_WORDS = {**{str(d): d for d in range(1, 6)}, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5}


@dataclass(frozen=True)
class AugmentConfig:
    """Config of ``distill augment`` (and of ``distill generate --augment N``)."""

    teacher: str = field("", help="teacher recipe name, recipe YAML, or local HF model directory")
    prompts: str = field("", help="seed prompts (JSONL/CSV/Parquet/datasets folder)")
    out: str = field("", help="output directory: prompts.jsonl, rejected.jsonl, augment.json, rounds/")
    num_prompts: int = field(1000, help="number of synthetic prompts to accept", short="-n")
    backend: Backend | None = field(None, help="teacher backend", default_text="the recipe's")
    seed: int = field(0, help="random seed: example draws and sampling seeds derive from it")
    max_rounds: int = field(50, help="round budget: stop after this many rounds even if short of num_prompts")
    requests_per_round: int = field(0, help="teacher generations per round; 0 = sized from the remaining target and the yield so far (at most 256)")
    few_shot: int = field(3, help="example prompts shown per request")
    synthetic_fraction: float = field(0.0, help="fraction of the examples drawn from already accepted synthetic prompts (0 = seeds only)")
    prompts_per_request: int = field(5, help="new prompts asked for per generation (the meta-prompt's {num_new})")
    temperature: float = field(1.0, help="sampling temperature for writing prompts")
    top_p: float = field(0.95, help="nucleus sampling for writing prompts")
    generation_max_tokens: int = field(512, help="tokens the teacher may write per augmentation request")
    max_new_tokens: int = field(256, help="response budget reserved later (generate --max-new-tokens): prompts longer than the teacher's context minus this are rejected")
    max_prompt_tokens: int = field(0, help="reject prompts longer than this many teacher tokens (0 = context minus max_new_tokens only)")
    min_words: int = field(3, help="reject prompts with fewer words")
    length_range: float = field(1.5, help="reject prompts whose word count is outside [shortest seed / R, longest seed * R]; 0 = off")
    request_form: Literal["auto", "on", "off"] = field("auto", help="reject candidates that are neither a question nor an instruction (English rule); auto = on when >= 80% of the seeds are")
    script_check: bool = field(True, help="reject prompts whose letters are in a script none of the seeds uses (Unicode script of each letter)")
    improbable_filter: bool = field(True, help="reject prompts the teacher finds improbable: mean token log-prob as a user turn below the seeds' 10th percentile minus --improbable-margin (teachers with log-probs)")
    improbable_margin: float = field(1.0, help="nats per token below the seeds' 10th percentile at which --improbable-filter rejects")
    structured_output: bool = field(True, help="hold the teacher's answer to a JSON array of strings where the backend supports it (vLLM guided decoding, endpoint response_format); turn off for a meta-prompt that asks for another shape")
    near_dup_threshold: float = field(0.7, help="Jaccard similarity of shingle sets at or above which a prompt is a near duplicate")
    shingle: Literal["word", "char"] = field("word", help="shingle kind for near-dup detection")
    shingle_size: int = field(3, help="words (or characters) per shingle")
    num_perm: int = field(128, help="MinHash permutations")
    decontaminate: str | None = field(None, help="eval suite (name in eval/ or JSONL path) whose prompts no synthetic prompt may share an n-gram with")
    decontaminate_ngram: int = field(13, help="n-gram size (words) for decontamination")
    judge_threshold: float = field(0.0, help="keep prompts the teacher scores >= this (1-5); 0 = no judge")
    judge_max_tokens: int = field(8, help="tokens the judge may write")
    meta_prompt: str | None = field(None, help="meta-prompt template ({examples} required, {num_new} optional)", default_text="the recipe's augment.meta_prompt, else built in")
    judge_prompt: str | None = field(None, help="judge template ({prompt} required, {rubric} optional)", default_text="the recipe's augment.judge_prompt, else built in")
    judge_rubric: str | None = field(None, help="rubric text for the judge", default_text="the recipe's augment.judge_rubric, else built in")
    progress: bool = field(True, help="show a progress bar")

    def __post_init__(self) -> None:
        def check(ok: bool, name: str, msg: str) -> None:
            if not ok:
                bad(name, f"{msg}, got {getattr(self, name)!r}")

        check(self.num_prompts >= 1, "num_prompts", "must be >= 1")
        check(self.max_rounds >= 1, "max_rounds", "must be >= 1")
        check(self.requests_per_round >= 0, "requests_per_round", "must be >= 0")
        check(self.few_shot >= 1, "few_shot", "must be >= 1")
        check(0.0 <= self.synthetic_fraction <= 1.0, "synthetic_fraction", "must be in [0, 1]")
        check(self.prompts_per_request >= 1, "prompts_per_request", "must be >= 1")
        check(self.temperature >= 0, "temperature", "must be >= 0")
        check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        check(self.generation_max_tokens >= 1, "generation_max_tokens", "must be >= 1")
        check(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")
        check(self.max_prompt_tokens >= 0, "max_prompt_tokens", "must be >= 0")
        check(self.min_words >= 0, "min_words", "must be >= 0")
        check(self.length_range == 0 or self.length_range >= 1, "length_range", "must be 0 (off) or >= 1")
        check(self.improbable_margin >= 0, "improbable_margin", "must be >= 0")
        check(0 < self.near_dup_threshold <= 1, "near_dup_threshold", "must be in (0, 1]")
        check(self.shingle in SHINGLE_KINDS, "shingle", f"must be one of {', '.join(SHINGLE_KINDS)}")
        check(self.shingle_size >= 1, "shingle_size", "must be >= 1")
        check(self.num_perm >= 16, "num_perm", "must be >= 16")
        check(self.decontaminate_ngram >= 1, "decontaminate_ngram", "must be >= 1")
        check(self.judge_threshold == 0 or 1 <= self.judge_threshold <= 5, "judge_threshold", "must be 0 (off) or in [1, 5]")
        check(self.judge_max_tokens >= 1, "judge_max_tokens", "must be >= 1")


# ---------------------------------------------------------------------------------------------
# templates


@dataclass(frozen=True)
class Templates:
    meta_prompt: str
    judge_prompt: str
    judge_rubric: str


def check_template(template: str, key: str, where: str) -> None:
    """Raise ConfigError naming ``where`` when ``template`` lacks a required placeholder or has an unknown one."""
    required, allowed = TEMPLATE_FIELDS[key]
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ConfigError(f"{where}: {key}: invalid template ({exc}); write literal braces as {{{{ and }}}}") from None
    missing = sorted(required - names)
    if key == "meta_prompt" and not names & {"examples", "examples_json"}:
        missing = ["examples"]
    if missing:
        raise ConfigError(f"{where}: {key}: template has no {{{missing[0]}}} placeholder (required: {', '.join('{' + n + '}' for n in sorted(required))})")
    unknown = sorted(names - allowed)
    if unknown:
        raise ConfigError(f"{where}: {key}: unknown placeholder {{{unknown[0]}}} (allowed: {', '.join('{' + n + '}' for n in sorted(allowed))}; write literal braces as {{{{ and }}}})")


def resolve_templates(config: AugmentConfig, recipe: "TeacherRecipe | None" = None) -> Templates:
    """Templates from, in order of precedence: the config, the teacher recipe's ``augment`` key, defaults."""
    where_recipe = recipe.source if recipe is not None else "teacher recipe"
    section = recipe.block("augment") if recipe is not None else {}
    unknown = sorted(set(section) - set(RECIPE_KEYS))
    if unknown:
        raise ConfigError(f"{where_recipe}: unknown key 'augment.{unknown[0]}'; known keys: {', '.join(RECIPE_KEYS)}")
    values: dict[str, str] = {}
    for key, default in (("meta_prompt", DEFAULT_META_PROMPT), ("judge_prompt", DEFAULT_JUDGE_PROMPT), ("judge_rubric", DEFAULT_JUDGE_RUBRIC)):
        from_config = getattr(config, key)
        if from_config is not None:
            value, where = from_config, "config"
        elif key in section:
            value, where = section[key], f"{where_recipe}: augment"
        else:
            value, where = default, "built-in default"
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: {key} must be a non-empty string")
        if key in TEMPLATE_FIELDS:
            check_template(value, key, where)
        values[key] = value
    return Templates(**values)


def render_meta_prompt(template: str, examples: Sequence[str], num_new: int) -> str:
    """``{examples}``: each example as "Prompt: <text>", blank-line separated; ``{examples_json}``:
    the examples as a JSON array of strings, one per line."""
    rendered = "\n\n".join(EXAMPLE_PREFIX + text.strip() for text in examples)
    as_json = "[\n" + ",\n".join(" " + json.dumps(text.strip(), ensure_ascii=False) for text in examples) + "\n]"
    return template.format(examples=rendered, examples_json=as_json, num_new=num_new)


def asks_for_json(template: str) -> bool:
    """Whether a meta-prompt shows its examples as JSON, and so asks for a JSON array back."""
    return any(name == "examples_json" for _, name, _, _ in string.Formatter().parse(template))


# ---------------------------------------------------------------------------------------------
# parsing and normalization

# "Prompt:", "Prompt 3:", "**Prompt 2:**", "### New prompt 4", "New prompt:" at a line start.
_MARKER = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]*)?(?:\*\*|__)?[ \t]*(?:new[ \t]+)?prompt[ \t]*#?[ \t]*(?:\d{1,4})?[ \t]*(?:\*\*|__)?[ \t]*"
    r"(?::|\.(?=\s)|\)|-(?=\s)|$)[ \t]*(?:\*\*|__)?[ \t]*",
    re.IGNORECASE | re.MULTILINE,
)
_NUMBERED = re.compile(r"^[ \t]*\d{1,3}[.)][ \t]+", re.MULTILINE)
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "`": "`"}


def clean_prompt(text: str) -> str:
    """Normalize one parsed prompt: NFC, no surrounding quotes or markdown bold, tidy whitespace
    (newlines kept: prompts may be multi-line)."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [" ".join(line.split()) for line in text.split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    for _ in range(2):
        if len(text) >= 2 and text[0] in _QUOTES and text[-1] == _QUOTES[text[0]] and not text.startswith("```"):
            text = text[1:-1].strip()
        if text.startswith("**") and text.endswith("**") and len(text) > 4:
            text = text[2:-2].strip()
        elif text.count("**") == 1:  # the other half of a bold marker went with the "Prompt:" line
            text = text.replace("**", "").strip()
    return text


_BULLET = re.compile(r"^[ \t]*(?:[-*\u2022])[ \t]+", re.MULTILINE)
_FENCE = re.compile(r"^[ \t]*```[a-zA-Z]*[ \t]*\n(.*?)\n[ \t]*```", re.DOTALL | re.MULTILINE)


def _json_prompts(text: str) -> list[str] | None:
    """The prompts of a JSON array (of strings, or of objects with a "prompt" string), bare or in
    a code fence, anywhere in ``text``; None when there is none."""
    bodies = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for body in bodies:
        for start in (i for i, ch in enumerate(body) if ch == "["):
            try:
                value, _ = decoder.raw_decode(body, start)
            except ValueError:
                continue
            if isinstance(value, list) and value:
                items = [v.get("prompt") if isinstance(v, dict) else v for v in value]
                if all(isinstance(v, str) for v in items):
                    return [_json_item(v) for v in items]
    return _partial_json_strings(text, decoder)


def _partial_json_strings(text: str, decoder: json.JSONDecoder) -> list[str] | None:
    """The complete strings of a JSON array of strings that was cut off or broken (a generation
    that hit its token budget, or a model that left the format midway): items up to the break,
    plus an unfinished last string as its own piece (the caller counts it as truncated). None
    unless at least one string is complete."""
    match = re.match(r'\s*\[\s*"', text)
    if not match:
        return None
    items: list[str] = []
    pos = match.end() - 1
    while True:
        try:
            value, end = decoder.raw_decode(text, pos)
        except ValueError:
            if text.find('"', pos + 1) < 0:  # an unfinished string: the text ran out inside it
                items.append(text[pos + 1:])
            break
        items.append(value)
        sep = re.match(r'\s*,\s*"', text[end:])
        if not sep:
            break
        pos = end + sep.end() - 1
    complete = len(items) - (1 if items and text.find('"', pos + 1) < 0 else 0)
    return [_json_item(v) for v in items] if complete >= 1 else None


def _json_item(text: str) -> str:
    """One string of a JSON answer, without the list numbering or label some models put inside
    the string ("4. What is ...", "Prompt 2: ...")."""
    text = clean_prompt(text)
    return clean_prompt(_ITEM_LABEL.sub("", text, count=1))


_ITEM_LABEL = re.compile(r"^(?:\d{1,3}[.)]|(?:new[ \t]+)?prompt[ \t]*\d{0,3}[ \t]*:)[ \t]+", re.IGNORECASE)


def _list_items(text: str, pattern: re.Pattern, numbered: bool) -> list[str] | None:
    """Items of a numbered (from 1, in order) or bulleted list of at least two items; text before
    the first item is a preamble and text after a blank line that follows the last item is a
    postamble, both dropped. None when ``text`` holds no such list."""
    items = list(pattern.finditer(text))
    if numbered:
        numbers = [int(re.match(r"\s*(\d+)", text[m.start():]).group(1)) for m in items]
        if not numbers or numbers[0] != 1:
            return None
        run = 1
        while run < len(numbers) and numbers[run] == numbers[run - 1] + 1:
            run += 1
        items = items[:run]
    if len(items) < 2:
        return None
    ends = [m.start() for m in items[1:]] + [len(text)]
    pieces = [text[m.end():e] for m, e in zip(items, ends)]
    last = re.split(r"\n[ \t]*\n", pieces[-1].strip("\n"), maxsplit=1)
    pieces[-1] = last[0]
    return [clean_prompt(piece) for piece in pieces]


def parse_prompts(text: str) -> list[str]:
    """Split one generation into prompts, in the shapes teachers write them.

    In order: "Prompt:" markers (each marker starts a prompt; text before the first is preamble);
    a JSON array of strings (bare or in a ```json fence); a numbered list from 1 or a bulleted
    list, each after an optional preamble and before an optional postamble ("Here are 5 new
    prompts:\n\n1. ...\n2. ...\n\nLet me know..."). Otherwise the whole generation is one
    prompt. Empty pieces are kept so they are counted as ``empty``.
    """
    text = text.replace("\r\n", "\n")
    marks = list(_MARKER.finditer(text))
    if marks:
        bounds = [m.end() for m in marks] + [len(text)]
        starts = [m.start() for m in marks[1:]] + [len(text)]
        return [clean_prompt(text[bounds[i] : starts[i]]) for i in range(len(marks))]
    for parsed in (_json_prompts(text), _list_items(text, _NUMBERED, True), _list_items(text, _BULLET, False)):
        if parsed is not None:
            return parsed
    return [clean_prompt(text)]


def parse_answer(text: str, prefix: str = "") -> list[str]:
    """The prompts of a generation whose reply was primed with ``prefix`` (the opening of a JSON
    array): read as that array when it continues it, else as whatever shape the model wrote."""
    if prefix:
        items = _json_prompts(prefix + text)
        if items is not None:
            return items
    return parse_prompts(text)


# ---------------------------------------------------------------------------------------------
# junk detectors

# A refusal opens with an apology or with "I can't / won't / am unable to" + a verb of complying;
# "I can't decide between two laptops..." is a real user prompt and is kept.
_REFUSAL = re.compile(
    r"^(?:i'?m sorry|i am sorry|sorry,? (?:but|i)\b|i apologi[sz]e|as an ai\b|as a language model\b|unfortunately,? i\b|"
    r"(?:i can'?not|i can'?t|i can not|i (?:will not|won'?t)|i'?m (?:not able|unable)|i am (?:not able|unable))"
    r"\s+(?:\w+\s+){0,3}?(?:help|assist|comply|fulfil+|provide|create|write|generate|produce|do that|answer|continue|complete))",
)
_CHATTER = re.compile(r"^(?:sure|certainly|of course|okay|ok)\b.{0,40}\bprompts?\b|^here (?:are|is)\b.{0,40}\bprompts?\b")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")
_SPECIAL = re.compile(r"<\|[^|<>\s]{1,40}\|>|</?s>")
# A chat template's role line leaking through decoding ("<|im_start|>assistant\n" minus the special token).
_ROLE_HEADER = re.compile(r"^(?:assistant|user|system)[ \t]*\n")


# The assistant talking, or text about writing prompts, anywhere in a candidate (not only at its
# start): what a real instruct teacher writes around or instead of the prompts it was asked for.
_ASSISTANT_VOICE = re.compile(
    r"\b(?:i'?m|i am) (?:ready|happy|glad|here) to (?:help|assist)\b|\bhow (?:can|may) i (?:help|assist)\b"
    r"|\blet me know if\b|\bi hope (?:this|these) helps?\b|\bas an ai\b"
    r"|\b(?:here (?:are|is)|below (?:are|is)) (?:\w+ ){0,3}(?:new |more |additional |example )?(?:prompts?|questions)\b"
    r"|\bwrite (?:\d+|one|two|three|four|five|six|seven|eight|nine|ten|some|a few|more) (?:\w+ ){0,2}prompts?\b"
    r"|\b(?:new|more|additional|similar|following) prompts?\b"
    r"|\b(?:this|these|the|each|the above) (?:new )?prompts? (?:is|are|requires?|asks?|must|should|will|can|was)\b"
)
# A line that labels what follows as the answer: the model answered its own prompt.
_ANSWER_LABEL = re.compile(r"(?:^|\n)[ \t]*(?:\*\*)?(?:answer|solution|response|output|explanation)(?:\*\*)?[ \t]*:", re.IGNORECASE)


def is_assistant_voice(text: str) -> bool:
    """The assistant talking ("I'm ready to assist.", "Let me know if...") or text about writing
    prompts ("Write 5 new prompts with the same theme as..."), anywhere in ``text``."""
    return bool(_ASSISTANT_VOICE.search(normalize_text(text).replace("\u2019", "'")) or _ANSWER_LABEL.search(text))


# Verbs an English instruction opens with ("Write ...", "List ...", "Please explain ...").
REQUEST_VERBS = frozenset("""
add adapt analyse analyze answer arrange ask assess brainstorm build calculate categorize change check choose
classify clean combine compare compile complete compose compute construct convert correct count create debug
decide define describe design detail determine develop devise draft draw edit elaborate estimate evaluate
explain explore express extract fill find finish fix format formulate generate give guess help highlight
identify illustrate imagine implement improve interpret introduce invent join justify label list locate make
map match measure merge modify multiply name note offer order organize outline paraphrase pick plan predict
prepare present prioritize produce proofread propose prove provide put rank rate read recommend reduce refactor
rephrase replace rewrite say schedule score select share shorten show simplify sketch solve sort specify spell
state subtract suggest summarise summarize swap take teach tell test think trace transform translate turn type
use verify walk work write
""".split())
_POLITE_REQUEST = re.compile(r"^(?:please|kindly|can you|could you|would you|will you|i need|i want|i'd like|i would like|help me|let's)\b")


def is_request(text: str) -> bool:
    """A question (a "?" anywhere) or an instruction (a sentence that opens with an instruction
    verb, "please", "can you", "I need", ...: "Omar has 7 books. Count the books he has left."):
    the English shape of a prompt to an assistant."""
    if "?" in text or "\uff1f" in text:
        return True
    for sentence in _SENTENCE_START.split(text.replace("\u2019", "'")):
        norm = normalize_text(sentence).lstrip("\"'*#>-([ ")
        first = re.sub(r"[^a-z']", "", norm.split(" ", 1)[0]) if norm else ""
        if first in REQUEST_VERBS or _POLITE_REQUEST.match(norm):
            return True
    return False


_SENTENCE_START = re.compile(r"(?<=[.!:;])\s+|\n+")


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL.match(normalize_text(text).replace("\u2019", "'")))


def broken_format(text: str, special_tokens: Iterable[str] = ()) -> str | None:
    """Why ``text`` is malformed (leftover special tokens or chat role header, control or
    replacement characters, an unclosed code fence), or None."""
    if _CONTROL.search(text):
        return "control or replacement character"
    if _SPECIAL.search(text) or any(tok and tok in text for tok in special_tokens):
        return "special token in text"
    if text.count("```") % 2:
        return "unclosed code fence"
    if _ROLE_HEADER.match(text):
        return "chat role header in text"
    return None


def count_lines(text: str) -> int:
    """Non-empty lines."""
    return sum(1 for line in text.splitlines() if line.strip())


def letter_script(ch: str) -> str:
    """The script of a letter as its Unicode character name spells it: "LATIN", "CYRILLIC",
    "GREEK", "CJK", "HIRAGANA", "ARABIC", ... (the name's first word)."""
    name = unicodedata.name(ch, "")
    return name.split(" ", 1)[0] if name else "UNKNOWN"


def letter_scripts(texts: Iterable[str]) -> set[str]:
    return {letter_script(ch) for text in texts for ch in text if ch.isalpha()}


def off_script(text: str, allowed: set[str]) -> str | None:
    """Which scripts of ``text`` none of the seeds uses, when their letters are more than a stray
    symbol (over 2 letters and over 5% of the letters: a Greek pi in a Latin prompt is kept)."""
    letters = [ch for ch in text if ch.isalpha()]
    foreign = Counter(s for s in map(letter_script, letters) if s not in allowed)
    count = sum(foreign.values())
    if count > 2 and count > 0.05 * len(letters):
        return ", ".join(f"{name} {n}" for name, n in foreign.most_common(3))
    return None


class EchoDetector:
    """Flags a candidate that repeats the meta-prompt's own instructions (8 words in a row of the
    template's fixed text) or is assistant chatter about prompts ("Here are 5 new prompts:")."""

    def __init__(self, template: str, n: int = 8):
        from distill.dedup import words

        self.n = n
        fixed = [literal for literal, _, _, _ in string.Formatter().parse(template)]
        self.grams = set()
        for part in fixed:
            toks = words(part)
            self.grams.update(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))

    def __call__(self, text: str, toks: list[str] | None = None) -> bool:
        from distill.dedup import words

        if _CHATTER.match(normalize_text(text[:200])):
            return True
        toks = words(text) if toks is None else toks
        return any(tuple(toks[i : i + self.n]) in self.grams for i in range(len(toks) - self.n + 1))


def parse_judge_score(text: str) -> int | None:
    match = re.search(r"(?<!\d)([1-5])(?!\d)", text)
    return int(match.group(1)) if match else None


def expected_judge_score(output: Any, tokenizer: Any, digit_cache: dict[int, int | None] | None = None) -> float | None:
    """The judge's score read from its log-probabilities, not its text: at the first position
    where the rating digits 1-5 hold at least half the probability mass among the teacher's top-k,
    the expectation of the digit under that distribution. A small teacher that would not write a
    clean "Score: 4" still ranks its digits. None when no position qualifies (or no log-probs)."""
    if output.topk_ids is None or output.topk_logprobs is None:
        return None
    cache = digit_cache if digit_cache is not None else {}
    for ids, logprobs in zip(output.topk_ids, output.topk_logprobs):
        mass = [0.0] * 6
        for token_id, logprob in zip(ids.tolist(), logprobs.tolist()):
            if token_id not in cache:
                text = tokenizer.decode([token_id]).strip().lower()
                cache[token_id] = RATING_WORDS.get(text)
            digit = cache[token_id]
            if digit is not None:
                mass[digit] += math.exp(logprob)
        total = sum(mass)
        if total >= 0.5:
            return round(sum(d * m for d, m in enumerate(mass)) / total, 3)
    return None


# ---------------------------------------------------------------------------------------------
# the loop


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from ``parts``: stable across processes and Python versions."""
    blob = ":".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") & 0x7FFFFFFF


def record_to_json(record: PromptRecord) -> dict[str, Any]:
    return {"id": record.id, "messages": list(record.messages), "reference": record.reference, "origin": record.origin}


def record_from_json(row: dict[str, Any]) -> PromptRecord:
    return PromptRecord(id=row["id"], messages=tuple(row["messages"]), reference=row.get("reference"), origin=row.get("origin") or {})




@dataclass
class AugmentResult:
    """Accepted synthetic prompts (in acceptance order) and the run's stats."""

    records: list[PromptRecord]
    stats: dict[str, Any]
    rejected: list[dict[str, Any]]


class _State:
    """Everything a round reads and updates; rebuilt from round files on resume."""

    def __init__(self, config: AugmentConfig, seeds: Sequence[PromptRecord], templates: Templates, teacher: Any):
        from distill.dedup import NearDuplicateIndex, exact_key

        self.config = config
        self.seeds = list(seeds)
        self.accepted: list[PromptRecord] = []
        self.rejected: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.rounds_done = 0
        self.requests = 0
        self.candidates = 0
        self.surplus = 0
        self.skipped_requests = 0
        self.timing: Counter[str] = Counter()
        self.near = NearDuplicateIndex(config.near_dup_threshold, kind=config.shingle, size=config.shingle_size, num_perm=config.num_perm)
        self.exact: dict[str, str] = {}
        self.seed_exact: dict[str, str] = {}
        for seed in self.seeds:
            self.seed_exact.setdefault(exact_key(seed.prompt), seed.id)
            self.near.add(seed.id, seed.prompt)
        from distill.decontaminate import NgramIndex

        # Verbatim seed copies inside a longer text: whole seeds (>= 4 words) as one "n-gram" each.
        self.seed_contained = NgramIndex([s.prompt for s in self.seeds if len(s.prompt.split()) >= 4], n=1 << 30)
        self.echo = EchoDetector(templates.meta_prompt)
        # The output contract: a JSON array when the meta-prompt shows its examples as JSON; held
        # to a schema where the backend can, primed with '["' where the backend takes token ids.
        json_answer = asks_for_json(templates.meta_prompt)
        self.structured = json_answer and config.structured_output and bool(getattr(teacher, "structured_output", False))
        self.answer_prefix = JSON_ANSWER_PREFIX if json_answer and not self.structured else ""
        from distill.dedup import words

        self.seed_scripts = letter_scripts(seed.prompt for seed in self.seeds)
        seed_words = [len(words(seed.prompt)) for seed in self.seeds]
        r = config.length_range
        self.word_range = (math.floor(min(seed_words) / r), math.ceil(max(seed_words) * r)) if r else None
        seed_lines = max(count_lines(seed.prompt) for seed in self.seeds)
        self.max_lines = max(1, math.floor(seed_lines * r)) if r else None
        requests = sum(is_request(seed.prompt) for seed in self.seeds)
        self.request_check = config.request_form == "on" or (config.request_form == "auto" and requests >= 0.8 * len(self.seeds))
        self.logprob_floor: float | None = None  # set by seed_logprob_floor before the first round
        self.seed_logprob_p10: float | None = None
        tok = teacher.tokenizer
        self.special_tokens = [t for t in getattr(tok, "all_special_tokens", []) if len(t) > 1]
        # Chat-template tokens around a user turn, with a margin for merges across its edges.
        self.template_overhead = len(encode_prompt(tok, [{"role": "user", "content": ""}])) + 8

    def add_accepted(self, record: PromptRecord) -> None:
        from distill.dedup import exact_key

        self.accepted.append(record)
        self.exact.setdefault(exact_key(record.prompt), record.id)
        self.near.add(record.id, record.prompt)  # no-op when already indexed as a round candidate


def _examples_for(state: _State, rng: random.Random) -> list[PromptRecord]:
    config = state.config
    num_syn = min(round(config.few_shot * config.synthetic_fraction), len(state.accepted))
    picks = rng.sample(state.seeds, config.few_shot - num_syn) + rng.sample(state.accepted, num_syn)
    rng.shuffle(picks)
    return picks


def _round_requests(state: _State, templates: Templates, teacher: Any, round_index: int, num_requests: int):
    """Build this round's generation requests; each remembers its examples (the lineage)."""
    from distill.teachers.base import GenerationRequest

    config = state.config
    rng = random.Random(derive_seed("augment-round", config.seed, round_index))
    budget = teacher.max_context - config.generation_max_tokens
    requests, parents = [], {}
    for i in range(num_requests):
        examples = _examples_for(state, rng)
        # Drop the longest examples until the meta-prompt fits next to the generation budget.
        while True:
            text = render_meta_prompt(templates.meta_prompt, [e.prompt for e in examples], config.prompts_per_request)
            messages = ({"role": "user", "content": text},)
            ids = encode_prompt(teacher.tokenizer, messages)
            if len(ids) <= budget or len(examples) == 1:
                break
            examples = sorted(examples, key=lambda e: len(e.prompt))[:-1]
        if len(ids) > budget:
            state.skipped_requests += 1
            continue
        if state.answer_prefix:
            ids = list(ids) + list(teacher.tokenizer(state.answer_prefix, add_special_tokens=False)["input_ids"])
        key = f"augment-r{round_index}-q{i}"
        # messages too: a chat-API endpoint applies its own template server-side.
        requests.append(GenerationRequest(key=key, prompt_ids=tuple(ids), seed=derive_seed("augment-request", config.seed, round_index, i),
                                          messages=messages))
        parents[key] = (i, [e.id for e in examples])
    return requests, parents


def prompts_schema(num_new: int) -> str:
    """The output contract as a JSON Schema (canonical JSON text): an array of 1..num_new
    non-empty strings. Backends with structured output hold the teacher's answer to it."""
    schema = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": num_new}
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


def _timed_generate(teacher: Any, requests: list, params: Any, timing: Counter, label: str) -> dict[str, Any]:
    """Run teacher.generate, timing only the time spent inside the teacher's iterator."""
    outputs: dict[str, Any] = {}
    start = time.perf_counter()
    stream = teacher.generate(requests, params)
    for out in stream:
        outputs[out.key] = out
        if STOP.requested:  # the round in flight is dropped; finished rounds are on disk
            if hasattr(stream, "close"):
                stream.close()
            raise STOP.preempted("augmentation: the round in flight dropped, finished rounds kept")
    timing[label] += time.perf_counter() - start
    missing = [r.key for r in requests if r.key not in outputs]
    if missing:
        raise RuntimeError(f"teacher returned no output for {len(missing)} request(s), e.g. {missing[0]}")
    return outputs


def _output_text(teacher: Any, out: Any) -> str:
    if out.text:
        return out.text
    return teacher.tokenizer.decode([int(i) for i in out.response_ids], skip_special_tokens=True)


def _screen(state: _State, text: str, prompt_limit: int, teacher: Any, contamination: Any, pending: dict[str, str]) -> tuple[str | None, str]:
    """The first filter that rejects ``text`` and a detail string, or (None, "")."""
    from distill.dedup import exact_key, words

    config = state.config
    if not text.strip():
        return "empty", ""
    broken = broken_format(text, state.special_tokens)
    if broken:
        return "broken_format", broken
    if config.script_check:
        foreign = off_script(text, state.seed_scripts)
        if foreign:
            return "off_script", foreign
    toks = words(text)
    if len(toks) < config.min_words:
        return "too_short", f"{len(toks)} words"
    if is_refusal(text):
        return "refusal", ""
    if is_assistant_voice(text):
        return "assistant_voice", ""
    if state.request_check and not is_request(text):
        return "not_a_request", ""
    if state.echo(text, toks):
        return "meta_prompt_echo", ""
    key = exact_key(text)
    if key in state.seed_exact:
        return "seed_copy", state.seed_exact[key]
    contained = state.seed_contained.match(text, toks)
    if contained is not None:
        return "seed_copy", " ".join(contained)[:80]
    if key in state.exact or key in pending:
        return "exact_duplicate", state.exact.get(key) or pending[key]
    # Every tokenizer we serve (byte-level BPE, SentencePiece with byte fallback) writes at most
    # one token per UTF-8 byte, so a prompt whose bytes fit cannot be too long: skip the
    # chat-template tokenization, the costliest check, for the usual short prompt.
    if len(text.encode("utf-8")) + state.template_overhead > prompt_limit:
        num_tokens = len(encode_prompt(teacher.tokenizer, [{"role": "user", "content": text}]))
        if num_tokens > prompt_limit:
            return "too_long", f"{num_tokens} tokens > {prompt_limit}"
    if state.word_range is not None and not state.word_range[0] <= len(toks) <= state.word_range[1]:
        return "length_outlier", f"{len(toks)} words, outside {state.word_range[0]}-{state.word_range[1]} (the seeds' range x{config.length_range})"
    if state.max_lines is not None:
        lines = count_lines(text)
        if lines > state.max_lines:
            return "length_outlier", f"{lines} lines, the seeds' at most x{config.length_range}: {state.max_lines}"
    near = state.near.query(text, toks)
    if near is not None:
        return "near_duplicate", f"{near[0]} jaccard={near[1]:.2f}"
    if contamination is not None:
        gram = contamination.match(text, toks)
        if gram is not None:
            return "contaminated", " ".join(gram)
    return None, ""


def user_turn_ids(tokenizer: Any, text: str, empty: list[int] | None = None) -> tuple[list[int], list[int]]:
    """(context, content) token ids of ``text`` as a user turn in the chat template: the content is
    what the template with ``text`` has beyond ``empty``, the template with an empty message."""
    full = encode_prompt(tokenizer, [{"role": "user", "content": text}])
    if empty is None:
        empty = encode_prompt(tokenizer, [{"role": "user", "content": ""}])
    head = 0
    while head < min(len(full), len(empty)) and full[head] == empty[head]:
        head += 1
    tail = 0
    while tail < min(len(full), len(empty)) - head and full[-1 - tail] == empty[-1 - tail]:
        tail += 1
    return full[:head], full[head:len(full) - tail]


def can_score(teacher: Any) -> bool:
    """Whether the teacher returns log-probs of given text (not black-box; an endpoint only with
    vLLM's prompt_logprobs): the Teacher protocol's capability attributes."""
    return bool(getattr(teacher, "can_score", True)) and not getattr(teacher, "black_box", False)


def mean_token_logprobs(teacher: Any, texts: dict[str, str], timing: Counter) -> dict[str, float]:
    """Mean log-prob per token of each text as a user turn, under the teacher (one scoring pass)."""
    from distill.teachers.base import ScoreRequest

    requests = []
    empty = encode_prompt(teacher.tokenizer, [{"role": "user", "content": ""}])
    for key, text in texts.items():
        context, content = user_turn_ids(teacher.tokenizer, text, empty)
        requests.append(ScoreRequest(key=f"p-{key}", prompt_ids=tuple(context), response_ids=tuple(content)))
    start = time.perf_counter()
    means = {}
    for out in teacher.score(requests, 1):
        lp = np.asarray(out.sampled_logprobs, dtype=np.float64)
        means[out.key[2:]] = float(lp.mean()) if lp.size else float("-inf")
    timing["score_s"] += time.perf_counter() - start
    return means


def seed_logprob_floor(state: _State, teacher: Any) -> None:
    """The improbability threshold: the seeds' 10th-percentile mean token log-prob minus the margin."""
    config = state.config
    if not config.improbable_filter or state.logprob_floor is not None or not can_score(teacher):
        return
    means = mean_token_logprobs(teacher, {s.id: s.prompt for s in state.seeds}, state.timing)
    state.seed_logprob_p10 = round(float(np.percentile(list(means.values()), 10)), 4)
    state.logprob_floor = state.seed_logprob_p10 - config.improbable_margin


def _judge(state: _State, templates: Templates, teacher: Any, round_index: int, candidates: list[tuple[str, str]]) -> dict[str, float | None]:
    """Teacher scores (1-5, None when neither its log-probs nor its text give one) for (key, text)
    candidates: the expected rating under the teacher's distribution over the digits."""
    from distill.teachers.base import GenerationRequest, SamplingParams

    config = state.config
    # The score comes from the judge's log-probabilities of the rating digits where the teacher
    # returns log-probs; its text is parsed only as the fallback (a black-box endpoint).
    black_box = bool(getattr(teacher, "black_box", False))
    params = SamplingParams(max_new_tokens=config.judge_max_tokens, temperature=0.0, top_p=1.0,
                            top_k_logprobs=0 if black_box else JUDGE_TOP_K)
    requests = []
    for key, text in candidates:
        messages = ({"role": "user", "content": templates.judge_prompt.format(prompt=text, rubric=templates.judge_rubric)},)
        ids = encode_prompt(teacher.tokenizer, messages)
        if not black_box:  # the reply opens with "Score:" (backends that take token ids), so the rating comes next
            ids = ids + list(teacher.tokenizer(JUDGE_ANSWER_PREFIX, add_special_tokens=False)["input_ids"])
        requests.append(GenerationRequest(key=f"judge-{key}", prompt_ids=tuple(ids), seed=derive_seed("judge", config.seed, round_index, key),
                                          messages=messages))
    if not requests:
        return {}
    outputs = _timed_generate(teacher, requests, params, state.timing, "judge_s")
    scores: dict[str, float | None] = {}
    cache: dict[int, int | None] = {}
    for key, _ in candidates:
        out = outputs[f"judge-{key}"]
        score = expected_judge_score(out, teacher.tokenizer, cache)
        scores[key] = score if score is not None else parse_judge_score(_output_text(teacher, out))
    return scores


def _run_round(state: _State, templates: Templates, teacher: Any, round_index: int, prompt_limit: int, contamination: Any) -> dict[str, Any]:
    from distill.dedup import exact_key
    from distill.teachers.base import SamplingParams

    config = state.config
    remaining = config.num_prompts - len(state.accepted)
    if config.requests_per_round:
        num_requests = config.requests_per_round
    else:
        accepted_per_request = len(state.accepted) / state.requests if state.requests and state.accepted else config.prompts_per_request * 0.5
        num_requests = max(1, min(256, math.ceil(remaining / max(accepted_per_request, 0.05))))
    requests, parents = _round_requests(state, templates, teacher, round_index, num_requests)
    if not requests:
        raise ConfigError(
            f"--generation-max-tokens: no meta-prompt fits: even with one example, the meta-prompt plus "
            f"{config.generation_max_tokens} generated tokens exceeds the teacher's context of {teacher.max_context} "
            "tokens; lower --generation-max-tokens or use shorter seeds/meta-prompt"
        )
    schema = prompts_schema(config.prompts_per_request) if state.structured else None
    params = SamplingParams(max_new_tokens=config.generation_max_tokens, temperature=config.temperature, top_p=config.top_p,
                            top_k_logprobs=0, json_schema=schema)
    outputs = _timed_generate(teacher, requests, params, state.timing, "teacher_generate_s") if requests else {}

    counts: Counter[str] = Counter()
    rejected: list[dict[str, Any]] = []
    pending: dict[str, str] = {}  # exact key -> candidate key, for duplicates within the round
    survivors: list[tuple[str, str, list[str], int]] = []  # (candidate key, text, parents, request index)
    num_candidates = 0
    for request in requests:
        out = outputs[request.key]
        index, parent_ids = parents[request.key]
        pieces = parse_answer(_output_text(teacher, out), state.answer_prefix)
        for j, text in enumerate(pieces):
            num_candidates += 1
            if out.finish_reason == "length" and j == len(pieces) - 1 and text.strip():
                reason, detail = "truncated", "generation hit generation_max_tokens"
            else:
                reason, detail = _screen(state, text, prompt_limit, teacher, contamination, pending)
            if reason is not None:
                counts[reason] += 1
                rejected.append({"round": round_index, "reason": reason, "detail": detail, "text": text, "parents": parent_ids})
                continue
            # Indexed under its final id right away: later candidates of this round dedup
            # against it, and an accepted one stays indexed (rejected ones are removed below).
            cand_key = prompt_hash(({"role": "user", "content": text},))
            pending[exact_key(text)] = cand_key
            state.near.add(cand_key, text)
            survivors.append((cand_key, text, parent_ids, index))

    if state.logprob_floor is not None and survivors:
        means = mean_token_logprobs(teacher, {k: t for k, t, _, _ in survivors}, state.timing)
        kept = []
        for cand_key, text, parent_ids, index in survivors:
            if means[cand_key] < state.logprob_floor:
                state.near.remove(cand_key)
                pending.pop(exact_key(text), None)
                counts["improbable"] += 1
                rejected.append({"round": round_index, "reason": "improbable", "text": text, "parents": parent_ids,
                                 "detail": f"mean log-prob {means[cand_key]:.2f} < {state.logprob_floor:.2f}"})
            else:
                kept.append((cand_key, text, parent_ids, index))
        survivors = kept

    scores: dict[str, int | None] = {}
    if config.judge_threshold > 0 and survivors:
        scores = _judge(state, templates, teacher, round_index, [(k, t) for k, t, _, _ in survivors])
    accepted_now: list[PromptRecord] = []
    surplus = 0
    for cand_key, text, parent_ids, index in survivors:
        reason = None
        if config.judge_threshold > 0:
            score = scores.get(cand_key)
            if score is None:
                reason = "judge_unparseable"
            elif score < config.judge_threshold:
                reason = "judge_below_threshold"
        if reason is not None:
            state.near.remove(cand_key)
            counts[reason] += 1
            rejected.append({"round": round_index, "reason": reason, "detail": f"score={scores.get(cand_key)}", "text": text, "parents": parent_ids})
            continue
        if len(state.accepted) >= config.num_prompts:
            state.near.remove(cand_key)
            surplus += 1
            continue
        messages = ({"role": "user", "content": text},)
        origin: dict[str, Any] = {"source": "synthetic", "round": round_index, "parents": parent_ids, "request": index}
        if config.judge_threshold > 0:
            origin["judge_score"] = scores[cand_key]
        record = PromptRecord(id=cand_key, messages=messages, origin=origin)
        state.add_accepted(record)
        accepted_now.append(record)
    return {
        "round": round_index,
        "requests": len(requests),
        "candidates": num_candidates,
        "accepted": [record_to_json(r) for r in accepted_now],
        "rejected": rejected,
        "counts": dict(sorted(counts.items())),
        "surplus": surplus,
    }


def _apply_round(state: _State, data: dict[str, Any], replay: bool) -> None:
    """Fold a finished round into the running totals (``replay``: loaded from disk on resume)."""
    if replay:
        for row in data["accepted"]:
            state.add_accepted(record_from_json(row))
    state.rounds_done = data["round"]
    state.requests += data["requests"]
    state.candidates += data["candidates"]
    state.surplus += data["surplus"]
    state.counts.update(data["counts"])
    state.rejected.extend(data["rejected"])


def run_fingerprint(config: AugmentConfig, templates: Templates, teacher: Any, seeds: Sequence[PromptRecord], suite_sha: str | None) -> str:
    """Hash of everything that decides which prompts a run accepts (not paths, not the round budget)."""
    relevant = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("teacher", "prompts", "out", "backend", "max_rounds", "progress", "decontaminate")}
    payload = {
        "version": AUGMENT_FORMAT_VERSION,
        "config": relevant,
        "templates": dataclasses.asdict(templates),
        # The model, not where it is served: a resumed run may reach the same model at a new address.
        "teacher": {k: v for k, v in teacher.fingerprint().items() if k != "endpoint"},
        "seeds": [[s.id, prompt_hash(s.messages)] for s in seeds],
        "suite_sha256": suite_sha,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def augment_prompts(
    teacher: Any,
    seeds: Sequence[PromptRecord],
    config: AugmentConfig,
    *,
    recipe: "TeacherRecipe | None" = None,
    work_dir: str | Path | None = None,
) -> AugmentResult:
    """Expand ``seeds`` into ``config.num_prompts`` accepted synthetic prompts with ``teacher``.

    ``recipe`` is the teacher recipe (its ``augment`` key may override the templates).
    ``work_dir``: where round files go (``work_dir/rounds``); a re-run with the same inputs
    resumes after the last finished round. Without it, nothing is written.
    """
    wall_start = time.perf_counter()
    seeds = list(seeds)
    if not seeds:
        raise ConfigError("--prompts: no seed prompts to augment")
    if len(seeds) < config.few_shot:
        raise ConfigError(f"--few-shot: {config.few_shot} examples per request but only {len(seeds)} seed prompt(s); lower --few-shot or add seeds")
    templates = resolve_templates(config, recipe)
    prompt_limit = teacher.max_context - config.max_new_tokens
    if config.max_prompt_tokens:
        prompt_limit = min(prompt_limit, config.max_prompt_tokens)
    if prompt_limit < 1:
        raise ConfigError(f"--max-new-tokens: {config.max_new_tokens} leaves no room for a prompt in the teacher's context of {teacher.max_context} tokens")
    if teacher.max_context - config.generation_max_tokens < 16:
        raise ConfigError(f"generation_max_tokens: {config.generation_max_tokens} leaves no room for the meta-prompt in the teacher's context of {teacher.max_context} tokens")

    contamination, suite_info, suite_sha = None, None, None
    if config.decontaminate:
        from distill.decontaminate import load_suite_index

        contamination, files, num_suite = load_suite_index(config.decontaminate, config.decontaminate_ngram)
        suite_sha = hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()
        suite_info = {
            "suite": config.decontaminate,
            "files": [str(p) for p in files],
            "ngram": config.decontaminate_ngram,
            "suite_prompts": num_suite,
            "seeds_overlapping": sum(1 for s in seeds if contamination.match(s.prompt) is not None),
        }
        if suite_info["seeds_overlapping"]:
            print(f"warning: {suite_info['seeds_overlapping']} seed prompt(s) share a {config.decontaminate_ngram}-gram with suite {config.decontaminate}", file=sys.stderr)

    state = _State(config, seeds, templates, teacher)
    seed_logprob_floor(state, teacher)
    fingerprint = run_fingerprint(config, templates, teacher, seeds, suite_sha)
    rounds_dir = Path(work_dir) / "rounds" if work_dir is not None else None
    resumed_rounds = 0
    if rounds_dir is not None and rounds_dir.is_dir():
        index = 1
        while (rounds_dir / f"round-{index:05d}.json").is_file():
            path = rounds_dir / f"round-{index:05d}.json"
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("fingerprint") != fingerprint:
                raise ConfigError(
                    f"{path}: this augmentation directory was made with different inputs or settings "
                    "(teacher, seeds, templates, suite or flags); use a new --out or delete it"
                )
            _apply_round(state, data, replay=True)
            index += 1
        resumed_rounds = state.rounds_done

    from tqdm.auto import tqdm

    bar = tqdm(total=config.num_prompts, initial=len(state.accepted), desc="augment", unit="prompt", disable=not config.progress)
    try:
        while len(state.accepted) < config.num_prompts and state.rounds_done < config.max_rounds:
            round_index = state.rounds_done + 1
            before = len(state.accepted)
            data = _run_round(state, templates, teacher, round_index, prompt_limit, contamination)
            data["fingerprint"] = fingerprint
            _apply_round(state, data, replay=False)
            if rounds_dir is not None:
                atomic_write_text(rounds_dir / f"round-{round_index:05d}.json", json.dumps(data, ensure_ascii=False))
            bar.update(len(state.accepted) - before)
            bar.set_postfix(round=round_index, rejected=sum(state.counts.values()))
    finally:
        bar.close()

    from distill.dedup import diversity

    total_s = time.perf_counter() - wall_start
    teacher_s = state.timing["teacher_generate_s"] + state.timing["judge_s"] + state.timing["score_s"]
    stats = {
        "seeds": len(seeds),
        "target": config.num_prompts,
        "accepted": len(state.accepted),
        "rejected": {reason: state.counts.get(reason, 0) for reason in REJECT_REASONS},
        "rejected_total": sum(state.counts.values()),
        "surplus": state.surplus,
        "candidates": state.candidates,
        "requests": state.requests,
        "skipped_requests": state.skipped_requests,
        "rounds": state.rounds_done,
        "resumed_rounds": resumed_rounds,
        "stopped": "target_reached" if len(state.accepted) >= config.num_prompts else "round_budget_spent",
        "accepted_per_request": round(len(state.accepted) / state.requests, 4) if state.requests else 0.0,
        "judge_threshold": config.judge_threshold,
        "filters": {
            "seed_scripts": sorted(state.seed_scripts) if config.script_check else None,
            "request_form": state.request_check,
            "max_lines": state.max_lines,
            "word_range": list(state.word_range) if state.word_range else None,
            "improbable_floor": round(state.logprob_floor, 4) if state.logprob_floor is not None else None,
            "seed_logprob_p10": state.seed_logprob_p10,
            "structured_output": state.structured,
            "answer_prefix": state.answer_prefix,
        },
        "near_dup": {"shingle": config.shingle, "size": config.shingle_size, "threshold": config.near_dup_threshold, "num_perm": config.num_perm},
        "decontamination": suite_info,
        "diversity": diversity([r.prompt for r in state.accepted]),
        # Times of this process only (a resumed run does not know the earlier processes' times).
        "timing_s": {
            "teacher_generate": round(state.timing["teacher_generate_s"], 4),
            "judge": round(state.timing["judge_s"], 4),
            "score": round(state.timing["score_s"], 4),
            "bookkeeping": round(total_s - teacher_s, 4),
            "total": round(total_s, 4),
        },
        "fingerprint": fingerprint,
    }
    return AugmentResult(records=list(state.accepted), stats=stats, rejected=state.rejected)


# ---------------------------------------------------------------------------------------------
# the standalone command, and the step inside `distill generate --augment N`


def augment_config_for(generate_config: Any) -> AugmentConfig:
    """The AugmentConfig of ``distill generate --augment N``: its ``--augment-config`` YAML, then
    the generate flags that mean the same thing (seed, response budget, suite, judge)."""
    from distill.config import load_config

    g = generate_config
    overrides: dict[str, Any] = {
        "teacher": g.teacher, "prompts": g.prompts, "out": str(Path(g.out) / "augment"), "backend": g.backend,
        "num_prompts": g.augment, "seed": g.seed, "max_new_tokens": g.max_new_tokens, "progress": g.progress,
    }
    if g.decontaminate:
        overrides["decontaminate"] = g.decontaminate
    if g.judge_threshold:
        overrides["judge_threshold"] = g.judge_threshold
    return load_config(AugmentConfig, g.augment_config, overrides)


def read_seeds(path: str) -> list[PromptRecord]:
    """Seed prompts from ``path`` via the shared ingestion (errors name file and line)."""
    from distill.ingest import read_prompts

    return list(read_prompts(path))


def write_outputs(out_dir: Path, result: AugmentResult, manifest_extra: dict[str, Any]) -> dict[str, Any]:
    """prompts.jsonl (readable by ``distill generate --prompts``), rejected.jsonl, then augment.json last."""
    lines = []
    for record in result.records:
        row: dict[str, Any] = {"id": record.id, "prompt": record.prompt, "origin": record.origin}
        lines.append(json.dumps(row, ensure_ascii=False))
    prompts_text = "".join(line + "\n" for line in lines)
    atomic_write_text(out_dir / "prompts.jsonl", prompts_text)
    atomic_write_text(out_dir / "rejected.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.rejected))
    manifest = {
        "kind": "distill-augment",
        "format_version": AUGMENT_FORMAT_VERSION,
        **manifest_extra,
        "files": {"prompts.jsonl": {"rows": len(lines), "sha256": hashlib.sha256(prompts_text.encode("utf-8")).hexdigest()}},
        "augmentation": result.stats,
        "build": build_info(),
    }
    atomic_write_text(out_dir / "augment.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def summary_lines(stats: dict[str, Any]) -> list[str]:
    """A readable summary of an augmentation run."""
    stopped = "target reached" if stats["stopped"] == "target_reached" else f"round budget spent after {stats['rounds']} rounds"
    lines = [
        f"augmentation: {stats['accepted']}/{stats['target']} prompts accepted from {stats['seeds']} seeds ({stopped})",
        f"  rounds {stats['rounds']}, requests {stats['requests']}, candidates {stats['candidates']}, accepted per request {stats['accepted_per_request']}",
    ]
    rejected = {k: v for k, v in stats["rejected"].items() if v}
    if rejected:
        lines.append("  rejected: " + ", ".join(f"{k} {v}" for k, v in rejected.items()))
    div = stats["diversity"]
    lines.append(f"  distinct-1/2/3: {div['distinct_1']:.3f} / {div['distinct_2']:.3f} / {div['distinct_3']:.3f}, mean length {div['mean_length_words']} words")
    t = stats["timing_s"]
    if t["total"] > 0:
        lines.append(f"  time: {t['total']:.1f}s, teacher {100 * (t['teacher_generate'] + t['judge'] + t.get('score', 0)) / t['total']:.1f}%")
    return lines


def run(config: AugmentConfig) -> dict[str, Any]:
    """``distill augment``: seeds -> ``out/prompts.jsonl`` + ``out/augment.json``. Returns the manifest."""
    from distill.teachers import load_teacher, teacher_recipe

    for name in ("teacher", "prompts", "out"):
        if not getattr(config, name):
            raise ConfigError(f"--{name} is required")
    out_dir = Path(config.out)
    seeds = read_seeds(config.prompts)
    recipe = teacher_recipe(config.teacher)
    resolve_templates(config, recipe)  # template errors before the teacher loads
    lock = FolderLock(out_dir, purpose="distill augment").acquire()
    teacher = load_teacher(config.teacher, backend=config.backend)
    try:
        manifest_path = out_dir / "augment.json"
        if manifest_path.is_file():
            done = json.loads(manifest_path.read_text(encoding="utf-8"))
            templates = resolve_templates(config, recipe)
            suite_sha = None
            if config.decontaminate:
                from distill.decontaminate import resolve_suite

                suite_sha = hashlib.sha256(b"".join(p.read_bytes() for p in resolve_suite(config.decontaminate))).hexdigest()
            stats = done.get("augmentation", {})
            finished = stats.get("stopped") == "target_reached" or stats.get("rounds", 0) >= config.max_rounds
            if finished and stats.get("fingerprint") == run_fingerprint(config, templates, teacher, seeds, suite_sha):
                print(f"{out_dir}: augmentation already complete ({done['augmentation']['accepted']} prompts); nothing to do")
                return done
        result = augment_prompts(teacher, seeds, config, recipe=recipe, work_dir=out_dir)
        extra = {
            "teacher": teacher.fingerprint(),
            "seeds_file": str(config.prompts),
            "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "progress"},
        }
        manifest = write_outputs(out_dir, result, extra)
    finally:
        teacher.close()
        lock.release()
    for line in summary_lines(result.stats):
        print(line)
    print(f"wrote {out_dir / 'prompts.jsonl'} ({result.stats['accepted']} prompts) and {out_dir / 'augment.json'}")
    return manifest
