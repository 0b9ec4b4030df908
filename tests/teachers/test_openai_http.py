"""OpenAI-compatible HTTP teacher against a local server that injects faults (no vllm needed).

The server (tests/teachers/openai_server.py) answers like `vllm serve` and, on about a quarter
of first attempts, returns 429 or 500, stalls past the client timeout, drops the connection, or
sends truncated JSON. The end-to-end tests go through `distill generate --backend openai`.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from distill.config import ConfigError
from distill.teachers.base import GenerationRequest, SamplingParams, TeacherError
from distill.teachers.openai_http import (
    EndpointConfig,
    OpenAITeacher,
    TokenMap,
    TokenMappingError,
    backoff_delay,
)
from tests.teachers.openai_server import FaultyServer, completion_payload

REPO = Path(__file__).resolve().parents[2]
NUM_PROMPTS = 1000


def _teacher(base_url: str, tokenizer=None, **kw) -> OpenAITeacher:
    cfg = dict(base_url=base_url, served_model="m", concurrency=64, request_timeout_s=1.0, backoff_base_s=0.05,
               backoff_max_s=0.5)
    cfg.update(kw)
    return OpenAITeacher("t", "m", tokenizer, EndpointConfig(**cfg), max_context=4096)


def _recipe(tmp_path: Path, base_url: str, tokenizer_dir: Path, **endpoint) -> Path:
    block = {"base_url": base_url, "server": "vllm", "concurrency": 64, "request_timeout_s": 1.0,
             "backoff_base_s": 0.05, "backoff_max_s": 0.5}
    block.update(endpoint)
    path = tmp_path / "endpoint.yaml"
    path.write_text(yaml.safe_dump({"model": "tiny-served", "backend": "openai", "tokenizer": str(tokenizer_dir),
                                    "max_context": 4096, "endpoint": block}))
    return path


def _seeds(tmp_path: Path, n: int) -> Path:
    words = ["sea", "wind", "night", "river", "fox", "soup", "prime", "poem", "sky", "French"]
    path = tmp_path / f"seeds{n}.jsonl"
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"Question {i}: tell me about the {words[i % 10]} and {words[(i // 10) % 10]}."}) + "\n")
    return path


def _generate_cmd(recipe: Path, seeds: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "distill", "generate", "--teacher", str(recipe), "--prompts", str(seeds),
            "--out", str(out), "--top-k", "20", "--max-new-tokens", "16", "--rows-per-shard", "200", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _rows(out: Path) -> dict[str, tuple]:
    from distill.corpus import open_corpus

    corpus = open_corpus(out)
    rows = {}
    for row in corpus.iter_rows():
        assert row.id not in rows, f"row {row.id} twice"
        rows[row.id] = (row.prompt_ids.tolist(), row.response_ids.tolist(), row.topk_ids.tolist(),
                        np.round(row.topk_logprobs, 4).tolist(), row.finish_reason)
    assert len(rows) == corpus.num_rows
    return rows


# ------------------------------------------------------------------------------------------
# end to end through `distill generate --backend openai`


@pytest.mark.slow
def test_1000_requests_at_concurrency_64_with_faults_then_kill_and_resume(tmp_path, tiny_tokenizer_dir):
    seeds = _seeds(tmp_path, NUM_PROMPTS)
    with FaultyServer(stall_s=1.3) as server:
        recipe = _recipe(tmp_path, server.base_url, tiny_tokenizer_dir)
        out = tmp_path / "corpus"
        start = time.perf_counter()
        proc = subprocess.run(_generate_cmd(recipe, seeds, out, "--backend", "openai"), env=_env(), cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        elapsed = time.perf_counter() - start
        assert proc.returncode == 0, proc.stderr[-3000:]
        stats = dict(server.state.__dict__)
        faults = dict(server.state.faults)

        # Every injected fault kind happened, and no more than 64 connections were ever open.
        assert set(faults) == {"429", "500", "timeout", "drop", "badjson"}, faults
        assert sum(faults.values()) > 150
        assert server.state.max_connections <= 64
        assert server.state.max_connections >= 16  # it really ran concurrently
        # The progress bar ends at 1,000 rows; the summary is printed.
        assert f"{NUM_PROMPTS}/{NUM_PROMPTS}" in proc.stderr
        assert "response tokens" in proc.stderr

        rows = _rows(out)
        assert len(rows) == NUM_PROMPTS
        # Rows are exactly the server's answers (no lost, duplicated or mixed-up response).
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["top_k"] == 20 and manifest["teacher"]["backend"] == "openai"
        assert manifest["teacher"]["black_box"] is False
        for rid, (prompt_ids, response_ids, topk_ids, topk_lps, finish) in list(rows.items())[:50]:
            assert response_ids and finish in ("stop", "length")
            assert all(a >= b for a, b in zip(topk_lps[0], topk_lps[0][1:]))

        # Kill a second run halfway (after 2 of its 5 shards), then run the same command again.
        resumed = tmp_path / "resumed"
        proc2 = subprocess.Popen(_generate_cmd(recipe, seeds, resumed), env=_env(), cwd=tmp_path,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 240
        while time.time() < deadline:
            done = list((resumed / "data").glob("*.parquet")) if (resumed / "data").is_dir() else []
            if len(done) >= 2 or proc2.poll() is not None:
                break
            time.sleep(0.05)
        assert proc2.poll() is None, "the run finished before it could be killed"
        proc2.send_signal(signal.SIGKILL)
        proc2.wait()
        assert not (resumed / "manifest.json").exists()
        proc3 = subprocess.run(_generate_cmd(recipe, seeds, resumed), env=_env(), cwd=tmp_path,
                               capture_output=True, text=True, timeout=300)
        assert proc3.returncode == 0, proc3.stderr[-3000:]
        assert "resuming" in proc3.stderr
    assert _rows(resumed) == rows
    print(f"\n1000 requests, concurrency 64, {sum(faults.values())} injected faults {faults}: {elapsed:.1f} s; "
          f"max open connections {stats['max_connections']}")


def test_black_box_endpoint_text_only(tmp_path, tiny_tokenizer_dir, monkeypatch, capfd):
    """No log-probs: the corpus is marked black-box (top_k 0) and the key never lands on disk."""
    from transformers import AutoTokenizer

    from distill.corpus import open_corpus
    from distill.generate import GenerateConfig, run

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    key = "sk-test-" + "x" * 24

    def responder(request):
        assert "logprobs" not in request and "top_logprobs" not in request
        text = f"The answer to {request['messages'][-1]['content'][:12]} is 42."
        return {"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}

    with FaultyServer(responder=responder, api_key=key, fault_rate=0.3, stall_s=1.3) as server:
        recipe = _recipe(tmp_path, server.base_url, tiny_tokenizer_dir, server="openai", api="chat", logprobs=False,
                         api_key_env="DISTILL_TEST_KEY")
        out = tmp_path / "bb"
        monkeypatch.setenv("DISTILL_TEST_KEY", key)
        run(GenerateConfig(teacher=str(recipe), prompts=str(_seeds(tmp_path, 20)), out=str(out), max_new_tokens=16))
        assert server.state.seen_paths == {"/v1/models", "/v1/chat/completions"}  # the readiness wait, then the work
        assert sum(server.state.faults.values()) > 0
    monkeypatch.delenv("DISTILL_TEST_KEY")
    captured = capfd.readouterr()
    assert key not in captured.err and key not in captured.out
    # Without the variable set the teacher refuses to start, naming the variable (never a key).
    from distill.teachers import load_teacher

    with pytest.raises(ConfigError, match=r"\$DISTILL_TEST_KEY, which is not set"):
        load_teacher(str(recipe))
    corpus = open_corpus(out)
    assert corpus.black_box and corpus.top_k == 0 and corpus.num_rows == 20
    row = next(corpus.iter_rows())
    assert row.topk_ids is None and row.response_text.startswith("The answer to")
    assert row.response_ids.tolist() == tok(row.response_text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    for path in out.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


# ------------------------------------------------------------------------------------------
# the client in-process


def test_bounded_memory_backpressure():
    """A slow consumer holds the client back: at most concurrency results queued plus
    concurrency requests in flight, whatever the number of requests."""
    with FaultyServer(fault_rate=0.0) as server:
        teacher = _teacher(server.base_url, concurrency=8)
        requests = [GenerationRequest(f"r{i}", (1, 2, 3 + i % 300, 3 + i // 300), seed=i) for i in range(400)]
        stream = teacher.generate(requests, SamplingParams(max_new_tokens=8, top_k_logprobs=5))
        taken = [next(stream) for _ in range(20)]
        time.sleep(1.0)
        answered = server.state.total
        assert answered <= 20 + 8 + 8 + 1, answered
        rest = list(stream)
    assert len(taken) + len(rest) == 400
    assert len({o.key for o in taken + rest}) == 400


def test_closing_early_cancels_in_flight_requests():
    with FaultyServer(fault_rate=0.0) as server:
        teacher = _teacher(server.base_url, concurrency=4)
        requests = [GenerationRequest(f"r{i}", (1, 2, 3 + i), seed=i) for i in range(200)]
        stream = teacher.generate(requests, SamplingParams(max_new_tokens=4, top_k_logprobs=3))
        next(stream)
        stream.close()
        total = server.state.total
        time.sleep(0.3)
        assert server.state.total == total < 20


def test_response_matches_server_payload_exactly():
    with FaultyServer(fault_rate=0.0) as server:
        teacher = _teacher(server.base_url)
        request = GenerationRequest("only", (5, 6, 7), seed=123)
        (out,) = list(teacher.generate([request], SamplingParams(max_new_tokens=12, top_k_logprobs=6)))
    body = {"prompt": [5, 6, 7], "seed": 123, "max_tokens": 12, "logprobs": 6}
    choice = completion_payload(body, 320, 2)["choices"][0]
    assert out.response_ids.tolist() == choice["token_ids"]
    assert out.finish_reason == choice["finish_reason"]
    for t, step in enumerate(choice["logprobs"]["top_logprobs"]):
        best = sorted(((int(k.split(":")[1]), v) for k, v in step.items()), key=lambda kv: -kv[1])
        # k+1 entries when the sampled token is outside the top k: the extra one is dropped
        expected = [kv for kv in best if kv[0] != choice["token_ids"][t] or len(step) == 6][:6]
        assert out.topk_ids[t].tolist() == [i for i, _ in expected]
        assert out.sampled_logprobs[t] == pytest.approx(choice["logprobs"]["token_logprobs"][t], abs=1e-6)


def test_non_retryable_error_and_exhausted_retries():
    with FaultyServer(fault_rate=1.0, stall_s=0.3) as server:
        # fault_rate 1: every first attempt fails; with no retries allowed the run stops, naming the request.
        teacher = _teacher(server.base_url, max_retries=0, request_timeout_s=0.2)
        with pytest.raises(TeacherError, match=r"request r0: gave up after 1 attempts"):
            list(teacher.generate([GenerationRequest("r0", (1, 2), seed=0)], SamplingParams(max_new_tokens=4, top_k_logprobs=2)))
    with FaultyServer(fault_rate=0.0, api_key="right") as server:
        os.environ["DISTILL_TEST_WRONG_KEY"] = "wrong-secret"
        try:
            teacher = _teacher(server.base_url, api_key_env="DISTILL_TEST_WRONG_KEY")
            with pytest.raises(TeacherError, match="HTTP 401") as info:
                list(teacher.generate([GenerationRequest("r1", (1, 2), seed=0)], SamplingParams(max_new_tokens=4, top_k_logprobs=2)))
            assert "wrong-secret" not in str(info.value)
            assert teacher.stats["attempts"] == 1  # a 401 is not retried
        finally:
            del os.environ["DISTILL_TEST_WRONG_KEY"]


def test_spec_servers_cap_top_logprobs_at_20():
    teacher = _teacher("http://127.0.0.1:9/v1", server="openai", api="chat")
    with pytest.raises(ConfigError, match="at most 20"):
        teacher.generate([GenerationRequest("a", (1,), seed=0)], SamplingParams(top_k_logprobs=21))
    # A vLLM server is bounded by its own --max-logprobs instead.
    assert _teacher("http://127.0.0.1:9/v1")._top_k(64) == 64


def test_backoff_is_exponential_with_full_jitter():
    rng = random.Random(0)
    for attempt in range(6):
        cap = min(8.0, 0.5 * 2 ** attempt)
        delays = [backoff_delay(attempt, 0.5, 8.0, rng) for _ in range(300)]
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > 0.8 * cap and min(delays) < 0.2 * cap  # spread over the whole range
    assert backoff_delay(0, 0.5, 8.0, rng, retry_after=3.0) >= 3.0


def test_token_strings_map_to_ids_or_are_refused(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tmap = TokenMap(tok)
    assert tmap.to_id("token_id:17") == 17
    the_id = tok.convert_tokens_to_ids("The")
    assert tmap.to_id("The") == the_id
    assert tmap.to_id("The", list(b"The")) == the_id
    # A lone byte of a multi-byte character decodes to U+FFFD, as do dozens of others: refused.
    partial = tok.convert_tokens_to_ids(tok.convert_ids_to_tokens(tok("é")["input_ids"])[0])
    text = tok.decode([partial])
    assert "\ufffd" in text
    with pytest.raises(TokenMappingError, match="refusing to guess"):
        tmap.to_id(text, where="request r")
    with pytest.raises(TokenMappingError):
        tmap.to_id(text, list(text.encode("utf-8")))  # vLLM's chat 'bytes' of a replacement char
    with pytest.raises(TokenMappingError):
        tmap.to_id("no-such-token-in-vocab")
    # The raw bytes (what OpenAI's 'bytes' field carries) identify such a token exactly.
    from distill.teachers.openai_http import _byte_level_table

    table = _byte_level_table()
    raw = bytes(table[ch] for ch in tok.convert_ids_to_tokens(partial))
    assert tmap.to_id("?", list(raw)) == partial


def test_recipe_overrides_and_errors(tmp_path, tiny_tokenizer_dir):
    from distill.teachers import load_teacher

    recipe = _recipe(tmp_path, "http://127.0.0.1:9/v1", tiny_tokenizer_dir)
    teacher = load_teacher(str(recipe), batch_size=16)
    assert teacher.backend == "openai" and teacher.endpoint.concurrency == 16
    assert "127.0.0.1" not in json.dumps(teacher.fingerprint())  # where it is served is not its identity
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": "m", "backend": "openai", "tokenizer": str(tiny_tokenizer_dir),
                                   "endpoint": {"base_url": "http://x/v1", "concurency": 3}}))
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown endpoint key\(s\) concurency"):
        load_teacher(str(bad))
    nourl = tmp_path / "nourl.yaml"
    nourl.write_text(yaml.safe_dump({"model": "m", "backend": "openai", "tokenizer": str(tiny_tokenizer_dir)}))
    with pytest.raises(ConfigError, match="endpoint.base_url"):
        load_teacher(str(nourl))


def test_score_mode_uses_vllm_prompt_logprobs(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    from distill.teachers.base import ScoreRequest

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    k = 3

    def responder(request):
        assert request["prompt_logprobs"] == k and request["max_tokens"] == 1
        ids = request["prompt"]
        entries = [None] + [{str(t): {"logprob": -4.0, "rank": 40, "decoded_token": None},
                             **{str(200 + j): {"logprob": -0.5 * (j + 1), "rank": j + 1, "decoded_token": None}
                                for j in range(k)}} for t in ids[1:]]
        return {"id": "c", "object": "text_completion", "created": 0, "model": "m", "choices": [
            {"index": 0, "text": "", "finish_reason": "length", "token_ids": [5], "prompt_logprobs": entries}]}

    with FaultyServer(responder=responder, fault_rate=0.5, stall_s=0.6) as server:
        teacher = _teacher(server.base_url, tokenizer=tok, request_timeout_s=0.4)
        response = tuple(tok("The answer is 42.", add_special_tokens=False)["input_ids"])
        (out,) = list(teacher.score([ScoreRequest("s", (1, 2, 3), response)], top_k=k))
    assert out.response_ids.tolist() == list(response) and out.text == "The answer is 42."
    assert out.topk_ids.tolist() == [[200, 201, 202]] * len(response)
    np.testing.assert_allclose(out.sampled_logprobs, -4.0)
    spec = _teacher("http://127.0.0.1:9/v1", server="openai")
    with pytest.raises(ConfigError, match="prompt_logprobs"):
        list(spec.score([ScoreRequest("s", (1,), (2,))], top_k=2))


def test_every_backend_writes_the_same_corpus_schema(tmp_path, tiny_tokenizer_dir, tiny_teacher_dir):
    """HF in-process, an endpoint with log-probs, and a black-box endpoint: one schema."""
    import pyarrow.parquet as pq

    from distill.generate import GenerateConfig, run

    seeds = _seeds(tmp_path, 6)

    def text_only(request):
        return {"id": "c", "object": "text_completion", "created": 0, "model": "m", "choices": [
            {"index": 0, "text": "Bonjour.", "finish_reason": "stop"}]}

    common = dict(prompts=str(seeds), top_k=5, max_new_tokens=6, progress=False)
    run(GenerateConfig(teacher=str(tiny_teacher_dir), out=str(tmp_path / "hf"), **common))
    with FaultyServer(fault_rate=0.0) as server:
        recipe = _recipe(tmp_path, server.base_url, tiny_tokenizer_dir)
        run(GenerateConfig(teacher=str(recipe), out=str(tmp_path / "http"), **common))
    with FaultyServer(fault_rate=0.0, responder=text_only) as server:
        (tmp_path / "bb-recipe").mkdir()
        bb = _recipe(tmp_path / "bb-recipe", server.base_url, tiny_tokenizer_dir, server="openai", logprobs=False)
        run(GenerateConfig(teacher=str(bb), out=str(tmp_path / "bb"), **common))
    schemas = {name: pq.read_schema(next((tmp_path / name / "data").glob("*.parquet"))).remove_metadata()
               for name in ("hf", "http", "bb")}
    assert schemas["hf"] == schemas["http"] == schemas["bb"]
    manifests = {name: json.loads((tmp_path / name / "manifest.json").read_text()) for name in schemas}
    assert set(manifests["hf"]) == set(manifests["http"]) == set(manifests["bb"])
    assert [manifests[n]["top_k"] for n in ("hf", "http", "bb")] == [5, 5, 0]


# ------------------------------------------------------------------------------------------
# readiness: a worker started beside a teacher that is still loading waits for it


def test_a_generate_worker_waits_for_a_loading_teacher_then_runs(tmp_path, tiny_tokenizer_dir):
    seeds = _seeds(tmp_path, 6)
    with FaultyServer(fault_rate=0.0) as server:
        server.state.unready_until = time.monotonic() + 12.0  # 503 for 12 s, as a server loading weights
        recipe = _recipe(tmp_path, server.base_url, tiny_tokenizer_dir)
        out = tmp_path / "corpus"
        proc = subprocess.run(_generate_cmd(recipe, seeds, out), env=_env(), cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"waiting for the teacher endpoint {server.base_url}/models (HTTP 503): 0 s of at most 600 s" in proc.stderr
        assert re.search(r"teacher endpoint \S+/models ready after [1-9][0-9]* s", proc.stderr), proc.stderr[-2000:]
        assert len(_rows(out)) == 6


def test_a_teacher_that_never_comes_up_fails_naming_the_url_and_the_setting(tmp_path, tiny_tokenizer_dir):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}/v1"
    recipe = _recipe(tmp_path, base_url, tiny_tokenizer_dir, ready_timeout_s=2)
    proc = subprocess.run(_generate_cmd(recipe, _seeds(tmp_path, 2), tmp_path / "corpus"), env=_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4, proc.stderr[-2000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert line.startswith(f"error: teacher endpoint {base_url}/models not ready after 2 s (last: ConnectError)")
    assert "endpoint.ready_timeout_s" in line
    assert not (tmp_path / "corpus" / "data").exists() or not any((tmp_path / "corpus" / "data").iterdir())


def test_shard_auto_takes_the_index_from_the_indexed_job():
    from distill.generate import parse_shard

    assert parse_shard("auto", {"JOB_COMPLETION_INDEX": "2", "DISTILL_SHARD_COUNT": "4"}) == (2, 4)
    assert parse_shard("auto/3", {"JOB_COMPLETION_INDEX": "0"}) == (0, 3)
    with pytest.raises(ValueError, match=r"\$JOB_COMPLETION_INDEX is not set"):
        parse_shard("auto", {"DISTILL_SHARD_COUNT": "4"})
    with pytest.raises(ValueError, match=r"give auto/N or set \$DISTILL_SHARD_COUNT"):
        parse_shard("auto", {"JOB_COMPLETION_INDEX": "1"})
    with pytest.raises(ValueError, match="5/4: need 0 <= i < N"):
        parse_shard("auto", {"JOB_COMPLETION_INDEX": "5", "DISTILL_SHARD_COUNT": "4"})
