"""`distill generate` end to end on the tiny teacher: corpus contents, resume, shards, bad input."""

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from distill.cli import main
from distill.corpus import CorpusError, open_corpus
from distill.generate import GenerateConfig, run

PROMPTS = [f"Question {i}: what is {i} plus {i + 1}?" for i in range(10)] + ["Write a poem about the sea.", "Why is the sky blue?"]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    path = tmp_path_factory.mktemp("seeds") / "seeds.jsonl"
    lines = [json.dumps({"prompt": p, "reference": f"r{i}"}) for i, p in enumerate(PROMPTS)]
    lines.insert(3, json.dumps({"prompt": PROMPTS[0].upper()}))  # duplicate after normalization
    path.write_text("\n".join(lines) + "\n")
    return path


def config(teacher, seeds, out, **kw):
    base = dict(teacher=str(teacher), prompts=str(seeds), out=str(out), max_new_tokens=8, top_k=5, temperature=0.7,
                top_p=0.9, samples_per_prompt=2, rows_per_shard=4, batch_size=4, progress=False)
    return GenerateConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def reference(tiny_teacher_dir, seeds, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "corpus"
    manifest = run(config(tiny_teacher_dir, seeds, out))
    return out, manifest


def rows_by_id(paths):
    return {r.id: r for r in open_corpus(paths).iter_rows()}


def assert_same_rows(a, b):
    assert sorted(a) == sorted(b)
    for key, row in a.items():
        other = b[key]
        np.testing.assert_array_equal(row.response_ids, other.response_ids)
        np.testing.assert_array_equal(row.topk_ids, other.topk_ids)
        np.testing.assert_allclose(row.topk_logprobs, other.topk_logprobs, atol=2e-3)


def test_corpus_contents_match_teacher_forward_pass(reference, tiny_teacher_dir):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.fingerprint import tokenizer_fingerprint
    from distill.prompts import encode_prompt

    out, manifest = reference
    assert manifest["rows"] == 24 and manifest["ingest"]["duplicates"] == 1
    assert len(manifest["shards"]) == 6 and all(len(s["sha256"]) == 64 for s in manifest["shards"])
    assert manifest["generation"]["temperature"] == 0.7 and manifest["top_k"] == 5
    assert manifest["backend"]["name"] == "hf" and "transformers" in manifest["backend"]["version"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    assert manifest["tokenizer_fingerprint"] == tokenizer_fingerprint(tokenizer)
    assert (out / "README.md").is_file() and (out / "manifest.json").is_file()
    files = sorted(str(p) for p in (out / "data").glob("train-*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert ds.num_rows == 24 and len(ds[0]["topk_ids"]) == 5 * ds[0]["response_len"]
    model = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir).eval()
    corpus = open_corpus(out)
    from distill.corpus.reader import manifest_grid

    grid = manifest_grid(manifest)
    for row in corpus.iter_rows():
        assert row.prompt_ids.tolist() == encode_prompt(tokenizer, row.messages)  # template once, ids as produced
        full = torch.tensor([row.prompt_ids.tolist() + row.response_ids.tolist()])
        with torch.no_grad():
            logits = model(full).logits[0, len(row.prompt_ids) - 1: -1].float()
        raw = torch.log_softmax(logits, -1)  # temperature 1, although sampling used 0.7 and top-p 0.9
        values, ids = raw.topk(5, -1)
        np.testing.assert_array_equal(row.topk_ids, ids.numpy())
        assert (np.abs(row.topk_logprobs - values.numpy()) <= grid.error_bound(values.numpy()) + 1e-5).all()
        sampled = raw.gather(1, torch.tensor(row.response_ids, dtype=torch.long)[:, None])[:, 0].numpy()
        assert (np.abs(row.sampled_logprobs - sampled) <= grid.error_bound(sampled) + 1e-5).all()
        assert np.abs(torch.log_softmax(logits / 0.7, -1).topk(5, -1).values.numpy() - row.topk_logprobs).max() > 0.05
    assert {r.sample_index for r in corpus.iter_rows()} == {0, 1}


def test_rerun_is_noop_and_other_params_are_refused(reference, tiny_teacher_dir, seeds, capsys):
    out, manifest = reference
    before = {p.name: p.stat().st_mtime_ns for p in (out / "data").iterdir()}
    again = run(config(tiny_teacher_dir, seeds, out))
    assert again["identity_sha256"] == manifest["identity_sha256"]
    assert "already complete" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in (out / "data").iterdir()} == before
    with pytest.raises(CorpusError, match=r"generation.temperature: 0.7 -> 1.0"):
        run(config(tiny_teacher_dir, seeds, out, temperature=1.0))
    with pytest.raises(CorpusError, match=r"top_k: 5 -> 6"):
        run(config(tiny_teacher_dir, seeds, out, top_k=6))


def test_shard_workers_union_equals_unsharded(reference, tiny_teacher_dir, seeds, tmp_path):
    out = tmp_path / "sharded"
    first = run(config(tiny_teacher_dir, seeds, out, shard="0/2"))
    with pytest.raises(CorpusError, match="incomplete"):
        open_corpus(out)
    second = run(config(tiny_teacher_dir, seeds, out, shard="1/2"))
    assert first["rows"] + second["rows"] == 24
    assert_same_rows(rows_by_id(out), rows_by_id(reference[0]))
    # the same shard files, byte for byte: workers compute exactly what the single run did
    ref_shards = {s["path"]: s["sha256"] for s in reference[1]["shards"]}
    assert {s["path"]: s["sha256"] for s in first["shards"] + second["shards"]} == ref_shards


# Where the run dies: with a shard written to its temp file but not renamed, between a shard's rename
# and its commit record (a complete file nothing vouches for yet), and right after a record.
KILL_POINTS = {
    "mid_parquet_write": ("distill.corpus.writer", "write_parquet", 7, "after"),
    "shard_renamed_not_recorded": ("distill.corpus.writer", "atomic_write_bytes", 5, "before"),
    "shard_recorded": ("distill.corpus.writer", "atomic_write_bytes", 9, "after"),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_minus_9_then_resume_gives_exactly_the_uninterrupted_rows(point, tiny_teacher_dir, seeds, tmp_path, capsys):
    # one row per shard: 24 shards; the run SIGKILLs itself at a fixed call of a write function,
    # so every machine kills the same moment
    settings = dict(rows_per_shard=1, batch_size=1)
    uninterrupted = tmp_path / "uninterrupted"
    run(config(tiny_teacher_dir, seeds, uninterrupted, **settings))
    out = tmp_path / "killed"
    module, name, call, when = KILL_POINTS[point]
    code = ("import os, signal, sys, importlib\n"
            f"m = importlib.import_module({module!r}); real = getattr(m, {name!r}); n = [0]\n"
            "def dying(*a, **k):\n"
            "    n[0] += 1\n"
            f"    if n[0] == {call} and {when!r} == 'before': os.kill(os.getpid(), signal.SIGKILL)\n"
            "    r = real(*a, **k)\n"
            f"    if n[0] == {call} and {when!r} == 'after': os.kill(os.getpid(), signal.SIGKILL)\n"
            "    return r\n"
            f"setattr(m, {name!r}, dying)\n"
            "from distill.cli import main; sys.argv[0] = 'distill'; main()")
    args = ["generate", "--teacher", str(tiny_teacher_dir), "--prompts", str(seeds), "--out", str(out),
            "--max-new-tokens", "8", "--top-k", "5", "--temperature", "0.7", "--top-p", "0.9",
            "--samples-per-prompt", "2", "--rows-per-shard", "1", "--batch-size", "1", "--no-progress"]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (out / "manifest.json").exists()
    recorded = len(list((out / "data").glob(".train-*.entry.json")))
    assert 1 <= recorded < 24
    run(config(tiny_teacher_dir, seeds, out, **settings))  # the same command again (in-process: saves a cold start)
    assert f"{recorded} shard(s) already written" in capsys.readouterr().err
    assert not list((out / "data").glob(".*"))  # no temp files or records left in the finished corpus
    assert_same_rows(rows_by_id(out), rows_by_id(uninterrupted))
    assert open_corpus(out).num_rows == 24  # none twice


def bad_cases(tmp_path, teacher):
    long_prompt = " ".join(["word"] * 600)
    return {
        "malformed": (['{"prompt": "ok"}', '{"prompt": "x"'], [], "seeds.jsonl:2: malformed JSON"),
        "missing": (['{"prompt": "ok"}', '{"question": "x"}'], [], "seeds.jsonl:2: record has no 'prompt'"),
        "empty": (['{"prompt": ""}'], [], "seeds.jsonl:1: field 'prompt' is empty"),
        "wrong_type": (['{"prompt": "ok"}', '{"prompt": ["x"]}'], [], "seeds.jsonl:2: field 'prompt' must be a string"),
        "not_utf8": ([b'{"prompt": "\xff\xfe"}'], [], "seeds.jsonl:1: not valid UTF-8"),
        "too_long": (['{"prompt": "ok"}', json.dumps({"prompt": long_prompt})], [],
                     "seeds.jsonl:2: prompt is"),
        "missing_teacher": (['{"prompt": "ok"}'], ["--teacher", str(tmp_path / "no-such-model")], "no-such-model"),
        "top_k_0": (['{"prompt": "ok"}'], ["--top-k", "0"], "--top-k: must be >= 1"),
        "top_k_over_vocab": (['{"prompt": "ok"}'], ["--top-k", "999"], "exceeds the teacher's vocabulary"),
    }


@pytest.mark.parametrize("case", ["malformed", "missing", "empty", "wrong_type", "not_utf8", "too_long", "missing_teacher", "top_k_0", "top_k_over_vocab"])
def test_bad_input_errors_and_writes_nothing(case, tmp_path, tiny_teacher_dir):
    lines, extra, message = bad_cases(tmp_path, tiny_teacher_dir)[case]
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_bytes(b"\n".join(l if isinstance(l, bytes) else l.encode() for l in lines) + b"\n")
    out = tmp_path / "out"
    args = ["generate", "--teacher", str(tiny_teacher_dir), "--prompts", str(seeds), "--out", str(out),
            "--max-new-tokens", "8", "--no-progress", *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output
    assert not out.exists()  # no partial corpus


def test_skip_invalid_counts_reasons_in_manifest(tmp_path, tiny_teacher_dir):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_bytes(b"\n".join([b'{"prompt": "ok one"}', b'{"prompt": 3}', b'{"prompt": "x"', b'{"prompt": ""}',
                                  json.dumps({"prompt": " ".join(["word"] * 600)}).encode(), b'{"prompt": "ok two"}',
                                  b'{"prompt": "OK   one"}']) + b"\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["generate", "--teacher", str(tiny_teacher_dir), "--prompts", str(seeds), "--out",
                                       str(out), "--max-new-tokens", "4", "--top-k", "3", "--skip-invalid", "--no-progress"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["ingest"]["skipped"] == {"empty_prompt": 1, "malformed_json": 1, "prompt_too_long": 1, "wrong_type": 1}
    assert manifest["ingest"]["duplicates"] == 1 and manifest["rows"] == 2
    assert sorted(r.prompt_text for r in open_corpus(out).iter_rows()) == ["ok one", "ok two"]


def test_repeated_prompts_flag_reads_every_file_as_one_set(tmp_path, tiny_teacher_dir):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text('{"prompt": "alpha one"}\n{"prompt": "beta two"}\n')
    second.write_text('{"prompt": "gamma three"}\n{"prompt": "ALPHA   one"}\n')  # a duplicate of a.jsonl's first
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["generate", "--teacher", str(tiny_teacher_dir), "--prompts", str(first),
                                       "--prompts", str(second), "--out", str(out), "--max-new-tokens", "3",
                                       "--top-k", "3", "--no-progress"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["ingest"]["files"] == [str(first), str(second)] and manifest["ingest"]["duplicates"] == 1
    assert sorted(r.prompt_text for r in open_corpus(out).iter_rows()) == ["alpha one", "beta two", "gamma three"]
