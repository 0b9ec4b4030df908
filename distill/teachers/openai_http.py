"""OpenAI-compatible HTTP teacher: `vllm serve`, SGLang, or a hosted endpoint.

Many generation workers (``distill generate --shard i/N``) can share one endpoint; each keeps at
most ``concurrency`` requests in flight. Requests run on an asyncio loop in a background thread
(httpx, one pooled client); results stream back through a bounded queue, so memory stays
bounded however many requests are queued. Transient failures (429, 5xx, timeouts, dropped
connections, unparsable JSON) are retried with exponential backoff and full jitter; anything
else stops the run with a message naming the endpoint and the request.

Token ids must be exact (DESIGN.md §3). Against a vLLM server we send the prompt as token ids
(``/v1/completions``), ask for ``return_token_ids`` and ``return_tokens_as_token_ids``, so every
id comes back as an integer. Against other servers, token strings (and their ``bytes``) are
mapped back through the teacher tokenizer, and a string that matches no id or several ids is
refused, never guessed. Endpoints without log-probs run in black-box mode: text only, the
corpus says ``black_box`` and training uses CE only.

The API key is read from the environment variable the recipe names (``api_key_env``); it is
sent as a header and never appears in the fingerprint, the corpus, exceptions or logs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from distill.config import ConfigError
from distill.teachers.base import (
    GenerationRequest,
    SamplingParams,
    ScoreRequest,
    TeacherError,
    TeacherOutput,
    backend_settings,
)
from distill.teachers.logprobs import finish_reason, score_positions, topk_arrays

if TYPE_CHECKING:
    from distill.teachers.recipe import TeacherRecipe

logger = logging.getLogger(__name__)

SERVERS = ("vllm", "sglang", "openai")
APIS = ("completions", "chat")
# The OpenAI API caps top_logprobs at 20; servers that follow the spec enforce it.
SPEC_MAX_TOP_LOGPROBS = 20
TOKEN_ID_PREFIX = "token_id:"  # vLLM's return_tokens_as_token_ids form
# Server-side log-probs are clamped to this by OpenAI-style APIs (JSON has no -inf).
MIN_LOGPROB = -9999.0


class TokenMappingError(TeacherError):
    """A returned token string does not map to exactly one teacher token id."""


class _Retryable(Exception):
    """A transient failure: retry after a backoff (``retry_after`` seconds at least, if given)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass(frozen=True)
class EndpointConfig:
    """How to reach and drive one OpenAI-compatible endpoint (the recipe's ``endpoint:`` block)."""

    base_url: str
    server: str = "vllm"  # vllm | sglang | openai (any spec-following server)
    api: str = "completions"  # completions (prompt as token ids) | chat (messages)
    served_model: str = ""  # the "model" field sent; default: the recipe's model
    api_key_env: str | None = None  # name of the env var holding the key, never the key
    concurrency: int = 64
    request_timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    max_retries: int = 8
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    logprobs: bool = True  # False: black-box endpoint (text only)
    extra_body: dict[str, Any] | None = None  # merged into every request body
    # before the first request, wait up to this long for GET base_url/models to answer (a server
    # still loading its weights, a Service without ready pods); 0: do not wait
    ready_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"endpoint.base_url must start with http:// or https://, got {self.base_url!r}")
        if self.server not in SERVERS:
            raise ValueError(f"endpoint.server must be one of {', '.join(SERVERS)}, got {self.server!r}")
        if self.api not in APIS:
            raise ValueError(f"endpoint.api must be one of {', '.join(APIS)}, got {self.api!r}")
        if self.concurrency < 1:
            raise ValueError(f"endpoint.concurrency must be >= 1, got {self.concurrency}")
        if self.request_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("endpoint.request_timeout_s and endpoint.connect_timeout_s must be > 0")
        if self.max_retries < 0:
            raise ValueError(f"endpoint.max_retries must be >= 0, got {self.max_retries}")
        if self.ready_timeout_s < 0:
            raise ValueError(f"endpoint.ready_timeout_s must be >= 0, got {self.ready_timeout_s}")
        if self.backoff_base_s < 0 or self.backoff_max_s < self.backoff_base_s:
            raise ValueError("endpoint.backoff_base_s must be >= 0 and <= endpoint.backoff_max_s")
        if self.api_key_env is not None and not self.api_key_env.replace("_", "").isalnum():
            raise ValueError(
                f"endpoint.api_key_env names an environment variable (e.g. OPENAI_API_KEY), got {self.api_key_env!r}"
            )


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random,
                  retry_after: float | None = None) -> float:
    """Full-jitter exponential backoff: uniform(0, min(max, base * 2**attempt)), at least Retry-After.

    Full jitter spreads a burst of clients that failed together (a 429 storm from 64 workers)
    instead of having them retry in lockstep.
    """
    delay = rng.uniform(0.0, min(max_s, base_s * (2.0 ** attempt)))
    if retry_after is not None:
        delay = max(delay, min(retry_after, max_s))
    return delay


