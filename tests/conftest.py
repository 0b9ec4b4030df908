"""Shared fixtures: a tiny tokenizer and tiny teacher/student model dirs, built once per session."""

from __future__ import annotations

import os

import pytest

# Tests share 2 cores with each other's subprocesses; one thread per process keeps them fair.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


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
