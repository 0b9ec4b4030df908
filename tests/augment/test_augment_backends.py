"""`distill augment` end to end (CLI, files, resume marker) and one run through the real HF backend."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from distill.augment import AugmentConfig, augment_prompts, prompts_schema
from distill.cli import main
from tests.augment.fake_teacher import FakeTeacher, random_responder
from tests.augment.test_augment import SEED_TEXTS, make_seeds


@pytest.fixture()
def seeds_file(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(json.dumps({"id": f"s{i}", "prompt": t}) + "\n" for i, t in enumerate(SEED_TEXTS)))
    return path


def test_cli_writes_prompts_readable_as_seeds(tmp_path, seeds_file, tiny_teacher_dir, monkeypatch):
    from transformers import AutoTokenizer

    from distill.ingest import read_prompts

    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    teachers = []

    def fake_load_teacher(spec, backend=None, **overrides):
        teachers.append(FakeTeacher(tokenizer, random_responder(), name=str(spec)))
        return teachers[-1]

    monkeypatch.setattr("distill.teachers.load_teacher", fake_load_teacher)
    out = tmp_path / "aug"
    args = ["augment", "--teacher", str(tiny_teacher_dir), "--prompts", str(seeds_file), "--out", str(out),
            "-n", "12", "--few-shot", "2", "--requests-per-round", "2", "--seed", "5"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "12/12 prompts accepted from 4 seeds (target reached)" in result.output

    manifest = json.loads((out / "augment.json").read_text())
    stats = manifest["augmentation"]
    assert stats["seeds"] == 4 and stats["accepted"] == 12 and set(stats["rejected"]) >= {"near_duplicate", "too_long"}
    assert manifest["files"]["prompts.jsonl"]["rows"] == 12
    assert {"distinct_1", "distinct_2", "distinct_3", "length_words_histogram"} <= set(stats["diversity"])
    # The accepted prompts read back as seeds for `distill generate --prompts`, lineage kept.
    records = read_prompts(out / "prompts.jsonl")
    assert len(records) == 12
    seed_ids = {r.id for r in read_prompts(seeds_file)}
    first = json.loads((out / "prompts.jsonl").read_text().splitlines()[0])
    assert first["origin"]["round"] == 1 and set(first["origin"]["parents"]) <= seed_ids
    assert (out / "rejected.jsonl").is_file() and (out / "rounds" / "round-00001.json").is_file()

    # Same command again: nothing to do, no generation.
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "already complete" in again.output
    assert teachers[-1].generated_requests == 0

    # Bad input gives a clear error and exit 2.
    bad = CliRunner().invoke(main, args[:-6] + ["--few-shot", "9", "--out", str(tmp_path / "other")])
    assert bad.exit_code == 2 and "--few-shot: 9 examples per request but only 4 seed" in bad.output
    recipe = tmp_path / "teacher.yaml"
    recipe.write_text(f"model: {tiny_teacher_dir}\nbackend: hf\naugment:\n  meta_prompt: 'Write {{num_new}} prompts.'\n")
    bad = CliRunner().invoke(main, ["augment", "--teacher", str(recipe), "--prompts", str(seeds_file), "--out", str(tmp_path / "o2")])
    assert bad.exit_code == 2 and "teacher.yaml: augment: meta_prompt: template has no {examples} placeholder" in bad.output
    bad = CliRunner().invoke(main, args[:-2] + ["--decontaminate", "no-such-suite", "--out", str(tmp_path / "o3")])
    assert bad.exit_code == 2 and "unknown suite 'no-such-suite'" in bad.output


def test_hf_backend_round_trip(tiny_teacher_dir):
    """The real HF teacher through the same code: requests fit its context, outputs are screened,
    bookkeeping adds up, and two runs with one seed agree."""
    from distill.teachers.hf import HFTeacher

    def once():
        teacher = HFTeacher(str(tiny_teacher_dir), device="cpu", dtype="float32", batch_size=4)
        config = AugmentConfig(num_prompts=50, few_shot=2, requests_per_round=3, max_rounds=2, prompts_per_request=2,
                               generation_max_tokens=32, max_new_tokens=64, min_words=1, seed=11, progress=False)
        try:
            return augment_prompts(teacher, make_seeds(), config, recipe=None)
        finally:
            teacher.close()

    first, second = once(), once()
    stats = first.stats
    assert stats["requests"] == 6 and stats["rounds"] == 2
    assert stats["accepted"] + stats["rejected_total"] + stats["surplus"] == stats["candidates"] >= 6
    assert stats["timing_s"]["teacher_generate"] > 0
    assert [(r.id, r.origin) for r in first.records] == [(r.id, r.origin) for r in second.records]
    assert first.rejected == second.rejected


def test_deterministic_across_processes():
    """Same --seed, different Python hash seeds (set/dict orders): identical prompts and rejections."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import hashlib, json\n"
        "from tests.augment.fake_teacher import CharTokenizer, FakeTeacher, random_responder\n"
        "from tests.augment.test_augment import cfg, make_seeds\n"
        "from distill.augment import augment_prompts\n"
        "r = augment_prompts(FakeTeacher(CharTokenizer(), random_responder()), make_seeds(), cfg(num_prompts=40, "
        "few_shot=2, synthetic_fraction=0.5, requests_per_round=5, judge_threshold=3))\n"
        "blob = json.dumps([[x.id, x.origin] for x in r.records] + [r.rejected], sort_keys=True)\n"
        "print(hashlib.sha256(blob.encode()).hexdigest(), r.stats['accepted'])\n"
    )
    root = Path(__file__).resolve().parents[2]
    digests = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(root)}
        out = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        digests.append(out.stdout.strip().splitlines()[-1])
    assert digests[0] == digests[1] and digests[0].endswith(" 40")


