"""HF teacher: raw temperature-1 top-k, per-prompt seeds, stops, score mode, recipes."""

import numpy as np
import pytest
import torch

from distill.config import ConfigError
from distill.prompts import encode_prompt
from distill.teachers import load_teacher
from distill.teachers.base import GenerationRequest, SamplingParams, ScoreRequest
from distill.teachers.hf import HFTeacher, pick_device

PROMPTS = ["What is 2 + 2?", "Write a short poem about the sea and the wind at night.", "hi",
           "Explain why the sky is blue in one sentence.", "List three prime numbers."]


@pytest.fixture(scope="module")
def teacher(tiny_teacher_dir):
    return HFTeacher(str(tiny_teacher_dir), batch_size=3)


def requests_for(teacher, seed0=100):
    return [GenerationRequest(key=f"k{i}", prompt_ids=tuple(encode_prompt(teacher.tokenizer, [{"role": "user", "content": p}])),
                              seed=seed0 + i) for i, p in enumerate(PROMPTS)]


def forward_logits(model, prompt_ids, response_ids):
    full = torch.tensor([list(prompt_ids) + list(response_ids)])
    with torch.no_grad():
        logits = model(full).logits[0].float()
    return logits[len(prompt_ids) - 1: len(prompt_ids) + len(response_ids) - 1]


def test_cpu_fp32_default():
    if not torch.cuda.is_available():
        assert pick_device() == ("cpu", torch.float32)


def test_stored_topk_is_raw_temperature_one_logsoftmax(teacher):
    params = SamplingParams(max_new_tokens=12, temperature=0.7, top_p=0.9, top_k_logprobs=6)
    outputs = {o.key: o for o in teacher.generate(requests_for(teacher), params)}
    assert len(outputs) == len(PROMPTS)
    for request in requests_for(teacher):
        out = outputs[request.key]
        logits = forward_logits(teacher.model, request.prompt_ids, out.response_ids)
        raw = torch.log_softmax(logits, -1)
        values, ids = raw.topk(6, -1)
        np.testing.assert_allclose(out.topk_logprobs, values.numpy(), atol=1e-5)
        np.testing.assert_array_equal(out.topk_ids, ids.numpy())
        sampled = raw.gather(1, torch.tensor(out.response_ids, dtype=torch.long)[:, None])[:, 0]
        np.testing.assert_allclose(out.sampled_logprobs, sampled.numpy(), atol=1e-5)
        warmed = torch.log_softmax(logits / 0.7, -1).topk(6, -1).values.numpy()
        assert np.abs(out.topk_logprobs - warmed).max() > 0.05  # not the temperature-0.7 distribution
        assert out.prompt_ids.tolist() == list(request.prompt_ids)
        assert (np.diff(out.topk_logprobs, axis=1) <= 0).all()


