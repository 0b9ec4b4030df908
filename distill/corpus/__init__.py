"""The corpus: Parquet shards + manifest written by `distill generate`, read by `distill train`.

    from distill.corpus import open_corpus, CorpusRow, CorpusWriter, SCHEMA_VERSION, CorpusError

Format and encoding: ``distill/corpus/schema.py`` and docs/corpus.md. pyarrow is imported lazily.
"""

from distill.corpus.encoding import decode_topk_logprobs, encode_topk_logprobs
from distill.corpus.reader import Corpus, open_corpus
from distill.corpus.schema import (
    DEFAULT_LOGPROB_SCALE,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    CorpusError,
    CorpusRow,
    shard_name,
)
from distill.corpus.writer import CorpusWriter

__all__ = [
    "DEFAULT_LOGPROB_SCALE",
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "Corpus",
    "CorpusError",
    "CorpusRow",
    "CorpusWriter",
    "decode_topk_logprobs",
    "encode_topk_logprobs",
    "open_corpus",
    "shard_name",
]
