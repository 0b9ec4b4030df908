"""Corpus schema v2, declared once: the Parquet columns, the row type, and the manifest layout.

A corpus is a directory::

    run.json                              identity of the run (teacher, tokenizer, params, prompts)
    data/train-00000-of-00008.parquet     shards, `datasets` naming, written atomically one by one
    manifest.json                         written LAST: the commit marker (or one
                                          manifest-worker-00001-of-00004.json per `--shard i/N` worker)
    README.md                             dataset card (``datasets.load_dataset(DIR)`` reads its config)

Top-k block (the bulk of the bytes), per row with T response tokens and k = manifest["top_k"]:

- ``topk_ids``: list<int32> of length T*k, row-major [T, k], each position sorted by log-prob
  descending. Parquet BYTE_STREAM_SPLIT + zstd packs ids < 2^18 to ~18 bits without custom code.
- ``topk_logprob_codes``: list<int32> of length T*k. Each log-prob is quantized on the grid of
  ``encoding.Grid`` (manifest ``encoding``: ``logprob_scale`` codes per nat at the top,
  ``logprob_alpha`` the curvature, ``logprob_max_step`` the coarsest step), ``code =
  round(F(-logprob))``, and stored per position as the first code followed by the differences of
  consecutive codes (all >= 0 because the position is sorted). Decoding: ``-F^-1(cumsum(codes[T, k],
  axis=1))``. Quantizing the absolute value (not the delta) keeps errors from accumulating along
  the row. The step is 1/scale nat at the top and grows as exp(alpha * nats) down the distribution
  (capped at max_step): an entry's weight in the KL falls faster than its error grows.
- ``sampled_logprob_codes``: list<int32> [T], ``round(F(-logprob))`` of the sampled token.

Versions: v1 stored the uniform grid ``round(-logprob * scale)``, which is v2 with alpha = 0; v1
corpora read unchanged.

Log-probs below ``-MAX_NATS`` are stored as ``-MAX_NATS`` (their probability is 0 in float32).
Black-box corpora (text-only teacher) have ``top_k == 0`` and null top-k columns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distill.errors import ConfigError

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # v1: the uniform log-prob grid (logprob_alpha 0)
FORMAT_NAME = "distill-corpus"
MANIFEST_NAME = "manifest.json"
RUN_NAME = "run.json"
DATA_DIR = "data"
CARD_NAME = "README.md"
DEFAULT_LOGPROB_SCALE = 512  # codes per nat at the top: rounding error there <= 1/1024 nat
DEFAULT_LOGPROB_ALPHA = 0.5  # grid curvature; bench/corpus_size.md measures the choices
LOGPROB_MAX_STEP = 0.125  # coarsest grid step (nats), reached ~8.3 nats below the top at the defaults
MAX_NATS = 1000.0

# Columns whose values dominate the size get BYTE_STREAM_SPLIT (bytes of equal significance
# grouped, so zstd sees the all-zero high bytes as runs) and no dictionary.
BSS_COLUMNS = ("prompt_ids", "response_ids", "topk_ids", "topk_logprob_codes", "sampled_logprob_codes")


class CorpusError(ConfigError):
    """A corpus that cannot be read or written as asked; the message names the file."""


def shard_name(index: int, total: int) -> str:
    """``data/train-00003-of-00008.parquet``: the `datasets` naming, so hub tooling reads it."""
    return f"{DATA_DIR}/train-{index:05d}-of-{total:05d}.parquet"


def worker_manifest_name(worker: int, num_workers: int) -> str:
    return f"manifest-worker-{worker:05d}-of-{num_workers:05d}.json"


def arrow_schema():
    """The Parquet/Arrow schema of schema v2 (the columns are v1's) (pyarrow imported lazily)."""
    import pyarrow as pa

    ints = pa.list_(pa.int32())
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("prompt_id", pa.string(), nullable=False),
            pa.field("sample_index", pa.int32(), nullable=False),
            pa.field("messages", pa.string(), nullable=False),  # JSON: OpenAI chat messages
            pa.field("prompt_text", pa.string(), nullable=False),
            pa.field("response_text", pa.string(), nullable=False),
            pa.field("reference", pa.string(), nullable=True),
            pa.field("origin", pa.string(), nullable=False),  # JSON object: provenance
            pa.field("finish_reason", pa.string(), nullable=False),
            pa.field("prompt_len", pa.int32(), nullable=False),
            pa.field("response_len", pa.int32(), nullable=False),
            pa.field("prompt_ids", ints, nullable=False),
            pa.field("response_ids", ints, nullable=False),
            pa.field("topk_ids", ints, nullable=True),
            pa.field("topk_logprob_codes", ints, nullable=True),
            pa.field("sampled_logprob_codes", ints, nullable=True),
        ],
        metadata={"distill.schema_version": str(SCHEMA_VERSION)},
    )


@dataclass
class CorpusRow:
    """One (prompt, sample) row, decoded.

    Shapes: ``prompt_ids`` [P] int32, ``response_ids`` [T] int32, ``topk_ids`` [T, k] int32,
    ``topk_logprobs`` [T, k] float32 (raw temperature-1 log-probs, descending per position),
    ``sampled_logprobs`` [T] float32. The three top-k arrays are None in a black-box corpus.
    """

    id: str
    prompt_ids: np.ndarray
    response_ids: np.ndarray
    topk_ids: np.ndarray | None
    topk_logprobs: np.ndarray | None
    sampled_logprobs: np.ndarray | None
    finish_reason: str
    prompt_text: str
    response_text: str
    reference: str | None = None
    origin: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)
    prompt_id: str = ""
    sample_index: int = 0

    @property
    def num_response_tokens(self) -> int:
        return int(len(self.response_ids))


def dumps(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) for hashing and for JSON-in-Parquet columns."""
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