def test_capture_equals_output_logits_of_plain_generate(teacher):
    """Greedy: our capture and HF's own output_logits see the same raw logits."""
    from transformers import GenerationConfig

    request = requests_for(teacher)[1]
    params = SamplingParams(max_new_tokens=10, temperature=0.0, top_k_logprobs=4)
    out = next(iter(teacher.generate([request], params)))
    config = GenerationConfig(max_new_tokens=10, do_sample=False, eos_token_id=list(teacher.eos_ids),
                              pad_token_id=teacher.pad_id, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        plain = teacher.model.generate(torch.tensor([request.prompt_ids]), generation_config=config)
    generated = plain.sequences[0, len(request.prompt_ids):].tolist()
    assert out.response_ids.tolist() == generated[: len(out.response_ids)]
    logits = torch.cat(plain.logits)[: len(out.response_ids)]
    np.testing.assert_allclose(out.topk_logprobs, torch.log_softmax(logits, -1).topk(4, -1).values.numpy(), atol=1e-5)


def test_per_prompt_seed_independent_of_batch_neighbours(teacher):
    params = SamplingParams(max_new_tokens=10, temperature=1.0, top_k_logprobs=3)
    batched = {o.key: o for o in teacher.generate(requests_for(teacher), params)}
    alone = {}
    for request in requests_for(teacher):
        alone.update({o.key: o for o in teacher.generate([request], params)})
    for key, out in batched.items():
        np.testing.assert_array_equal(out.response_ids, alone[key].response_ids)
        np.testing.assert_allclose(out.topk_logprobs, alone[key].topk_logprobs, atol=1e-5)
    other = {o.key: o for o in teacher.generate(requests_for(teacher, seed0=7), params)}
    assert any(not np.array_equal(other[k].response_ids, batched[k].response_ids) for k in batched)


def test_stop_strings_and_finish_reasons(teacher):
    params = SamplingParams(max_new_tokens=30, temperature=1.0, top_k_logprobs=2, stop=("e",))
    outputs = list(teacher.generate(requests_for(teacher), params))
    stopped = [o for o in outputs if o.finish_reason == "stop" and not np.isin(o.response_ids, teacher.eos_ids).any()]
    assert stopped, "a random model writes an 'e' within 30 tokens"
    for out in stopped:
        text = teacher.tokenizer.decode(out.response_ids.tolist())
        assert "e" in text and "e" not in teacher.tokenizer.decode(out.response_ids[:-1].tolist())
        assert out.topk_ids.shape == (len(out.response_ids), 2)
    limited = list(teacher.generate(requests_for(teacher)[:1], SamplingParams(max_new_tokens=3, top_k_logprobs=2)))
    assert limited[0].finish_reason in ("length", "stop") and len(limited[0].response_ids) <= 3


def test_score_matches_generate(teacher):
    params = SamplingParams(max_new_tokens=9, temperature=1.0, top_k_logprobs=5)
    requests = requests_for(teacher)
    outputs = {o.key: o for o in teacher.generate(requests, params)}
    scores = {o.key: o for o in teacher.score(
        [ScoreRequest(key=r.key, prompt_ids=r.prompt_ids, response_ids=tuple(outputs[r.key].response_ids.tolist()))
         for r in requests] + [ScoreRequest(key="empty", prompt_ids=requests[0].prompt_ids, response_ids=())], 5)}
    for r in requests:
        np.testing.assert_allclose(scores[r.key].topk_logprobs, outputs[r.key].topk_logprobs, atol=1e-4)
        np.testing.assert_array_equal(scores[r.key].topk_ids, outputs[r.key].topk_ids)
        np.testing.assert_allclose(scores[r.key].sampled_logprobs, outputs[r.key].sampled_logprobs, atol=1e-4)
    assert scores["empty"].topk_ids.shape == (0, 5)


def test_recipe_and_errors(tiny_teacher_dir, tmp_path):
    recipe = tmp_path / "t.yaml"
    recipe.write_text(f"model: {tiny_teacher_dir}\nbackend: hf\nbatch_size: 2\ndtype: float32\n")
    teacher = load_teacher(str(recipe), batch_size=5)
    assert isinstance(teacher, HFTeacher) and teacher.batch_size == 5 and teacher.max_context == 512
    fp = teacher.fingerprint()
    assert fp["backend"] == "hf" and fp["weights_sha256"] and fp["dtype"] == "float32"
    with pytest.raises(ConfigError, match="no such model directory"):
        HFTeacher(str(tmp_path / "missing"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"model: {tiny_teacher_dir}\nhf:\n  batchsize: 2\n")
    with pytest.raises(ConfigError, match="unknown hf option"):
        load_teacher(str(bad))
    with pytest.raises(ConfigError, match="exceeds the teacher context"):
        list(teacher.generate(requests_for(teacher)[:1], SamplingParams(max_new_tokens=600)))


def test_static_and_dynamic_kv_cache_give_the_same_rows(tiny_teacher_dir):
    """model.generate's static cache (auto on CPU for long generations of models decode_batch
    cannot run) must not change a token or a stored log-prob."""
    static = HFTeacher(str(tiny_teacher_dir), batch_size=3, kv_cache="static")
    dynamic = HFTeacher(str(tiny_teacher_dir), batch_size=3, kv_cache="dynamic")
    assert static.cache_for(SamplingParams(max_new_tokens=8)) == "static"
    # a long call first: the static cache of the short call after it is sized for that call alone
    for max_new in (24, 6):
        params = SamplingParams(max_new_tokens=max_new, temperature=1.0, top_p=0.9, top_k_logprobs=4)
        a = {o.key: o for o in static.generate(requests_for(static), params)}
        b = {o.key: o for o in dynamic.generate(requests_for(dynamic), params)}
        for key in a:
            assert a[key].response_ids.tolist() == b[key].response_ids.tolist()
            np.testing.assert_allclose(a[key].topk_logprobs, b[key].topk_logprobs, atol=1e-5)
            assert a[key].finish_reason == b[key].finish_reason
    with pytest.raises(ConfigError, match="kv_cache"):
        HFTeacher(str(tiny_teacher_dir), kv_cache="paged")


@pytest.fixture(scope="module")
def demo_rows():
    """The shipped demo teacher on 16 seed prompts whose greedy answers end (EOS) after 13, 15, 21, 22 and 23 tokens."""
    import json
    from pathlib import Path

    teacher = load_teacher("demo")
    root = Path(__file__).resolve().parents[2]
    seeds = [json.loads(line)["prompt"] for line in (root / "data/demo/seeds.jsonl").open()]
    picked = [seeds[i] for i in (*range(12), 18, 27, 32, 63)]
    return teacher, [encode_prompt(teacher.tokenizer, [{"role": "user", "content": p}]) for p in picked]


@pytest.mark.parametrize("params", [
    SamplingParams(max_new_tokens=40, temperature=1.0, top_p=0.9, top_k_logprobs=4),
    SamplingParams(max_new_tokens=40, temperature=0.0, top_k_logprobs=5),
    SamplingParams(max_new_tokens=40, temperature=0.8, top_p=0.95, top_k_logprobs=0),
    SamplingParams(max_new_tokens=40, temperature=1.0, top_k_logprobs=2, stop=("Answer",)),
    SamplingParams(max_new_tokens=9, temperature=0.0, top_k_logprobs=3),
], ids=["sample-topk", "greedy-topk", "sample-no-capture", "stop-string", "length"])
def test_shrinking_decode_matches_generate(demo_rows, params):
    """decode_batch (our loop: finished rows leave the batch) writes what model.generate writes,
    whichever share of finished rows triggers their removal (0.0: every step one finishes;
    2.0: never, the loop then runs every row to the end like generate)."""
    from distill.teachers.hf import decode_batch, generate_batch

    teacher, prompts = demo_rows
    seeds = list(range(40, 40 + len(prompts)))
    reference = generate_batch(teacher.model, teacher.tokenizer, prompts, seeds, params, eos_ids=teacher.eos_ids,
                               pad_id=teacher.pad_id, cache="dynamic")
    lengths = {len(row["response_ids"]) for row in reference}
    assert len(lengths) >= (1 if params.max_new_tokens < 10 else 3), f"rows should end at different steps: {lengths}"
    for fraction in (0.0, 0.125, 0.5, 2.0):
        rows = decode_batch(teacher.model, teacher.tokenizer, prompts, seeds, params, eos_ids=teacher.eos_ids,
                            pad_id=teacher.pad_id, prune_fraction=fraction)
        for got, want in zip(rows, reference):
            assert got["response_ids"].tolist() == want["response_ids"].tolist(), fraction
            assert got["finish_reason"] == want["finish_reason"]
            if params.top_k_logprobs:
                np.testing.assert_array_equal(got["topk_ids"], want["topk_ids"])
                np.testing.assert_allclose(got["topk_logprobs"], want["topk_logprobs"], atol=1e-5)
                np.testing.assert_allclose(got["sampled_logprobs"], want["sampled_logprobs"], atol=1e-5)
            else:
                assert got["topk_ids"] is None and want["topk_ids"] is None
    if params.stop:
        assert {row["finish_reason"] for row in reference} == {"stop"}
        assert all("Answer" in teacher.tokenizer.decode(row["response_ids"].tolist()) for row in reference)
    if params.max_new_tokens < 10:
        assert "length" in {row["finish_reason"] for row in reference}


def test_kv_cache_auto_picks_the_shrinking_loop_for_full_attention_only(tiny_teacher_dir, tmp_path):
    import json
    import shutil

    auto = HFTeacher(str(tiny_teacher_dir), batch_size=3, device="cpu")
    assert auto.cache_for(SamplingParams(max_new_tokens=320)) == "shrinking"
    assert auto.cache_for(SamplingParams(max_new_tokens=8)) == "shrinking"
    auto.device = "cuda"  # not measured on GPUs: auto keeps model.generate's dynamic cache there
    assert auto.cache_for(SamplingParams(max_new_tokens=320)) == "dynamic"
    # the same model with sliding-window layers: decode_batch's cache cannot hold them
    windowed = tmp_path / "windowed"
    shutil.copytree(tiny_teacher_dir, windowed)
    config = json.loads((windowed / "config.json").read_text())
    config.update(use_sliding_window=True, sliding_window=4, max_window_layers=0)
    config.pop("layer_types", None)
    (windowed / "config.json").write_text(json.dumps(config))
    fallback = HFTeacher(str(windowed), batch_size=3, device="cpu")
    assert fallback.cache_for(SamplingParams(max_new_tokens=320)) == "static"
    assert fallback.cache_for(SamplingParams(max_new_tokens=64)) == "dynamic"
    outputs = list(fallback.generate(requests_for(fallback)[:2], SamplingParams(max_new_tokens=5, top_k_logprobs=2)))
    assert len(outputs) == 2 and all(o.topk_ids.shape[1] == 2 for o in outputs)
    forced = HFTeacher(str(windowed), batch_size=3, device="cpu", kv_cache="shrinking")
    with pytest.raises(ConfigError, match="sliding-window"):
        list(forced.generate(requests_for(forced)[:1], SamplingParams(max_new_tokens=5)))


def test_shrinking_needs_a_forward_with_positions_cache_and_logits_to_keep(tiny_teacher_dir):
    from transformers import Qwen2ForCausalLM

    from distill.teachers.hf import cache_kwarg, shrinking_supported

    model = Qwen2ForCausalLM.from_pretrained(tiny_teacher_dir)
    assert shrinking_supported(model)

    class PlainForward(Qwen2ForCausalLM):  # a model whose forward takes none of the three
        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    plain = PlainForward(model.config)
    assert not shrinking_supported(plain)
    assert cache_kwarg(plain) == "past_key_values"
