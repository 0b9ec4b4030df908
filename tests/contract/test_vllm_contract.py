"""Contract tests: vLLM's own output and OpenAI-server types pushed through our conversions.

They build real ``vllm.outputs.RequestOutput`` / ``CompletionOutput``, ``vllm.logprobs.Logprob``
and ``FlatLogprobs`` (with the helper the engine itself uses to fill them), real
``vllm.SamplingParams`` / ``EngineArgs`` from our keyword arguments, and HTTP responses made
by vLLM's serving code and protocol models. Run with ``make contract`` (a venv with vllm on CPU
torch); skipped where vllm does not import. No engine runs: that needs a GPU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

vllm = pytest.importorskip("vllm")

from vllm.logprobs import (  # noqa: E402
    FlatLogprobs,
    Logprob,
    append_logprobs_for_next_position,
    create_prompt_logprobs,
    create_sample_logprobs,
)
from vllm.outputs import CompletionOutput, RequestOutput  # noqa: E402

from distill.teachers.base import GenerationRequest, SamplingParams, ScoreRequest  # noqa: E402
from distill.teachers.logprobs import finish_reason  # noqa: E402
from distill.teachers.vllm import (  # noqa: E402
    VLLMEngineConfig,
    VLLMTeacher,
    _Chunk,
    completion_to_output,
    prompt_logprobs_to_output,
    run_chunk,
)

pytestmark = pytest.mark.contract

TEACHER_VOCAB = 152064  # Qwen2.5 >= 7B embedding rows
STUDENT_VOCAB = 151936  # Qwen2.5 <= 3B: ids in [151936, 152064) are beyond the student's


def _engine_step(rng: np.random.Generator, k: int, sampled_outside: bool, high_ids: bool):
    """One position as the engine produces it: the sampled token first, then the top k."""
    logits = rng.normal(size=4096).astype(np.float64)
    ids = rng.choice(TEACHER_VOCAB - 1, size=4096, replace=False)
    if high_ids:
        ids[np.argmax(logits)] = STUDENT_VOCAB + 7  # the top token lies beyond the student vocab
    logprobs = logits - np.log(np.exp(logits).sum())
    order = np.argsort(-logprobs)
    top = order[:k]
    pick = order[k + 3] if sampled_outside else order[1]
    sampled_rank = int(np.where(order == pick)[0][0]) + 1
    token_ids = [int(ids[pick])] + [int(ids[i]) for i in top]
    lps = [float(logprobs[pick])] + [float(logprobs[i]) for i in top]
    expected = ([int(ids[i]) for i in top], [float(logprobs[i]) for i in top])
    return token_ids, lps, sampled_rank, expected


def _build(flat: bool, k: int, steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    container = create_sample_logprobs(flat)
    response, exp_ids, exp_lps, exp_sampled = [], [], [], []
    for t in range(steps):
        token_ids, lps, rank, (top_ids, top_lps) = _engine_step(rng, k, sampled_outside=t % 2 == 0, high_ids=t == 1)
        append_logprobs_for_next_position(container, token_ids, lps, [None] * len(token_ids), rank, k)
        response.append(token_ids[0])
        exp_ids.append(top_ids)
        exp_lps.append(top_lps)
        exp_sampled.append(lps[0])
    return container, response, np.array(exp_ids), np.array(exp_lps), np.array(exp_sampled)


@pytest.mark.parametrize("flat", [False, True], ids=["dict", "flat"])
def test_sample_logprobs_both_forms_k_and_k_plus_1(flat):
    k = 5
    container, response, exp_ids, exp_lps, exp_sampled = _build(flat, k, steps=6)
    assert isinstance(container, FlatLogprobs) == flat
    # The engine's own containers: k+1 entries where the sampled token is outside the top k
    # (dict form) and always k+1 in the flat form (a duplicate when it is inside).
    sizes = [len(container[t]) for t in range(len(response))]
    assert sizes[0] == k + 1 and sizes[1] == k
    if flat:
        from distill.teachers.vllm import _flat_positions

        assert container.end_indices[1] - container.start_indices[1] == k + 1
        # The engine's flat layout takes the vectorized path (not the per-entry fallback).
        assert _flat_positions(container, response, k) is not None
    completion = CompletionOutput(index=0, text="", token_ids=response, cumulative_logprob=None,
                                  logprobs=container, finish_reason="length")
    request = RequestOutput(request_id="0", prompt=None, prompt_token_ids=[1, 2, 3], prompt_logprobs=None,
                            outputs=[completion], finished=True)
    out = completion_to_output("row", [1, 2, 3], request, k)
    assert out.finish_reason == "length"
    np.testing.assert_array_equal(out.response_ids, response)
    np.testing.assert_array_equal(out.topk_ids, exp_ids)
    np.testing.assert_allclose(out.topk_logprobs, exp_lps, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out.sampled_logprobs, exp_sampled, rtol=0, atol=1e-6)
    assert (np.diff(out.topk_logprobs, axis=1) <= 0).all()
    assert out.topk_ids.dtype == np.int32 and out.topk_logprobs.dtype == np.float32
    # An id beyond the student's vocabulary is kept as the teacher produced it (the trainer
    # folds it into the tail bucket); nothing here clips or drops it.
    assert out.topk_ids[1, 0] == STUDENT_VOCAB + 7


def test_prompt_logprobs_first_entry_none_score_mode():
    k = 4
    for flat in (False, True):
        rng = np.random.default_rng(1)
        prompt = [11, 12, 13]
        container = create_prompt_logprobs(flat)  # the engine starts it with None
        assert len(container) == 1
        full, exp_ids, chosen = [prompt[0]], [], []
        for _ in range(len(prompt) - 1 + 4):
            token_ids, lps, rank, (top_ids, _) = _engine_step(rng, k, sampled_outside=False, high_ids=False)
            append_logprobs_for_next_position(container, token_ids, lps, [None] * len(token_ids), rank, k)
            full.append(token_ids[0])
            exp_ids.append(top_ids)
            chosen.append(lps[0])
        full[1:len(prompt)] = full[1:len(prompt)]
        prompt_ids, response = full[:len(prompt)], full[len(prompt):]
        if not flat:
            assert container[0] is None
        request = RequestOutput(request_id="0", prompt=None, prompt_token_ids=full, prompt_logprobs=container,
                                outputs=[CompletionOutput(0, "", [5], None, None, finish_reason="length")],
                                finished=True)
        out = prompt_logprobs_to_output("r", len(prompt_ids), response, request, k)
        np.testing.assert_array_equal(out.prompt_ids, prompt_ids)
        np.testing.assert_array_equal(out.topk_ids, np.array(exp_ids[len(prompt) - 1:]))
        np.testing.assert_allclose(out.sampled_logprobs, chosen[len(prompt) - 1:], atol=1e-6)


def test_every_finish_reason():
    from vllm.v1.engine import FINISH_REASON_STRINGS, FinishReason

    assert set(FINISH_REASON_STRINGS) == {"stop", "length", "abort", "error", "repetition"}, (
        "vLLM added a finish reason: map it in distill.teachers.logprobs.finish_reason")
    expected = {"stop": ("stop", None), "length": ("length", None), "abort": (None, "abort"),
                "error": (None, "error"), "repetition": ("length", "repetition")}
    for reason in FinishReason:
        assert finish_reason(str(reason)) == expected[str(reason)]
    assert finish_reason(None) == (None, None)
    for reason in FINISH_REASON_STRINGS:
        completion = CompletionOutput(0, "", [7, 8], None, None, finish_reason=reason)
        request = RequestOutput("0", None, [1], None, [completion], True)
        out = completion_to_output("r", [1], request, 0)
        assert (out is None) == (reason in ("abort", "error"))
        if out is not None:
            assert out.finish_reason == expected[reason][0]
            assert out.topk_ids is None


def test_our_sampling_params_and_engine_args_are_vllms():
    """The kwargs we hand vllm.SamplingParams / vllm.LLM are accepted by the real classes."""
    from vllm.engine.arg_utils import EngineArgs

    made = []

    class Engine:
        def generate(self, prompts, params, use_tqdm):
            made.extend(params)
            return [RequestOutput(str(i), None, p["prompt_token_ids"], None,
                                  [CompletionOutput(0, "", [4, 5], None, create_sample_logprobs(True), finish_reason="stop")],
                                  True) for i, p in enumerate(prompts)]

    teacher = VLLMTeacher("t", "m", tokenizer=None, tokenizer_source="m",
                          config=VLLMEngineConfig(max_model_len=64, max_logprobs=20), max_context=64,
                          engine_factory=lambda kw: Engine())
    with pytest.raises(Exception):  # empty logprobs for k=3: conversion refuses, after params were built
        list(teacher.generate([GenerationRequest("a", (1, 2), seed=7)], SamplingParams(max_new_tokens=8, top_k_logprobs=3)))
    params = made[0]
    assert isinstance(params, vllm.SamplingParams)
    assert params.logprobs == 3 and params.flat_logprobs and params.seed == 7 and params.detokenize is False
    assert params.max_tokens == 8
    stop = teacher.params_factory(max_tokens=4, stop=["###"], detokenize=True, seed=1, logprobs=2, flat_logprobs=True)
    assert stop.stop == ["###"]
    scored = teacher.params_factory(max_tokens=1, temperature=0.0, prompt_logprobs=5, flat_logprobs=True, detokenize=False)
    assert scored.prompt_logprobs == 5

    cfg = VLLMEngineConfig(tensor_parallel_size=8, pipeline_parallel_size=2, max_model_len=32768, max_logprobs=21,
                           distributed_executor_backend="ray", max_num_seqs=256)
    kwargs = cfg.llm_kwargs("Qwen/Qwen2.5-72B-Instruct", "Qwen/Qwen2.5-72B-Instruct", None, prefix_caching=False)
    # vllm.LLM passes unknown keywords on to EngineArgs; constructing one resolves the model
    # (hub access), so check the names and the literal values against the dataclass instead.
    import dataclasses
    import typing

    from vllm.config.model import LogprobsMode

    engine_fields = {f.name for f in dataclasses.fields(EngineArgs)}
    assert set(kwargs) <= engine_fields, set(kwargs) - engine_fields
    assert kwargs["logprobs_mode"] in typing.get_args(LogprobsMode)
    assert kwargs["enable_prefix_caching"] is False and kwargs["max_logprobs"] == 21
    assert kwargs["distributed_executor_backend"] == "ray" and kwargs["tensor_parallel_size"] == 8


def test_run_chunk_resubmits_aborted_requests():
    calls = []

    class Engine:
        def generate(self, prompts, params, use_tqdm):
            calls.append(len(prompts))
            outs = []
            for i, p in enumerate(prompts):
                reason = "abort" if len(calls) == 1 and i == 0 else "stop"
                outs.append(RequestOutput(str(i), None, p["prompt_token_ids"], None,
                                          [CompletionOutput(0, "", [9], None, None, finish_reason=reason)], True))
            return outs

    chunk = _Chunk([("a", [1], {"max_tokens": 2}, None), ("b", [2], {"max_tokens": 2}, None)], k=0, score=False)
    outs = run_chunk(Engine(), chunk, vllm.SamplingParams, None, max_attempts=3)
    assert calls == [2, 1] and sorted(o.key for o in outs) == ["a", "b"]


# ------------------------------------------------------------------------------------------
# OpenAI-server responses made by vLLM's own serving code and protocol models


def _serving_stub(cls):
    stub = type("Stub", (), {})()
    stub.return_tokens_as_token_ids = True
    stub._get_decoded_token = cls._get_decoded_token
    stub._get_top_logprobs = lambda *a, **kw: cls._get_top_logprobs(stub, *a, **kw)
    return stub


def _completion_response(request: dict, k: int, seed: int, finish: str = "length") -> dict:
    from vllm.entrypoints.openai.completion.protocol import CompletionResponse, CompletionResponseChoice
    from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
    from vllm.entrypoints.serve.engine.protocol import UsageInfo

    container, response, *_ = _build(False, k, steps=5, seed=seed)
    logprobs = OpenAIServingCompletion._create_completion_logprobs(
        _serving_stub(OpenAIServingCompletion), token_ids=response, top_logprobs=container,
        num_output_top_logprobs=request["logprobs"], tokenizer=None, return_as_token_id=True)
    choice = CompletionResponseChoice(index=0, text="", logprobs=logprobs, finish_reason=finish, token_ids=response)
    return json.loads(CompletionResponse(model="m", choices=[choice], usage=UsageInfo()).model_dump_json())


def test_completion_response_through_http_client_matches_offline_conversion():
    """Same engine log-probs, two paths: vLLM's HTTP serialization -> our client, and the
    offline RequestOutput -> our converter. Both must give the same top-k."""
    from tests.teachers.openai_server import FaultyServer
    from distill.teachers.openai_http import EndpointConfig, OpenAITeacher

    k = 4
    seeds = {}

    def responder(request):
        seed = int(request["seed"])
        seeds[seed] = request
        assert request["return_tokens_as_token_ids"] and request["return_token_ids"] and request["logprobs"] == k
        return _completion_response(request, k, seed)

    with FaultyServer(responder=responder, fault_rate=0.5, stall_s=2.5) as server:
        # Generous timeout: this server builds each answer with vLLM's serving code, slowly.
        endpoint = EndpointConfig(base_url=server.base_url, served_model="m", concurrency=8, request_timeout_s=2.0,
                                  backoff_base_s=0.01, backoff_max_s=0.05)
        teacher = OpenAITeacher("t", "m", tokenizer=None, endpoint=endpoint, max_context=4096)
        requests = [GenerationRequest(f"r{i}", (1, 2, i), seed=i) for i in range(24)]
        outs = {o.key: o for o in teacher.generate(requests, SamplingParams(max_new_tokens=5, top_k_logprobs=k))}
        faults = dict(server.state.faults)
    assert sorted(outs) == sorted(r.key for r in requests)
    assert sum(faults.values()) > 0, "the server injected no fault"
    for i in range(24):
        container, response, exp_ids, exp_lps, exp_sampled = _build(False, k, steps=5, seed=i)
        offline = completion_to_output("x", [1], RequestOutput("0", None, [1], None, [
            CompletionOutput(0, "", response, None, container, finish_reason="length")], True), k)
        online = outs[f"r{i}"]
        np.testing.assert_array_equal(online.response_ids, offline.response_ids)
        np.testing.assert_array_equal(online.topk_ids, offline.topk_ids)
        np.testing.assert_allclose(online.topk_logprobs, offline.topk_logprobs, atol=1e-6)
        np.testing.assert_allclose(online.sampled_logprobs, offline.sampled_logprobs, atol=1e-6)


def test_chat_response_from_vllm_serving_code():
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionResponse, ChatCompletionResponseChoice
    from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
    from vllm.entrypoints.openai.chat_completion.protocol import ChatMessage
    from vllm.entrypoints.serve.engine.protocol import UsageInfo

    from distill.teachers.openai_http import TokenMap, parse_chat_choice

    k = 4
    container, response, exp_ids, exp_lps, exp_sampled = _build(False, k, steps=6, seed=3)
    # We ask a vLLM server for k+1: its chat list is the first N of (sampled, top1, ...).
    logprobs = OpenAIServingChat._create_chat_logprobs(
        _serving_stub(OpenAIServingChat), token_ids=response, top_logprobs=container, tokenizer=None,
        num_output_top_logprobs=k + 1, return_as_token_id=True)
    choice = ChatCompletionResponseChoice(index=0, message=ChatMessage(role="assistant", content="hi"),
                                          logprobs=logprobs, finish_reason="stop", token_ids=response)
    body = json.loads(ChatCompletionResponse(model="m", choices=[choice], usage=UsageInfo()).model_dump_json())
    ids, topk_ids, topk_lps, sampled, text, finish, _ = parse_chat_choice(body["choices"][0], k, TokenMap(None), "test")
    assert ids == response and finish == "stop" and text == "hi"
    np.testing.assert_array_equal(topk_ids, exp_ids)
    np.testing.assert_allclose(topk_lps, exp_lps, atol=1e-6)
    np.testing.assert_allclose(sampled, exp_sampled, atol=1e-6)


def test_prompt_logprobs_json_from_protocol_model():
    from vllm.entrypoints.openai.completion.protocol import CompletionResponse, CompletionResponseChoice
    from vllm.entrypoints.serve.engine.protocol import UsageInfo

    from distill.teachers.openai_http import parse_prompt_logprobs

    k = 3
    rng = np.random.default_rng(5)
    entries = [None]
    full = [21]
    expected = []
    for _ in range(5):
        token_ids, lps, rank, (top_ids, _) = _engine_step(rng, k, sampled_outside=True, high_ids=False)
        entries.append({tid: Logprob(lp, rank=r, decoded_token=None)
                        for tid, lp, r in zip(token_ids, lps, [rank, *range(1, k + 1)])})
        full.append(token_ids[0])
        expected.append(top_ids)
    choice = CompletionResponseChoice(index=0, text="", finish_reason="length", prompt_logprobs=entries,
                                      prompt_token_ids=full)
    body = json.loads(CompletionResponse(model="m", choices=[choice], usage=UsageInfo()).model_dump_json())
    assert body["choices"][0]["prompt_logprobs"][0] is None
    topk_ids, _, chosen = parse_prompt_logprobs(body["choices"][0], 2, full[2:], k, "test")
    np.testing.assert_array_equal(topk_ids, np.array(expected[1:]))
    assert chosen.shape == (4,)


def test_score_requests_through_teacher_with_real_outputs():
    k = 3

    class Engine:
        def generate(self, prompts, params, use_tqdm):
            assert all(p.prompt_logprobs == k and p.max_tokens == 1 for p in params)
            outs = []
            for i, p in enumerate(prompts):
                ids = p["prompt_token_ids"]
                container = create_prompt_logprobs(True)
                for t in range(1, len(ids)):
                    top = [100 + j for j in range(k)]
                    append_logprobs_for_next_position(container, [ids[t], *top], [-5.0, -0.5, -1.0, -2.0],
                                                      [None] * (k + 1), 9, k)
                outs.append(RequestOutput(str(i), None, ids, container,
                                          [CompletionOutput(0, "", [1], None, None, finish_reason="length")], True))
            return outs

    built, made = [], []

    class Recording(Engine):
        def generate(self, prompts, params, use_tqdm):
            made.extend(params)
            return super().generate(prompts, params, use_tqdm)

    teacher = VLLMTeacher("t", "m", tokenizer=None, tokenizer_source="m", config=VLLMEngineConfig(), max_context=64,
                          engine_factory=lambda kw: built.append(kw) or Recording())
    outs = list(teacher.score([ScoreRequest("s", (1, 2), (3, 4, 5))], top_k=k))
    # one engine with prefix caching for generate and score: score requests skip reading the
    # cache (vLLM's own SamplingParams flag), so every prompt position is computed
    assert len(built) == 1 and built[0]["enable_prefix_caching"] is True
    assert isinstance(made[0], vllm.SamplingParams) and made[0].skip_reading_prefix_cache is True
    list(teacher.score([ScoreRequest("t", (1, 2), (3,))], top_k=k))
    assert len(built) == 1  # no restart
    assert outs[0].topk_ids.tolist() == [[100, 101, 102]] * 3
    np.testing.assert_allclose(outs[0].sampled_logprobs, [-5.0] * 3)


def test_engine_call_shapes_match_vllm_llm():
    """What run_chunk hands LLM.generate: TokensPrompt dicts, one SamplingParams per prompt."""
    import inspect
    import typing

    from vllm import LLM
    from vllm.inputs import TokensPrompt

    hints = typing.get_type_hints(TokensPrompt)
    assert "prompt_token_ids" in hints and "prompt_token_ids" in TokensPrompt.__required_keys__
    prompts = [{"prompt_token_ids": [1, 2, 3]}, {"prompt_token_ids": [4, 5]}]
    params = [vllm.SamplingParams(max_tokens=4, seed=i, logprobs=2, flat_logprobs=True, detokenize=False) for i in range(2)]
    inspect.signature(LLM.generate).bind(None, prompts, params, use_tqdm=False)
    init = inspect.signature(LLM.__init__)
    for name in ("tensor_parallel_size", "dtype", "gpu_memory_utilization", "seed", "revision", "tokenizer"):
        assert name in init.parameters, name


def test_structured_output_reaches_vllm_as_guided_decoding():
    """Augmentation's output contract (a JSON array of prompts): the offline engine gets a real
    StructuredOutputsParams with our schema; the HTTP bodies (completions on a vLLM server, chat)
    parse with vLLM's own request models into the same constraint."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.sampling_params import StructuredOutputsParams

    from distill.augment import prompts_schema
    from distill.teachers.openai_http import EndpointConfig, OpenAITeacher, TokenMap

    made = []

    class Engine:
        def generate(self, prompts, params, use_tqdm):
            made.extend(params)
            return [RequestOutput(str(i), None, p["prompt_token_ids"], None,
                                  [CompletionOutput(0, "", [4, 5], None, None, finish_reason="stop")], True)
                    for i, p in enumerate(prompts)]

    schema = prompts_schema(5)
    teacher = VLLMTeacher("t", "m", tokenizer=None, tokenizer_source="m", config=VLLMEngineConfig(max_model_len=64),
                          max_context=64, engine_factory=lambda kw: Engine())
    list(teacher.generate([GenerationRequest("a", (1, 2), seed=7)],
                          SamplingParams(max_new_tokens=8, top_k_logprobs=0, json_schema=schema)))
    (params,) = made
    assert isinstance(params, vllm.SamplingParams) and isinstance(params.structured_outputs, StructuredOutputsParams)
    assert params.structured_outputs.json == json.loads(schema)

    for api, request_model in (("completions", CompletionRequest), ("chat", ChatCompletionRequest)):
        http = OpenAITeacher("t", "m", tokenizer=None, endpoint=EndpointConfig(base_url="http://127.0.0.1:1/v1", api=api),
                             max_context=64)
        http.token_map = TokenMap(None)
        job = http._generation_job(GenerationRequest("a", (1, 2), seed=7, messages=({"role": "user", "content": "hi"},)),
                                   SamplingParams(max_new_tokens=8, top_k_logprobs=0, json_schema=schema), 0)
        request = request_model.model_validate(job.body)
        constraint = request.to_sampling_params(8, {}).structured_outputs if api == "completions" else None
        assert job.body["response_format"]["json_schema"]["schema"] == json.loads(schema)
        if constraint is not None:
            assert constraint.json == json.loads(schema)
