"""A local OpenAI-compatible server for tests: vLLM-shaped responses, injected faults.

Runs an asyncio HTTP/1.1 server (keep-alive, Content-Length bodies) on 127.0.0.1 in a
background thread, or as its own process (``python -m tests.teachers.openai_server``), so a
client can be killed and restarted against it. Responses are a pure function of the request
body (prompt ids, seed, max_tokens, k): a retried or re-run request gets the same answer.

Faults are decided by (request body, attempt number), so a run is reproducible: about one
request in four first gets a 429, a 500, a stall past the client's timeout, a dropped
connection, or a 200 with a truncated JSON body; some get a second fault on the retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FAULTS = ("429", "500", "timeout", "drop", "badjson")


@dataclass
class ServerState:
    vocab_size: int = 320
    eos_id: int = 2
    fault_rate: float = 0.25  # share of requests whose first attempt fails
    stall_s: float = 2.0  # how long a "timeout" fault stalls before closing
    latency_s: float = 0.0  # added to every answer (a stand-in for a GPU server's decode time)
    # request JSON -> response JSON; default: vLLM-shaped completions from ``completion_payload``
    responder: Any = None
    api_key: str | None = None  # when set, requests without "Authorization: Bearer <key>" get a 401
    unready_until: float = 0.0  # time.monotonic() before which every request gets a 503 (a server still loading)
    seen_paths: set = field(default_factory=set)
    attempts: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    ok: dict[str, int] = field(default_factory=dict)  # successful responses per request digest
    connections: int = 0
    max_connections: int = 0  # open connections, not counting those stalled by a "timeout" fault
    stalled: int = 0
    writers: set = field(default_factory=set)
    in_flight: int = 0
    max_in_flight: int = 0
    total: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _fault_for(digest: str, attempt: int, rate: float) -> str | None:
    h = int(digest[:12], 16)
    u = (h % 10_000) / 10_000
    if attempt == 0 and u < rate:
        return FAULTS[h % len(FAULTS)]
    if attempt == 1 and u < rate / 4:  # a few fail twice
        return FAULTS[(h // 7) % len(FAULTS)]
    return None


def completion_payload(request: dict[str, Any], vocab_size: int, eos_id: int) -> dict[str, Any]:
    """A vLLM-shaped /v1/completions body with return_tokens_as_token_ids and return_token_ids."""
    prompt = [int(i) for i in request["prompt"]]
    seed = int(request.get("seed") or 0)
    max_tokens = int(request.get("max_tokens") or 16)
    k = request.get("logprobs")
    rng = np.random.default_rng([seed, *prompt[:64], len(prompt)])
    length = int(rng.integers(1, max_tokens + 1))
    ids = [int(x) for x in rng.integers(3, vocab_size, size=length)]
    finish = "length"
    if length < max_tokens:
        ids[-1] = eos_id
        finish = "stop"
    choice: dict[str, Any] = {"index": 0, "text": "".join(f"<{i}>" for i in ids), "finish_reason": finish,
                              "stop_reason": None, "token_ids": ids}
    if k:
        # Distinct candidates per position (stride coprime with the vocab), sorted log-probs;
        # the sampled token joins as a (k+1)-th entry when it is not among them, as vLLM does.
        starts = rng.integers(0, vocab_size, size=length)
        cands = (starts[:, None] + 7 * np.arange(k)[None, :]) % vocab_size
        lps = -np.sort(np.abs(rng.normal(3, 2, size=(length, k))) + 0.01, axis=1)
        tokens = [f"token_id:{i}" for i in ids]
        token_logprobs, top = [], []
        for t, sampled in enumerate(ids):
            step = {f"token_id:{sampled}": float(lps[t, -1] - 0.5)}
            step.update({f"token_id:{c}": float(lp) for c, lp in zip(cands[t].tolist(), lps[t].tolist())})
            token_logprobs.append(step[f"token_id:{sampled}"])
            top.append(step)
        choice["logprobs"] = {"text_offset": list(range(length)), "token_logprobs": token_logprobs,
                              "tokens": tokens, "top_logprobs": top}
    n = request.get("prompt_logprobs")
    if n:
        # vLLM's score extension: entry t is the distribution that predicted prompt token t (entry 0
        # None); JSON keys are token ids; the given token joins the top n when it is not among them.
        entries: list[Any] = [None]
        for t in range(1, len(prompt)):
            given = {str(prompt[t]): {"logprob": -1.0 - (prompt[t] % 5), "rank": 1 + prompt[t] % 7, "decoded_token": None}}
            top = {str((prompt[t] + 11 * (j + 1)) % vocab_size): {"logprob": -0.5 - 0.25 * j, "rank": j + 1, "decoded_token": None}
                   for j in range(int(n))}
            entries.append({**top, **given})
        choice["prompt_logprobs"] = entries
    return {"id": "cmpl-test", "object": "text_completion", "created": 0, "model": request.get("model", "m"),
            "choices": [choice], "usage": {"prompt_tokens": len(prompt), "completion_tokens": length,
                                           "total_tokens": len(prompt) + length}}


def stats(state: ServerState) -> dict[str, Any]:
    with state.lock:
        return {"total": state.total, "faults": dict(state.faults), "max_connections": state.max_connections,
                "max_in_flight": state.max_in_flight, "distinct_ok": len(state.ok),
                "ok_total": sum(state.ok.values())}


async def _handle(state: ServerState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with state.lock:
        state.connections += 1
        state.max_connections = max(state.max_connections, state.connections - state.stalled)
        state.writers.add(writer)
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            headers = {}
            while True:
                h = await reader.readline()
                if h in (b"\r\n", b"\n", b""):
                    break
                name, _, value = h.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if line.startswith(b"GET /stats"):
                payload = json.dumps(stats(state)).encode()
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
                await writer.drain()
                continue
            if time.monotonic() < state.unready_until:
                payload = b'{"error": {"message": "loading"}}'
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\n" + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
                await writer.drain()
                continue
            digest = _digest(body)
            if state.api_key is not None and headers.get("authorization") != f"Bearer {state.api_key}":
                payload = b'{"error": {"message": "invalid api key"}}'
                writer.write(b"HTTP/1.1 401 Unauthorized\r\n" + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
                await writer.drain()
                continue
            if line.startswith(b"GET /v1/models"):  # what a client's readiness wait polls
                with state.lock:
                    state.seen_paths.add("/v1/models")
                payload = json.dumps({"object": "list", "data": [{"id": "tiny", "object": "model"}]}).encode()
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
                await writer.drain()
                continue
            with state.lock:
                state.seen_paths.add(line.split()[1].decode())
                attempt = state.attempts.get(digest, 0)
                state.attempts[digest] = attempt + 1
                state.total += 1
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            try:
                fault = _fault_for(digest, attempt, state.fault_rate)
                if fault is not None:
                    with state.lock:
                        state.faults[fault] = state.faults.get(fault, 0) + 1
                if fault == "drop":
                    writer.close()
                    return
                if fault == "timeout":
                    # The client gives up on this connection; it no longer counts as one of its own.
                    with state.lock:
                        state.stalled += 1
                    try:
                        await asyncio.sleep(state.stall_s)
                    finally:
                        with state.lock:
                            state.stalled -= 1
                    writer.close()
                    return
                if fault in ("429", "500"):
                    payload = b'{"error": {"message": "injected"}}'
                    reason = "Too Many Requests" if fault == "429" else "Internal Server Error"
                    extra = "Retry-After: 0\r\n" if fault == "429" else ""
                    writer.write(f"HTTP/1.1 {fault} {reason}\r\nContent-Type: application/json\r\n{extra}"
                                 f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
                    await writer.drain()
                    continue
                request = json.loads(body)
                if state.latency_s:
                    await asyncio.sleep(state.latency_s)
                answer = (state.responder(request) if state.responder is not None
                          else completion_payload(request, state.vocab_size, state.eos_id))
                payload = json.dumps(answer).encode()
                if fault == "badjson":
                    payload = payload[: len(payload) // 2]
                else:
                    with state.lock:
                        state.ok[digest] = state.ok.get(digest, 0) + 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
                await writer.drain()
            finally:
                with state.lock:
                    state.in_flight -= 1
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
        return
    finally:
        with state.lock:
            state.connections -= 1
            state.writers.discard(writer)
        writer.close()


class FaultyServer:
    """``with FaultyServer() as server: server.base_url`` -> http://127.0.0.1:PORT/v1."""

    def __init__(self, **state_kwargs: Any) -> None:
        self.state = ServerState(**state_kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server = None
        self.port = 0

    def __enter__(self) -> "FaultyServer":
        self._thread.start()

        async def start():
            return await asyncio.start_server(lambda r, w: _handle(self.state, r, w), "127.0.0.1", 0, backlog=512)

        self._server = asyncio.run_coroutine_threadsafe(start(), self._loop).result()
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __exit__(self, *exc: Any) -> None:
        async def stop():
            self._server.close()
            for writer in list(self.state.writers):
                writer.close()
            await asyncio.sleep(0.05)
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()
            await asyncio.sleep(0.05)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


if __name__ == "__main__":  # python -m tests.teachers.openai_server [fault_rate] [stall_s] [latency_s]
    rate = float(sys.argv[1]) if len(sys.argv) > 1 else 0.25
    stall = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
    latency = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    with FaultyServer(fault_rate=rate, stall_s=stall, latency_s=latency) as srv:
        print(srv.base_url, flush=True)
        threading.Event().wait()
