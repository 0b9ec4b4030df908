"""A fake teacher implementing the Teacher protocol with planted outputs, for augmentation tests.

``responder(prompt_text, request, params) -> str | (str, finish_reason)`` decides what the
teacher "writes". Outputs are yielded in reverse request order, as a backend may do, so the
tests also check that augmentation never depends on the order outputs arrive in.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from distill.teachers.base import GenerationRequest, SamplingParams, TeacherOutput


class CharTokenizer:
    """One id per character, no chat template: a tokenizer without transformers (fast to import)."""

    chat_template = None
    all_special_tokens: list[str] = []

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join(chr(int(i)) for i in ids)


class FakeTeacher:
    backend = "fake"

    def __init__(self, tokenizer: Any, responder: Callable[..., Any], max_context: int = 4096, name: str = "fake"):
        self.tokenizer = tokenizer
        self.max_context = max_context
        self.responder = responder
        self.name = name
        self.calls: list[tuple[int, SamplingParams]] = []
        self.generated_requests = 0
        self.scored = 0

    def fingerprint(self) -> dict[str, Any]:
        return {"model": self.name, "backend": self.backend}

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> Iterator[TeacherOutput]:
        # prompt writing never needs log-probs; the judge reads its rating from them (this fake
        # returns none, so the judge falls back to parsing the text)
        assert params.top_k_logprobs == 0 or all(r.key.startswith("judge-") for r in requests), \
            "prompt writing must not ask for log-probs"
        self.calls.append((len(requests), params))
        for request in reversed(list(requests)):
            assert len(request.prompt_ids) + params.max_new_tokens <= self.max_context
            prompt_text = self.tokenizer.decode(list(request.prompt_ids), skip_special_tokens=True)
            result = self.responder(prompt_text, request, params)
            text, finish = result if isinstance(result, tuple) else (result, "stop")
            self.generated_requests += 1
            ids = np.asarray(self.tokenizer(text, add_special_tokens=False)["input_ids"] or [0], dtype=np.int32)
            yield TeacherOutput(
                key=request.key, prompt_ids=np.asarray(request.prompt_ids, dtype=np.int32), response_ids=ids,
                topk_ids=None, topk_logprobs=None, sampled_logprobs=None, finish_reason=finish, text=text,
            )

    def score(self, requests, top_k):
        """Log-probs of given text for the improbability filter: each token costs 1 nat per
        lower-case letter or space and 4 per other character (upper case, digits, symbols), so
        shouting gibberish is improbable and ordinary prose is not."""
        self.scored += len(requests)
        for request in reversed(list(requests)):
            lps = []
            for token_id in request.response_ids:
                piece = self.tokenizer.decode([int(token_id)]) or " "
                lps.append(-sum(1.0 if c.islower() or c == " " else 4.0 for c in piece) / len(piece))
            sampled = np.asarray(lps, dtype=np.float32)
            yield TeacherOutput(
                key=request.key, prompt_ids=np.asarray(request.prompt_ids, dtype=np.int32),
                response_ids=np.asarray(request.response_ids, dtype=np.int32),
                topk_ids=np.asarray(request.response_ids, dtype=np.int32)[:, None], topk_logprobs=sampled[:, None],
                sampled_logprobs=sampled, finish_reason="stop",
            )

    def load(self, score: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


NAMES = ["Ada", "Bo", "Cy", "Di", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kai", "Lu", "Max", "Ned", "Oz", "Pia"]
THINGS = ["apples", "stamps", "marbles", "books", "coins", "shells", "pens", "cards", "kites", "beads"]
VERBS = ["buys", "finds", "loses", "gives away", "sells", "receives", "trades", "collects"]
TAILS = [
    "How many {t} does {a} have now?",
    "What is the total number of {t} they own together?",
    "How many more {t} does {a} have than {b}?",
    "If {b} doubles the pile, how many {t} are there in all?",
]


def random_prompt(rng: random.Random) -> str:
    """A templated word problem: prompts like these differ in names, numbers and wording."""
    a, b = rng.sample(NAMES, 2)
    t = rng.choice(THINGS)
    text = (
        f"{a} has {rng.randint(2, 99)} {t} and {b} has {rng.randint(2, 99)}. "
        f"{a} {rng.choice(VERBS)} {rng.randint(1, 20)} {t} on {rng.choice(['Monday', 'Friday', 'the weekend'])}. "
        + rng.choice(TAILS).format(a=a, b=b, t=t)
    )
    return text


def random_responder(per_request: int = 3) -> Callable[..., str]:
    """Writes ``per_request`` templated prompts, drawn with the request's own seed; judge requests
    get a score derived from the prompt text."""

    def respond(prompt_text: str, request: GenerationRequest, params: SamplingParams) -> str:
        rng = random.Random(request.seed)
        if "Reply with the score only" in prompt_text:
            return str(1 + len(prompt_text) % 5)
        return "\n\n".join("Prompt: " + random_prompt(rng) for _ in range(per_request))

    return respond


def examples_in(prompt_text: str) -> list[str]:
    """The few-shot examples rendered into a meta-prompt: "Prompt: ..." lines, or the JSON array
    of the default meta-prompt ({examples_json})."""
    found = re.findall(r"^Prompt: (.*)$", prompt_text, flags=re.MULTILINE)
    if found:
        return found
    match = re.search(r"^\[\n.*?\n\]$", prompt_text, flags=re.MULTILINE | re.DOTALL)
    return json.loads(match.group(0)) if match else []
