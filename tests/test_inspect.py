"""`distill inspect`: the human summary and the --json keys other tools rely on."""

import json

import pytest
from click.testing import CliRunner

from distill.cli import main
from distill.generate import GenerateConfig, run


@pytest.fixture(scope="module")
def corpus_dir(tiny_teacher_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("inspect")
    seeds = base / "seeds.jsonl"
    seeds.write_text('{"prompt": "What is 2 + 2?"}\n{"prompt": "Name a color."}\n{"prompt": "what is 2 + 2?"}\n{"prompt": 5}\n')
    out = base / "corpus"
    run(GenerateConfig(teacher=str(tiny_teacher_dir), prompts=str(seeds), out=str(out), max_new_tokens=6, top_k=4,
                       samples_per_prompt=2, rows_per_shard=3, skip_invalid=True, progress=False))
    return out


def test_inspect_json(corpus_dir):
    result = CliRunner().invoke(main, ["inspect", str(corpus_dir), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    for key in ("rows", "response_tokens", "top_k", "bytes_per_token", "teacher", "tokenizer_fingerprint", "schema_version",
                "augmentation"):
        assert key in info
    assert info["rows"] == 4 and info["prompts"] == 2 and info["top_k"] == 4 and info["schema_version"] == 2 and info["logprob_alpha"] == 0.5
    assert info["bytes_per_token"] > 0 and info["response_tokens"] > 0 and info["teacher"]["backend"] == "hf"
    assert info["skipped"] == {"wrong_type": 1} and info["duplicates_collapsed"] == 1 and info["augmentation"] is None


def test_inspect_summary_and_errors(corpus_dir, tmp_path):
    result = CliRunner().invoke(main, ["inspect", str(corpus_dir), "--samples", "1"])
    assert result.exit_code == 0, result.output
    for text in ("rows          4  (2 prompts)", "top-k         4", "bytes per response token", "checksums ok",
                 "prompt:", "t=0 sampled"):
        assert text in result.output
    missing = CliRunner().invoke(main, ["inspect", str(tmp_path)])
    assert missing.exit_code == 2 and f"{tmp_path}: no manifest.json" in missing.output
