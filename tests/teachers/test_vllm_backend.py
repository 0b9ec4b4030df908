"""vLLM backend logic without vllm: chunking, over-length filtering, per-request seeds, both
log-prob forms, resubmission, data-parallel replicas. The engine is a stand-in with vLLM's
output shapes; tests/contract/ checks the same code against vLLM's real types."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import yaml

from distill.config import ConfigError
from distill.teachers.base import GenerationRequest, SamplingParams
from distill.teachers.vllm import VLLMEngineConfig, VLLMTeacher


@dataclass
class Logprob:  # vllm.logprobs.Logprob's fields
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class Flat:  # vllm.logprobs.FlatLogprobs's fields
    start_indices: list = field(default_factory=list)
    end_indices: list = field(default_factory=list)
    token_ids: list = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    ranks: list = field(default_factory=list)
    decoded_tokens: list = field(default_factory=list)

    def __len__(self):
        return len(self.start_indices)


@dataclass
class Completion:
    index: int
    text: str
    token_ids: list
    cumulative_logprob: float | None
    logprobs: object
    finish_reason: str | None = None


@dataclass
class Output:
    request_id: str
    prompt_token_ids: list
    prompt_logprobs: object
    outputs: list


def fake_params(**kwargs):
    return kwargs


class FakeEngine:
    """Answers deterministically from (prompt, seed): tokens, and k+1 candidates per position."""

    calls: list = []
    params: list = []

    def __init__(self, kwargs):
        self.kwargs = kwargs

    def generate(self, prompts, params, use_tqdm):
        FakeEngine.calls.append(len(prompts))
        FakeEngine.params.extend(params)
        outs = []
        for i, (prompt, p) in enumerate(zip(prompts, params)):
            ids = prompt["prompt_token_ids"]
            assert len(ids) < self.kwargs["max_model_len"], "an over-length prompt reached the engine"
            if p.get("prompt_logprobs"):  # score mode: the given token and k candidates at each position
                k = p["prompt_logprobs"]
                scored = [None] + [{**{2000 + j: Logprob(-0.5 - 0.1 * j, j + 1) for j in range(k)},
                                    tok: Logprob(-1.0 - tok % 3, 40)} for tok in ids[1:]]
                outs.append(Output(str(i), ids, scored, [Completion(0, "", [0], None, None, "length")]))
                continue
            rng = np.random.default_rng([p["seed"], *ids])
            n = min(p["max_tokens"], 5)
            tokens = [int(t) for t in rng.integers(0, 300, size=n)]
            k = p["logprobs"] or 0
            flat = Flat()
            as_dicts = []
            for t, tok in enumerate(tokens):
                top = [(1000 + 10 * t + j, -0.1 * (j + 1)) for j in range(k)]
                entries = [(tok, -9.0, 50)] + [(tid, lp, r + 1) for r, (tid, lp) in enumerate(top)]
                flat.start_indices.append(len(flat.token_ids))
                for tid, lp, r in entries:
                    flat.token_ids.append(tid)
                    flat.logprobs.append(lp)
                    flat.ranks.append(r)
                    flat.decoded_tokens.append(None)
                flat.end_indices.append(len(flat.token_ids))
                as_dicts.append({tid: Logprob(lp, r) for tid, lp, r in entries})
            logprobs = (flat if p["flat_logprobs"] and i % 2 == 0 else as_dicts) if k else None
            outs.append(Output(str(i), ids, None, [Completion(0, "", tokens, None, logprobs, "length")]))
        return outs


def _teacher(max_context=64, **cfg):
    config = VLLMEngineConfig(max_model_len=max_context, **cfg)
    return VLLMTeacher("t", "m", tokenizer=None, tokenizer_source="m", config=config, max_context=max_context,
                       engine_factory=FakeEngine, params_factory=fake_params)


def test_chunks_filter_seeds_and_both_forms():
    FakeEngine.calls = []
    teacher = _teacher(chunk_size=4)
    requests = [GenerationRequest(f"r{i}", tuple(range(1, 4 + i)), seed=i) for i in range(10)]
    requests.append(GenerationRequest("too-long", tuple(range(64)), seed=1))  # 64 tokens: no room for one more
    outs = list(teacher.generate(requests, SamplingParams(max_new_tokens=8, top_k_logprobs=3)))
    assert FakeEngine.calls == [4, 4, 2]  # bounded chunks; the over-length prompt never reached the engine
    assert teacher.stats["skipped_overlength"] == 1 and teacher.stats["skipped_keys"] == ["too-long"]
    assert [o.key for o in outs] == [f"r{i}" for i in range(10)]
    for o in outs:
        assert o.topk_ids.shape == (len(o.response_ids), 3)
        assert (o.topk_ids[:, 0] == 1000 + 10 * np.arange(len(o.response_ids))).all()  # sampled (rank 50) dropped
        np.testing.assert_allclose(o.sampled_logprobs, -9.0)
    # The seed is per request: the same request alone gives the same sample.
    (again,) = list(_teacher().generate([requests[3]], SamplingParams(max_new_tokens=8, top_k_logprobs=3)))
    assert again.response_ids.tolist() == outs[3].response_ids.tolist()


def test_max_tokens_capped_by_context_and_k_checked():
    seen = []

    class Engine(FakeEngine):
        def generate(self, prompts, params, use_tqdm):
            seen.extend(params)
            return super().generate(prompts, params, use_tqdm)

    teacher = VLLMTeacher("t", "m", None, "m", VLLMEngineConfig(max_model_len=16, max_logprobs=5), 16,
                          engine_factory=Engine, params_factory=fake_params)
    list(teacher.generate([GenerationRequest("a", tuple(range(1, 13)), seed=0)], SamplingParams(max_new_tokens=100, top_k_logprobs=2)))
    assert seen[0]["max_tokens"] == 4 and seen[0]["detokenize"] is False and seen[0]["flat_logprobs"] is True
    with pytest.raises(ConfigError, match="max_logprobs"):
        teacher.generate([], SamplingParams(top_k_logprobs=6))


def test_engine_kwargs_from_recipe(tmp_path, tiny_tokenizer_dir):
    from distill.teachers import load_teacher

    recipe = tmp_path / "big.yaml"
    recipe.write_text(yaml.safe_dump({"model": "Qwen/Qwen2.5-72B-Instruct", "backend": "vllm",
                                      "tokenizer": str(tiny_tokenizer_dir), "max_context": 32768,
                                      "vllm": {"tensor_parallel_size": 8, "max_model_len": 32768, "max_logprobs": 20,
                                               "dtype": "bfloat16", "gpu_memory_utilization": 0.92}}))
    teacher = load_teacher(str(recipe), batch_size=256)
    assert teacher.config.chunk_size == 256
    kwargs = teacher._llm_kwargs(prefix_caching=True)
    assert kwargs["tensor_parallel_size"] == 8 and kwargs["logprobs_mode"] == "raw_logprobs"
    assert kwargs["max_logprobs"] == 20 and kwargs["enable_prefix_caching"] is True
    assert teacher._llm_kwargs(prefix_caching=False)["enable_prefix_caching"] is False
    recipe.write_text(yaml.safe_dump({"model": "m", "backend": "vllm", "tokenizer": str(tiny_tokenizer_dir),
                                      "vllm": {"tensor_parallel": 8}}))
    with pytest.raises(ConfigError, match="big.yaml: unknown vllm key"):
        load_teacher(str(recipe))


def test_shipped_recipes_parse():
    from distill.teachers import teacher_recipe
    from distill.teachers.openai_http import EndpointConfig

    for name in ("qwen2.5-72b-instruct", "llama-3.3-70b-instruct"):
        recipe = teacher_recipe(name)
        assert recipe.backend == "vllm"
        config = VLLMEngineConfig(**recipe.vllm)
        assert config.tensor_parallel_size == 8 and config.max_logprobs >= 20
    endpoint = teacher_recipe("openai-endpoint")
    assert endpoint.backend == "openai"
    EndpointConfig(**endpoint.endpoint)


@pytest.mark.slow
def test_data_parallel_replicas_split_the_work(tiny_tokenizer_dir):
    config = VLLMEngineConfig(max_model_len=64, data_parallel_size=2, chunk_size=3)
    teacher = VLLMTeacher("t", "m", tokenizer=None, tokenizer_source=str(tiny_tokenizer_dir), config=config,
                          max_context=64, engine_factory=FakeEngine, params_factory=fake_params)
    requests = [GenerationRequest(f"r{i}", (1, 2, 3 + i), seed=i) for i in range(20)]
    try:
        outs = list(teacher.generate(requests, SamplingParams(max_new_tokens=4, top_k_logprobs=2)))
    finally:
        teacher.close()
    assert sorted(o.key for o in outs) == sorted(r.key for r in requests)
    single = {o.key: o.response_ids.tolist() for o in _teacher().generate(requests, SamplingParams(max_new_tokens=4, top_k_logprobs=2))}
    assert {o.key: o.response_ids.tolist() for o in outs} == single