def test_http_backend_round_trip(tiny_teacher_dir):
    """The OpenAI-compatible HTTP teacher (against the tests' local vLLM-shaped server) through
    the same augmentation code, unchanged: requests are served, outputs screened, runs repeat."""
    from distill.teachers import TeacherRecipe
    from distill.teachers.openai_http import OpenAITeacher
    from tests.teachers.openai_server import FaultyServer

    with FaultyServer(fault_rate=0.0) as server:
        def once():
            recipe = TeacherRecipe.from_mapping({"name": "http-tiny", "model": str(tiny_teacher_dir), "max_context": 512,
                                                 "endpoint": {"base_url": server.base_url, "concurrency": 4}})
            teacher = OpenAITeacher.from_recipe(recipe)
            # the server writes random tokens: the shape filters would reject them all, so they
            # are off; the improbability filter runs (scores from the server's prompt_logprobs)
            config = AugmentConfig(num_prompts=50, few_shot=2, requests_per_round=4, max_rounds=2, generation_max_tokens=24,
                                   max_new_tokens=64, seed=3, progress=False, request_form="off", length_range=0,
                                   script_check=False)
            try:
                return augment_prompts(teacher, make_seeds(), config, recipe=recipe)
            finally:
                teacher.close()

        first, second = once(), once()
    stats = first.stats
    assert stats["requests"] == 8 and stats["candidates"] >= 8
    assert stats["accepted"] + stats["rejected_total"] + stats["surplus"] == stats["candidates"]
    assert stats["accepted"] > 0 and stats["filters"]["improbable_floor"] is not None
    assert [(r.id, r.origin) for r in first.records] == [(r.id, r.origin) for r in second.records]


def test_vllm_backend_round_trip(tiny_tokenizer_dir):
    """The vLLM backend (its stand-in engine with vLLM's output shapes, no detokenized text)
    through the same augmentation code: texts come from decoding the ids, runs repeat."""
    from transformers import AutoTokenizer

    from distill.teachers.vllm import VLLMEngineConfig, VLLMTeacher
    from tests.teachers.test_vllm_backend import FakeEngine, fake_params

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)

    def once():
        teacher = VLLMTeacher("t", "m", tokenizer=tokenizer, tokenizer_source="m", config=VLLMEngineConfig(max_model_len=1024),
                              max_context=1024, engine_factory=FakeEngine, params_factory=fake_params)
        config = AugmentConfig(num_prompts=50, few_shot=2, requests_per_round=4, max_rounds=2, min_words=1, seed=4, progress=False)
        return augment_prompts(teacher, make_seeds(), config, recipe=None)

    FakeEngine.calls, FakeEngine.params = [], []
    first, second = once(), once()
    # per run: the 4 seeds scored once (the improbability threshold), then 2 rounds of 4 requests,
    # each held to the JSON-array schema by guided decoding; no random-token candidate survives
    # the screens, so no candidate is scored
    assert FakeEngine.calls == [4, 4, 4] * 2
    generation = [p for p in FakeEngine.params if not p.get("prompt_logprobs")]
    assert len(generation) == 16 and all(p["structured_outputs"] == {"json": json.loads(prompts_schema(5))} for p in generation)
    stats = first.stats
    assert stats["requests"] == 8 and stats["accepted"] + stats["rejected_total"] + stats["surplus"] == stats["candidates"] >= 8
    assert [r["text"] for r in first.rejected] == [r["text"] for r in second.rejected]
    assert [r.id for r in first.records] == [r.id for r in second.records]
    texts = [r["text"] for r in first.rejected] + [r.prompt for r in first.records]
    assert sum(bool(t) for t in texts) >= 8  # decoded from the ids the engine returned