# ------------------------------------------------------------------------------------------
# Token strings -> ids


def _byte_level_table() -> dict[str, int]:
    """The byte-level BPE alphabet (printable stand-ins for the 256 bytes) -> byte value."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


class TokenMap:
    """Maps the token strings (and bytes) a server returns to the teacher tokenizer's ids.

    Built lazily (one pass over the vocabulary). ``token_id:N`` strings (vLLM) map directly.
    Otherwise the token's bytes (the chat API sends them) or its decoded text must match exactly
    one id; several ids (e.g. partial UTF-8 pieces that all decode to U+FFFD) or none is a
    TokenMappingError: a wrong id would silently corrupt the KD targets.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._by_bytes: dict[bytes, list[int]] | None = None
        self._by_text: dict[str, list[int]] | None = None

    def _build(self) -> None:
        table = _byte_level_table()
        by_bytes: dict[bytes, list[int]] = {}
        by_text: dict[str, list[int]] = {}
        vocab_size = len(self.tokenizer)
        pieces = self.tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
        for token_id, piece in enumerate(pieces):
            text = self.tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if piece is not None and piece and all(ch in table for ch in piece):
                raw = bytes(table[ch] for ch in piece)
            else:
                raw = text.encode("utf-8")
            by_bytes.setdefault(raw, []).append(token_id)
            by_text.setdefault(text, []).append(token_id)
        self._by_bytes, self._by_text = by_bytes, by_text

    def to_id(self, token: str, token_bytes: Sequence[int] | None = None, where: str = "") -> int:
        if token.startswith(TOKEN_ID_PREFIX):
            try:
                return int(token[len(TOKEN_ID_PREFIX):])
            except ValueError:
                raise TokenMappingError(f"{where}: malformed token id string {token!r}") from None
        if self._by_bytes is None:
            self._build()
        assert self._by_bytes is not None and self._by_text is not None
        if token_bytes is not None:
            candidates = self._by_bytes.get(bytes(token_bytes), [])
            key = f"bytes {bytes(token_bytes)!r}"
        else:
            candidates = self._by_text.get(token, [])
            key = f"string {token!r}"
        # U+FFFD stands for bytes a server could not decode (a token holding part of a UTF-8
        # character); vLLM even sends the replacement character's bytes in 'bytes' then. Many
        # ids look like that, so it never identifies one.
        if "\ufffd" in token or (token_bytes is not None and b"\xef\xbf\xbd" in bytes(token_bytes)):
            candidates = []
        if len(candidates) != 1:
            found = "no id" if not candidates else f"{len(candidates)} ids {candidates[:5]}"
            raise TokenMappingError(
                f"{where}: the server returned token {key}, which identifies {found} of the teacher "
                "tokenizer; refusing to guess. Use a vLLM server (server: vllm, which returns token "
                "ids), check that the recipe's tokenizer is the served model's, or set "
                "endpoint.logprobs: false for a black-box corpus."
            )
        return candidates[0]


# ------------------------------------------------------------------------------------------
# Response parsing (pure functions of the decoded JSON; the contract tests feed them bodies
# built from vLLM's own protocol models)


def _finish_reason(raw: Any) -> tuple[str, str | None]:
    """The shared finish-reason rule (distill.teachers.logprobs); a reason to resubmit is retried."""
    ours, server = finish_reason(raw)
    if ours is None:
        raise _Retryable(f"finish_reason={raw!r}")
    return ours, server


