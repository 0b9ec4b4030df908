"""Shared fixtures: a tiny tokenizer and tiny teacher/student model dirs, built once per session."""

from __future__ import annotations

import os

import pytest

from tests.train import conftest as train_helpers

# Tests share 2 cores with each other's subprocesses; one thread per process keeps them fair.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# KD fixtures shared by the train, eval and integrity tests: a peaked tiny teacher and corpora of
# its sampled responses (helpers in tests/train/conftest.py).
@pytest.fixture(scope="session")
def peaked_teacher_dir(tmp_path_factory, tiny_tokenizer_dir):
    return train_helpers.make_peaked_teacher(tmp_path_factory.mktemp("peaked_teacher"), tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def kd_rows(peaked_teacher_dir):
    return train_helpers.teacher_rows(peaked_teacher_dir, num_prompts=96, max_new_tokens=20, top_k=8)


@pytest.fixture(scope="session")
def kd_corpus(tmp_path_factory, kd_rows, peaked_teacher_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(peaked_teacher_dir)
    return train_helpers.write_corpus(tmp_path_factory.mktemp("kd_corpus"), kd_rows, tok, top_k=8, row_group_size=16, num_shards=2)


@pytest.fixture(scope="session")
def black_box_corpus(tmp_path_factory, kd_rows, peaked_teacher_dir):
    import dataclasses

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(peaked_teacher_dir)
    rows = [dataclasses.replace(r, topk_ids=None, topk_logprobs=None, sampled_logprobs=None) for r in kd_rows[:32]]
    return train_helpers.write_corpus(tmp_path_factory.mktemp("bb_corpus"), rows, tok, top_k=0)



@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    from tests.tiny import make_tokenizer

    path = tmp_path_factory.mktemp("tokenizer")
    make_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A 2-layer, 64-wide random Qwen2 with the tiny tokenizer (vocab padded to a multiple of 64)."""
    from tests.tiny import make_model_dir

    return make_model_dir(tmp_path_factory.mktemp("teacher"), tokenizer_dir=tiny_tokenizer_dir, seed=1)


@pytest.fixture(scope="session")
def tiny_student_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A smaller random Qwen2 sharing the teacher's tokenizer, with a different embedding padding."""
    from tests.tiny import make_model_dir

    return make_model_dir(
        tmp_path_factory.mktemp("student"), tokenizer_dir=tiny_tokenizer_dir, hidden_size=32,
        intermediate_size=64, num_heads=2, num_kv_heads=1, vocab_size=None, seed=2,
    )


# Every CLI failure of a class a user causes (bad input, diverged, lock held, nothing to do,
# storage refused, preempted) must be one `error: ...` line and no traceback, in every test that
# runs the CLI in-process: the check wraps click's test runner for the whole suite.
ONE_LINE_CODES = {2, 5, 6, 7, 74, 75}  # --debug (or DISTILL_DEBUG) adds the traceback on purpose


def check_cli_failure(code, output, debug=False):
    if code not in ONE_LINE_CODES or debug or os.environ.get("DISTILL_DEBUG"):
        return
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, f"exit {code} without exactly one 'error:' line:\n{output}"


@pytest.fixture(autouse=True)
def _one_line_cli_failures(monkeypatch):
    from click.testing import CliRunner

    invoke = CliRunner.invoke

    def checked(self, cli, args=None, *rest, **kwargs):
        result = invoke(self, cli, args, *rest, **kwargs)
        check_cli_failure(result.exit_code, result.output, debug="--debug" in [str(a) for a in (args or [])])
        return result

    monkeypatch.setattr(CliRunner, "invoke", checked)
