"""Secrets and personal data out of logged text, before anything is written.

Each kind is a pattern (credit-card candidates also pass a Luhn check, IP addresses a parse) and
is replaced by a typed placeholder (``<EMAIL>``, ``<API_KEY>``, ...), counted per kind. Secrets go
first (a key can contain what looks like a phone number); the order is the tuple below.

Patterns aim at what request logs carry: e-mail addresses, phone numbers written with separators
or a + country code (a bare run of digits is left alone: arithmetic prompts are full of them),
card numbers of 13 to 19 digits, IPv4 and IPv6 addresses, AWS access key ids and secret keys,
API keys of common providers (OpenAI / Anthropic ``sk-``, GitHub, Slack, Google, Stripe, Hugging
Face), bearer tokens and JWTs, and PEM private keys. Names and street addresses need a model:
``Scrubber(extra=presidio_detector())`` adds Microsoft Presidio's recognizers (``pip install
'distill[presidio]'`` and a spaCy model), run first, on the raw text, so they see whole entities.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from typing import Callable, Iterable

PLACEHOLDERS = {
    "private_key": "<PRIVATE_KEY>",
    "aws_secret_key": "<AWS_SECRET_KEY>",
    "aws_access_key": "<AWS_ACCESS_KEY>",
    "api_key": "<API_KEY>",
    "bearer_token": "<TOKEN>",
    "jwt": "<TOKEN>",
    "email": "<EMAIL>",
    "credit_card": "<CREDIT_CARD>",
    "ip_address": "<IP_ADDRESS>",
    "phone": "<PHONE>",
}

_PATTERNS: tuple[tuple[str, re.Pattern], ...] = (
    ("private_key", re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?-----END [A-Z0-9 ]*PRIVATE KEY-----", re.S)),
    ("aws_secret_key", re.compile(r"(?i)(?<=aws)(?:_|\s|-)?secret(?:_access)?(?:_|\s|-)?key['\"]?\s*[:=]\s*['\"]?([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])")),
    ("aws_access_key", re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|AIDA|AROA)[A-Z0-9]{16}(?![A-Z0-9])")),
    ("api_key", re.compile(
        r"(?<![A-Za-z0-9_-])(?:"
        r"sk-(?:ant-|proj-|svcacct-)?[A-Za-z0-9_-]{20,}"      # OpenAI, Anthropic
        r"|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}"  # GitHub
        r"|xox[abposr]-[A-Za-z0-9-]{10,}"                     # Slack
        r"|AIza[0-9A-Za-z_-]{35}"                             # Google
        r"|(?:sk|rk|pk)_(?:live|test)_[0-9a-zA-Z]{16,}"        # Stripe
        r"|hf_[A-Za-z0-9]{30,}"                               # Hugging Face
        r")")),
    ("bearer_token", re.compile(r"(?i)(?<=bearer )[A-Za-z0-9._~+/-]{8,}=*")),
    ("jwt", re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    ("email", re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![A-Za-z])")),
    ("credit_card", re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")),
    ("ip_address", re.compile(r"(?<![\w.:])(?:(?:\d{1,3}\.){3}\d{1,3}|(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4})(?![\w:]|\.\d)")),
    ("phone", re.compile(r"(?<![\w+-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}(?![\w-])"
                         r"|(?<![\w+-])\+\d{1,3}[ .-]?\d{6,12}(?![\w-])")),
)


# What a text must contain for a pattern to have any chance. Most logged text is prose with no
# secret in it, so the screen below decides cheaply which patterns to run at all:
# - needles that can sit in any text, checked with C-speed substring tests on every string;
# - needles that hold a '-' or '_', checked only when the text has one;
# - the digit kinds, whose cheap trigger regexes run only when the text holds a digit (without one
#   only an IPv6 address is possible, and it needs '::' or seven colons).
_PLAIN_NEEDLES: tuple[tuple[str, str], ...] = (
    ("aws_secret_key", "ecret"), ("aws_secret_key", "ECRET"),
    *(("aws_access_key", n) for n in ("AKIA", "ASIA", "ABIA", "ACCA", "AIDA", "AROA")),
    ("api_key", "AIza"), ("api_key", "xox"),
    ("bearer_token", "earer "), ("bearer_token", "EARER "),
    ("jwt", "eyJ"), ("email", "@"),
)
_DASH_NEEDLES: tuple[tuple[str, str], ...] = (
    ("private_key", "-----"),
    *(("api_key", n) for n in ("sk-", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "_live_", "_test_", "hf_")),
)
_DIGIT_TRIGGERS = {
    "credit_card": re.compile(r"\d[ -]?\d[ -]?\d[ -]?\d"),
    "ip_address": re.compile(r"\d\.\d|[0-9A-Fa-f]:[0-9A-Fa-f]|::"),
    "phone": re.compile(r"\d[ .-]\d|[+(]\d"),
}
_DIGIT = re.compile(r"\d")


def candidate_kinds(text: str) -> set[str]:
    """The kinds whose trigger the text holds (each pattern runs only for these)."""
    kinds: set[str] = set()
    for kind, needle in _PLAIN_NEEDLES:  # plain loops: this runs for every logged string
        if needle in text:
            kinds.add(kind)
    if "-" in text or "_" in text:
        for kind, needle in _DASH_NEEDLES:
            if needle in text:
                kinds.add(kind)
    if _DIGIT.search(text):
        kinds.update(kind for kind, trigger in _DIGIT_TRIGGERS.items() if trigger.search(text))
    elif "::" in text or text.count(":") >= 7:
        kinds.add("ip_address")
    return kinds


def luhn_ok(digits: str) -> bool:
    total, double = 0, False
    for ch in reversed(digits):
        d = int(ch)
        if double:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        double = not double
    return total % 10 == 0


def _accept(kind: str, text: str) -> bool:
    if kind == "credit_card":
        digits = re.sub(r"\D", "", text)
        return 13 <= len(digits) <= 19 and luhn_ok(digits) and len(set(digits)) > 1
    if kind == "ip_address":
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            return False
        return address.version == 6 or text.count(".") == 3
    return True


Detector = Callable[[str], Iterable[tuple[int, int, str]]]  # text -> (start, end, kind) spans


class Scrubber:
    """``scrub(text)`` -> the text with every finding replaced; ``counts`` per kind so far."""

    CACHE_ENTRIES = 20_000  # repeated clean strings (system prompts, metadata values) are scanned once
    CACHE_CHARS = 2_000

    def __init__(self, extra: Detector | None = None) -> None:
        self.counts: Counter = Counter()
        self.extra = extra
        self._clean: set[str] = set()  # short strings seen with nothing to scrub

    def scrub(self, text: str) -> str:
        if not text:
            return text
        if self.extra is not None or len(text) > self.CACHE_CHARS:
            return self._scrub(text)
        if text in self._clean:
            return text
        result = self._scrub(text)
        if result == text:  # nothing found (a replacement always changes the text): remember it
            if len(self._clean) >= self.CACHE_ENTRIES:
                self._clean.clear()
            self._clean.add(text)
        return result

    def _scrub(self, text: str) -> str:
        if self.extra is not None:  # first, on the raw text: its recognizers see whole entities
            for start, end, kind in sorted(self.extra(text), reverse=True):
                self.counts[kind] += 1
                text = text[:start] + f"<{kind.upper()}>" + text[end:]
        kinds = candidate_kinds(text)
        for kind, pattern in _PATTERNS:
            if kind not in kinds:
                continue
            if kind == "aws_secret_key":
                text = self._secret(text, pattern)
                continue
            text = pattern.sub(lambda m, k=kind: self._replace(k, m.group(0)), text)
        return text

    def _replace(self, kind: str, found: str) -> str:
        if not _accept(kind, found):
            return found
        self.counts[kind] += 1
        return PLACEHOLDERS[kind]

    def _secret(self, text: str, pattern: re.Pattern) -> str:
        def replace(match: re.Match) -> str:
            self.counts["aws_secret_key"] += 1
            whole, secret = match.group(0), match.group(1)
            return whole[: len(whole) - len(secret)] + PLACEHOLDERS["aws_secret_key"]
        return pattern.sub(replace, text)


def presidio_detector(entities: tuple[str, ...] = ("PERSON", "LOCATION"), model: str = "en_core_web_lg") -> Detector:
    """Presidio's recognizers for ``entities`` (names and places need a spaCy model with NER, e.g.
    en_core_web_lg; pattern entities such as IBAN_CODE work with any), as an extra detector."""
    from distill.config import ConfigError

    try:
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import NlpEngineProvider
    except ImportError:
        raise ConfigError("--scrubber presidio: presidio-analyzer is not installed (pip install 'distill[presidio]', "
                          "then python -m spacy download en_core_web_lg)") from None
    try:
        provider = NlpEngineProvider(nlp_configuration={
            "nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": model}]})
        engine = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--presidio-model {model}: cannot load this spaCy model ({' '.join(str(exc).split())[:200]}); "
                          f"install it with `python -m spacy download {model}` or give a model folder") from None
    known = set(engine.get_supported_entities("en"))
    unknown = sorted(set(entities) - known)
    if unknown:
        raise ConfigError(f"--presidio-entities: {', '.join(unknown)} unknown to Presidio; known: {', '.join(sorted(known))}")

    def detect(text: str) -> list[tuple[int, int, str]]:
        found = engine.analyze(text=text, entities=list(entities), language="en")
        spans: list[tuple[int, int, str]] = []
        for r in sorted(found, key=lambda r: (r.start, -(r.end - r.start))):
            if spans and r.start < spans[-1][1]:  # overlapping findings: keep the first, longest
                continue
            spans.append((r.start, r.end, r.entity_type.lower()))
        return spans

    return detect