def _topk(positions: list[list[tuple[int, float]]], k: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(token id, logprob) candidates per position -> top-k arrays, by the shared rule."""
    ids, logprobs, _ = topk_arrays(([(i, lp, None) for i, lp in row] for row in positions), k, where)
    return ids, logprobs


def parse_completion_choice(choice: dict[str, Any], k: int, token_map: TokenMap, where: str
                            ) -> tuple[list[int], np.ndarray | None, np.ndarray | None, np.ndarray | None, str, str, str | None]:
    """A /v1/completions choice -> (response ids, topk ids, topk logprobs, sampled logprobs,
    text, finish_reason, server finish_reason if different)."""
    finish, server_finish = _finish_reason(choice.get("finish_reason"))
    text = choice.get("text") or ""
    lp = choice.get("logprobs")
    if k == 0:
        ids = choice.get("token_ids")
        if ids is None and lp is not None:
            ids = [token_map.to_id(tok, where=f"{where} token {t}") for t, tok in enumerate(lp["tokens"])]
        return (list(map(int, ids)) if ids is not None else None), None, None, None, text, finish, server_finish
    if lp is None or lp.get("top_logprobs") is None:
        raise TeacherError(f"{where}: response has no logprobs; the server ignored 'logprobs' (set endpoint.logprobs: false for a black-box endpoint)")
    tokens, token_logprobs, top = lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]
    if not (len(tokens) == len(token_logprobs) == len(top)):
        raise TeacherError(f"{where}: logprobs lists differ in length")
    ids = [token_map.to_id(tok, where=f"{where} token {t}") for t, tok in enumerate(tokens)]
    if choice.get("token_ids") is not None and list(map(int, choice["token_ids"])) != ids:
        raise TeacherError(f"{where}: token_ids and logprobs tokens disagree")
    sampled = np.asarray([MIN_LOGPROB if v is None else v for v in token_logprobs], dtype=np.float32)
    fast = _token_id_topk(top, k)
    if fast is not None:
        return ids, fast[0], fast[1], sampled, text, finish, server_finish
    positions = []
    for t, step in enumerate(top):
        if step is None:
            raise TeacherError(f"{where}: no top log-probs at response position {t}")
        positions.append([(token_map.to_id(tok, where=f"{where} top token at {t}"), float(v)) for tok, v in step.items()])
    topk_ids, topk_lp = _topk(positions, k, where)
    return ids, topk_ids, topk_lp, sampled, text, finish, server_finish


def _token_id_topk(top: list[Any], k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Vectorized top-k for vLLM's ``token_id:N``-keyed completions log-probs (distinct keys,
    k or k+1 per position); None for anything else (the general path then maps strings)."""
    if not top or any(step is None or not k <= len(step) <= k + 1 for step in top):
        return None
    counts = np.fromiter((len(step) for step in top), dtype=np.int64, count=len(top))
    total = int(counts.sum())
    try:
        ids = np.fromiter((int(key[9:]) if key.startswith(TOKEN_ID_PREFIX) else -1 for step in top for key in step),
                          dtype=np.int64, count=total)
    except ValueError:
        return None
    if (ids < 0).any():
        return None
    logprobs = np.fromiter((v for step in top for v in step.values()), dtype=np.float64, count=total)
    rows = np.repeat(np.arange(len(top)), counts)
    cols = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    grid_ids = np.full((len(top), k + 1), -1, dtype=np.int64)
    grid_lps = np.full((len(top), k + 1), -np.inf)
    grid_ids[rows, cols] = ids
    grid_lps[rows, cols] = logprobs
    # Descending log-prob, ties by id, as the general path orders them.
    order = np.lexsort((grid_ids, -grid_lps), axis=1)[:, :k]
    return (np.take_along_axis(grid_ids, order, axis=1).astype(np.int32),
            np.take_along_axis(grid_lps, order, axis=1).astype(np.float32))


def parse_chat_choice(choice: dict[str, Any], k: int, token_map: TokenMap, where: str
                      ) -> tuple[list[int] | None, np.ndarray | None, np.ndarray | None, np.ndarray | None, str, str, str | None]:
    """A /v1/chat/completions choice -> the same tuple as ``parse_completion_choice``."""
    finish, server_finish = _finish_reason(choice.get("finish_reason"))
    text = (choice.get("message") or {}).get("content") or ""
    content = (choice.get("logprobs") or {}).get("content")
    if k == 0:
        ids = choice.get("token_ids")
        return (list(map(int, ids)) if ids is not None else None), None, None, None, text, finish, server_finish
    if content is None:
        raise TeacherError(f"{where}: response has no logprobs; the server ignored 'logprobs' (set endpoint.logprobs: false for a black-box endpoint)")
    ids, positions, sampled = [], [], []
    for t, entry in enumerate(content):
        token_id = token_map.to_id(entry["token"], entry.get("bytes"), where=f"{where} token {t}")
        ids.append(token_id)
        sampled.append(float(entry["logprob"]))
        top = [(token_map.to_id(c["token"], c.get("bytes"), where=f"{where} top token at {t}"), float(c["logprob"]))
               for c in entry.get("top_logprobs") or []]
        # The sampled token is a candidate too: vLLM's chat list can start with it.
        positions.append(top + [(token_id, float(entry["logprob"]))])
    if choice.get("token_ids") is not None and list(map(int, choice["token_ids"])) != ids:
        raise TeacherError(f"{where}: token_ids and logprobs tokens disagree")
    topk_ids, topk_lp = _topk(positions, k, where)
    return ids, topk_ids, topk_lp, np.asarray(sampled, dtype=np.float32), text, finish, server_finish


def parse_prompt_logprobs(choice: dict[str, Any], prompt_len: int, response_ids: Sequence[int], k: int,
                          where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """vLLM's ``prompt_logprobs`` (first entry None; JSON keys are token ids) for the scored
    response positions -> topk ids, topk logprobs, logprobs of the given response tokens."""
    entries = score_positions(choice.get("prompt_logprobs"), prompt_len, len(response_ids), where)
    positions = [[(int(key), float(v["logprob"] if isinstance(v, dict) else v), None) for key, v in step.items()]
                 for step in entries]
    topk_ids, topk_lp, sampled = topk_arrays(positions, k, where, chosen=response_ids)
    return topk_ids, topk_lp, sampled


# ------------------------------------------------------------------------------------------
# The teacher


@dataclass
class _Job:
    """One HTTP request to make and how to turn its JSON into a TeacherOutput."""

    key: str
    path: str
    body: dict[str, Any]
    convert: Callable[[dict[str, Any]], TeacherOutput]


class OpenAITeacher:
    """A teacher behind an OpenAI-compatible endpoint. See the module docstring."""

    backend = "openai"

    def __init__(self, name: str, model: str, tokenizer: Any, endpoint: EndpointConfig, max_context: int,
                 revision: str | None = None, seed: int = 0) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.endpoint = endpoint
        self.max_context = max_context
        self.revision = revision
        self.black_box = not endpoint.logprobs
        self.token_map = TokenMap(tokenizer)
        self._rng = random.Random(seed)
        self.stats = {"attempts": 0, "retries": 0, "retry_reasons": {}, "server_finish_reasons": {}}

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def from_recipe(cls, recipe: "TeacherRecipe", **overrides: Any) -> "OpenAITeacher":
        """Build from a teacher recipe; ``overrides`` replace keys of its ``endpoint:`` block
        (e.g. ``base_url``, ``concurrency``); ``None`` values are ignored."""
        from transformers import AutoTokenizer

        endpoint = backend_settings(recipe, "endpoint", EndpointConfig, overrides, batch_size_key="concurrency")
        if endpoint.api_key_env and not os.environ.get(endpoint.api_key_env):
            raise ConfigError(f"{recipe.source}: endpoint.api_key_env names ${endpoint.api_key_env}, which is not set")
        tokenizer_source = recipe.tokenizer or recipe.model
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, revision=recipe.tokenizer_revision)
        return cls(name=recipe.name or recipe.model, model=recipe.model, tokenizer=tokenizer, endpoint=endpoint,
                   max_context=int(recipe.max_context or 32768), revision=recipe.revision)

    @property
    def can_score(self) -> bool:
        """Log-probs of given text need vLLM's prompt_logprobs extension and a non-black-box endpoint."""
        return not self.black_box and self.endpoint.server == "vllm"

    @property
    def structured_output(self) -> bool:
        """``response_format`` with a JSON schema: chat completions everywhere, completions on vLLM."""
        return self.endpoint.api == "chat" or self.endpoint.server == "vllm"

    def fingerprint(self) -> dict[str, Any]:
        # What identifies the teacher, not where it is served: a corpus resumes against a moved
        # or restarted server. Never the key (this goes into the manifest).
        return {
            "model": self.model,
            "revision": self.revision,
            "backend": self.backend,
            "server": self.endpoint.server,
            "api": self.endpoint.api,
            "black_box": self.black_box,
            "backend_version": f"httpx {_httpx_version()}",
        }

    def load(self, score: bool = False) -> None:
        """Nothing to load; wait until the endpoint answers (``endpoint.ready_timeout_s``)."""
        self.wait_until_ready()

    def _headers(self) -> dict[str, str]:
        cfg = self.endpoint
        headers = {"Content-Type": "application/json"}
        api_key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return headers

    def wait_until_ready(self, poll_s: float = 2.0, note_every_s: float = 30.0) -> float:
        """Poll ``GET base_url/models`` until the server answers with anything but a 5xx or 429:
        a generate worker started beside a teacher that is still loading (or behind a Service with
        no ready pod yet) waits instead of failing its first requests. Returns the seconds waited;
        raises TeacherError after ``endpoint.ready_timeout_s``; SIGTERM stops the wait (exit 75)."""
        import httpx


        cfg = self.endpoint
        if cfg.ready_timeout_s <= 0:
            return 0.0
        url = cfg.base_url.rstrip("/") + "/models"
        started = time.monotonic()
        client = httpx.Client(headers=self._headers(), timeout=httpx.Timeout(cfg.connect_timeout_s),
                              verify=ssl.create_default_context())  # one TLS context: building one reads the CA bundle
        try:
            return self._poll_ready(client, url, started, poll_s, note_every_s)
        finally:
            client.close()

    def _poll_ready(self, client: Any, url: str, started: float, poll_s: float, note_every_s: float) -> float:
        import httpx

        from distill.stop import STOP

        cfg = self.endpoint
        noted = None
        while True:
            try:
                response = client.get(url)
                if response.status_code < 500 and response.status_code != 429:
                    waited = time.monotonic() - started
                    if noted is not None:
                        print(f"teacher endpoint {url} ready after {waited:.0f} s", file=sys.stderr, flush=True)
                    return waited
                reason = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                reason = f"{type(exc).__name__}"
            STOP.check(f"stopped while waiting for the teacher endpoint {url}; nothing written")
            waited = time.monotonic() - started
            if waited >= cfg.ready_timeout_s:
                raise TeacherError(f"teacher endpoint {url} not ready after {waited:.0f} s (last: {reason}); check that "
                                   "the server runs at endpoint.base_url, or raise endpoint.ready_timeout_s")
            if noted is None or time.monotonic() - noted >= note_every_s:
                noted = time.monotonic()
                print(f"waiting for the teacher endpoint {url} ({reason}): {waited:.0f} s of at most "
                      f"{cfg.ready_timeout_s:.0f} s", file=sys.stderr, flush=True)
            time.sleep(min(poll_s, max(0.0, cfg.ready_timeout_s - waited)))

    def close(self) -> None:
        pass

    # -- requests --------------------------------------------------------------------------

    def _top_k(self, requested: int) -> int:
        if self.black_box:
            return 0
        if requested > SPEC_MAX_TOP_LOGPROBS and self.endpoint.server != "vllm":
            raise ConfigError(
                f"--top-k {requested}: a {self.endpoint.server} endpoint returns at most "
                f"{SPEC_MAX_TOP_LOGPROBS} top log-probs (OpenAI spec); use --top-k <= {SPEC_MAX_TOP_LOGPROBS}"
            )
        return requested

    def _base_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.endpoint.served_model, "n": 1, "stream": False}
        if self.endpoint.server == "vllm":
            # Ids, not text: exact response ids and no detokenization ambiguity.
            body["return_token_ids"] = True
            body["return_tokens_as_token_ids"] = True
            body["skip_special_tokens"] = False
        body.update(self.endpoint.extra_body or {})
        return body

    def _generation_job(self, request: GenerationRequest, params: SamplingParams, k: int) -> _Job:
        body = self._base_body()
        body.update(max_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
                    seed=int(request.seed) % (2**63))
        if params.stop:
            body["stop"] = list(params.stop)
        if params.json_schema and self.structured_output:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "prompts", "schema": json.loads(params.json_schema), "strict": True}}
        where = f"{self.endpoint.base_url} request {request.key}"
        if self.endpoint.api == "completions":
            body["prompt"] = [int(i) for i in request.prompt_ids]
            if k:
                body["logprobs"] = k
            path, parse = "/completions", parse_completion_choice
        else:
            messages = request.messages
            if not messages:
                raise ConfigError(
                    "endpoint.api: chat needs the prompt's chat messages, and this request carries only token ids; "
                    "use endpoint.api: completions (the prompt is sent as the exact token ids)")
            body["messages"] = [dict(m) for m in messages]
            if k:
                # vLLM's chat list is the first N of (sampled, top1, top2, ...): ask one more
                # so the true top k are all there when the sampled token is outside them.
                body["logprobs"] = True
                body["top_logprobs"] = k + 1 if self.endpoint.server == "vllm" else k
            path, parse = "/chat/completions", parse_chat_choice

        def convert(data: dict[str, Any]) -> TeacherOutput:
            choice = _single_choice(data, where)
            ids, topk_ids, topk_lp, sampled, text, finish, server_finish = parse(choice, k, self.token_map, where)
            if ids is None:
                ids = self._retokenize(text, finish)
            return self._output(request.key, request.prompt_ids, ids, topk_ids, topk_lp, sampled, text, finish,
                                server_finish)

        return _Job(request.key, path, body, convert)

    def _score_job(self, request: ScoreRequest, k: int) -> _Job:
        if self.endpoint.server != "vllm":
            raise ConfigError(f"score mode needs prompt_logprobs, a vLLM server extension; endpoint.server is {self.endpoint.server!r}")
        body = self._base_body()
        prompt = [int(i) for i in request.prompt_ids] + [int(i) for i in request.response_ids]
        body.update(prompt=prompt, max_tokens=1, temperature=0.0, prompt_logprobs=k)
        where = f"{self.endpoint.base_url} score request {request.key}"

        def convert(data: dict[str, Any]) -> TeacherOutput:
            choice = _single_choice(data, where)
            topk_ids, topk_lp, sampled = parse_prompt_logprobs(choice, len(request.prompt_ids), request.response_ids, k, where)
            text = self.tokenizer.decode(list(request.response_ids), skip_special_tokens=True) if self.tokenizer else ""
            return self._output(request.key, request.prompt_ids, list(request.response_ids), topk_ids, topk_lp, sampled,
                                text, "stop", None)

        return _Job(request.key, "/completions", body, convert)

    def _retokenize(self, text: str, finish: str) -> list[int]:
        # Black-box endpoints give text only: the student learns from the text, tokenized once
        # here, with EOS closing a response that ended naturally.
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if finish == "stop" and self.tokenizer.eos_token_id is not None:
            ids.append(int(self.tokenizer.eos_token_id))
        return ids

    def _output(self, key, prompt_ids, ids, topk_ids, topk_lp, sampled, text, finish, server_finish) -> TeacherOutput:
        extra = {}
        if server_finish is not None:
            extra["server_finish_reason"] = server_finish
            counts = self.stats["server_finish_reasons"]
            counts[server_finish] = counts.get(server_finish, 0) + 1
        return TeacherOutput(
            key=key, prompt_ids=np.asarray(prompt_ids, dtype=np.int32), response_ids=np.asarray(ids, dtype=np.int32),
            topk_ids=topk_ids, topk_logprobs=topk_lp, sampled_logprobs=sampled, finish_reason=finish, text=text,
            extra=extra,
        )

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> Iterator[TeacherOutput]:
        k = self._top_k(params.top_k_logprobs)
        return self._stream(self._generation_job(r, params, k) for r in requests)

    def score(self, requests: Sequence[ScoreRequest], top_k: int) -> Iterator[TeacherOutput]:
        if self.black_box:
            raise ConfigError("score mode needs log-probs; this endpoint is black-box (endpoint.logprobs: false)")
        return self._stream(self._score_job(r, top_k) for r in requests)

    # -- the async engine ------------------------------------------------------------------

    def _stream(self, jobs: Iterable[_Job]) -> Iterator[TeacherOutput]:
        """Run ``jobs`` with at most ``concurrency`` in flight; yield outputs as they finish.

        The event loop lives in a background thread; a bounded asyncio queue between it and
        this generator means at most 2 x concurrency results exist at once, whatever the
        number of jobs. Closing the generator early cancels the requests in flight.
        """
        loop = asyncio.new_event_loop()
        results: asyncio.Queue = asyncio.Queue(maxsize=self.endpoint.concurrency)
        done = object()

        async def main() -> None:
            try:
                await self._run_jobs(iter(jobs), results)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer's thread
                await results.put(exc)
                return
            await results.put(done)

        async def wind_down() -> None:
            # Wait for every task (workers, httpx's connection cleanup) to finish cancelling.
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        # The loop outlives the producer: results stay queued until this generator takes them.
        thread = threading.Thread(target=loop.run_forever, name="distill-openai-client", daemon=True)
        thread.start()
        producer = asyncio.run_coroutine_threadsafe(main(), loop)
        try:
            while True:
                item = asyncio.run_coroutine_threadsafe(results.get(), loop).result()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            producer.cancel()
            asyncio.run_coroutine_threadsafe(wind_down(), loop).result()
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _run_jobs(self, jobs: Iterator[_Job], results: asyncio.Queue) -> None:
        import httpx

        cfg = self.endpoint
        headers = self._headers()
        timeout = httpx.Timeout(cfg.request_timeout_s, connect=cfg.connect_timeout_s)
        # One TLS context for all workers (building one reads the CA bundle: ~0.2 s each). The
        # system defaults honour SSL_CERT_FILE / SSL_CERT_DIR for private CAs inside a VPC.
        tls = ssl.create_default_context()

        async def worker() -> None:
            # One client (one keep-alive connection) per worker: httpcore's shared pool does work
            # proportional to its size on every request, which dominates at concurrency 64+.
            limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
            async with httpx.AsyncClient(base_url=cfg.base_url.rstrip("/"), headers=headers, limits=limits,
                                         timeout=timeout, verify=tls) as client:
                # Workers pull from one shared iterator: jobs are built lazily, one per free slot.
                for job in jobs:
                    await results.put(await self._request(client, job))

        workers = [asyncio.ensure_future(worker()) for _ in range(cfg.concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _request(self, client: Any, job: _Job) -> TeacherOutput:
        import httpx

        cfg = self.endpoint
        where = f"{cfg.base_url}{job.path} request {job.key}"
        payload = json.dumps(job.body).encode("utf-8")
        last_reason = ""
        for attempt in range(cfg.max_retries + 1):
            self.stats["attempts"] += 1
            try:
                try:
                    response = await client.post(job.path, content=payload)
                except httpx.TimeoutException:
                    raise _Retryable("timeout") from None
                except httpx.TransportError as exc:
                    raise _Retryable(f"connection error ({type(exc).__name__})") from None
                status = response.status_code
                if status == 429 or status == 408 or status >= 500:
                    raise _Retryable(f"HTTP {status}", _retry_after(response.headers.get("retry-after")))
                if status != 200:
                    raise TeacherError(f"{where}: HTTP {status}: {response.text[:500]}")
                try:
                    data = json.loads(response.content)
                except (ValueError, UnicodeDecodeError):
                    raise _Retryable("malformed JSON in response body") from None
                if isinstance(data, dict) and "error" in data and "choices" not in data:
                    raise TeacherError(f"{where}: server error: {str(data['error'])[:500]}")
                return job.convert(data)
            except _Retryable as exc:
                last_reason = str(exc)
                reasons = self.stats["retry_reasons"]
                reasons[last_reason] = reasons.get(last_reason, 0) + 1
                if attempt == cfg.max_retries:
                    break
                self.stats["retries"] += 1
                await asyncio.sleep(backoff_delay(attempt, cfg.backoff_base_s, cfg.backoff_max_s, self._rng,
                                                  exc.retry_after))
            except (KeyError, TypeError, IndexError) as exc:
                raise TeacherError(f"{where}: unexpected response shape ({type(exc).__name__}: {exc})") from None
        raise TeacherError(f"{where}: gave up after {cfg.max_retries + 1} attempts; last failure: {last_reason}")


def _single_choice(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or len(data["choices"]) != 1:
        raise TeacherError(f"{where}: expected a response with exactly one choice")
    return data["choices"][0]


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _httpx_version() -> str | None:
    try:
        import httpx
    except ImportError:
        return None
    return httpx.__version__


__all__ = [
    "EndpointConfig",
    "OpenAITeacher",
    "TokenMap",
    "TokenMappingError",
    "backoff_delay",
    "parse_chat_choice",
    "parse_completion_choice",
    "parse_prompt_logprobs",
]
