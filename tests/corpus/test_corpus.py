import json

import numpy as np
import pytest

from distill.corpus import (
    SCHEMA_VERSION,
    CorpusError,
    CorpusRow,
    CorpusWriter,
    decode_topk_logprobs,
    encode_topk_logprobs,
    open_corpus,
)
from distill.corpus.encoding import Grid, dequantize, floor_code, quantize

VOCAB = 151936


def make_row(rng, i, k=4, black_box=False, max_len=30):
    num_tokens = int(rng.integers(1, max_len))
    logits = rng.normal(size=(num_tokens, 50)) * 3
    logprobs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    order = np.argsort(-logprobs, axis=1)[:, :k]
    topk_lp = np.take_along_axis(logprobs, order, 1).astype(np.float32)
    topk_ids = rng.integers(0, VOCAB, size=(num_tokens, k)).astype(np.int32)
    response = topk_ids[:, 0].copy()
    return CorpusRow(
        id=f"row{i:04d}", prompt_ids=rng.integers(0, VOCAB, size=int(rng.integers(1, 9))).astype(np.int32),
        response_ids=response, topk_ids=None if black_box else topk_ids,
        topk_logprobs=None if black_box else topk_lp, sampled_logprobs=None if black_box else topk_lp[:, 0].copy(),
        finish_reason="stop", prompt_text=f"prompt {i}", response_text=f"response {i}",
        reference=None if i % 2 else f"ref {i}", origin={"source": "seed", "line": i},
        messages=[{"role": "user", "content": f"prompt {i}"}], prompt_id=f"p{i}", sample_index=0,
    )


def write_corpus(out, rows, *, num_shards=3, worker=(0, 1), k=4, identity=None):
    writer = CorpusWriter(out, identity=identity or {"run": "test"}, num_shards=num_shards, top_k=k, worker=worker)
    writer.start()
    per = -(-len(rows) // num_shards)
    for j in writer.my_shards():
        writer.write_shard(j, rows[j * per:(j + 1) * per])
    return writer.finish(extra={"teacher": {"name": "t"}, "tokenizer_fingerprint": "abc"})


def test_roundtrip_and_precision(tmp_path):
    rng = np.random.default_rng(0)
    rows = [make_row(rng, i) for i in range(20)]
    manifest = write_corpus(tmp_path / "c", rows)
    assert manifest["schema_version"] == SCHEMA_VERSION and manifest["rows"] == 20
    corpus = open_corpus(tmp_path / "c")
    assert corpus.num_rows == 20 and corpus.top_k == 4 and not corpus.black_box
    assert corpus.tokenizer_fingerprint == "abc" and corpus.teacher == {"name": "t"}
    got = list(corpus.iter_rows())
    assert [r.id for r in got] == [r.id for r in rows]
    grid = Grid(manifest["encoding"]["logprob_scale"], manifest["encoding"]["logprob_alpha"], manifest["encoding"]["logprob_max_step"])
    assert grid == Grid(512, 0.5, 0.125)
    for a, b in zip(got, rows):
        np.testing.assert_array_equal(a.prompt_ids, b.prompt_ids)
        np.testing.assert_array_equal(a.response_ids, b.response_ids)
        np.testing.assert_array_equal(a.topk_ids, b.topk_ids)
        assert (np.abs(a.topk_logprobs - b.topk_logprobs) <= grid.error_bound(b.topk_logprobs)).all()
        assert (np.abs(a.sampled_logprobs - b.sampled_logprobs) <= grid.error_bound(b.sampled_logprobs)).all()
        assert (np.diff(a.topk_logprobs, axis=1) <= 0).all()
        assert (a.reference, a.origin, a.messages, a.prompt_text) == (b.reference, b.origin, b.messages, b.prompt_text)
    np.testing.assert_array_equal(corpus.lengths(), [len(r.prompt_ids) + len(r.response_ids) for r in rows])
    assert corpus.row_group_offsets[0] == 0 and len(corpus.row_group_offsets) == corpus.num_row_groups


def test_encoding_is_sorted_deltas_and_handles_inf():
    for grid in (Grid(256), Grid(256, 0.5)):
        lp = np.array([[-0.01, -2.5, -2.5, -np.inf]], dtype=np.float32)
        codes = encode_topk_logprobs(lp, grid)
        assert (codes >= 0).all() and codes[2] == 0
        back = decode_topk_logprobs(codes, 4, grid)
        assert abs(back[0, 1] + 2.5) <= grid.error_bound(np.array([-2.5]))[0] and back[0, 3] == -1000
        with pytest.raises(ValueError, match="descending"):
            encode_topk_logprobs(np.array([[-2.0, -1.0]]), grid)


def test_grid_error_grows_with_the_distance_from_the_top():
    """The v2 grid: 1/scale nat steps at the top, growing as exp(alpha * nats) to the coarsest step
    (1/8 nat), monotone, inverse of itself within half a step; alpha 0 is v1's uniform grid."""
    grid, uniform = Grid(512, 0.5, 0.125), Grid(512)
    lp = -np.concatenate([np.linspace(0, 40, 200_001), [999.9, 1000.0]])
    codes = quantize(lp, grid)
    assert (np.diff(codes) >= 0).all() and codes[-1] == floor_code(grid) == codes.max()
    err = np.abs(dequantize(codes, grid) - lp)
    assert (err <= grid.error_bound(lp)).all()
    assert err[lp > -0.5].max() <= 0.5 * np.exp(0.25) / 512 and err.max() <= 0.0625 + 1e-6
    assert (quantize(lp[:1000], uniform) == np.rint(-lp[:1000] * 512)).all()  # v1 codes exactly
    assert codes.max() < 10_000  # the whole range in 14 bits (v1: 512,000 codes)


def test_black_box_and_datasets_load(tmp_path):
    import datasets

    rng = np.random.default_rng(1)
    rows = [make_row(rng, i, black_box=True) for i in range(5)]
    manifest = write_corpus(tmp_path / "bb", rows, num_shards=2, k=0)
    corpus = open_corpus(tmp_path / "bb")
    assert corpus.black_box and corpus.top_k == 0 and manifest["top_k"] == 0
    assert all(r.topk_ids is None and r.topk_logprobs is None for r in corpus.iter_rows())
    files = sorted(str(p) for p in (tmp_path / "bb" / "data").glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert ds.num_rows == 5 and ds[0]["topk_ids"] is None
    ds2 = datasets.load_dataset(str(tmp_path / "bb"), split="train")  # via the dataset card's config
    assert ds2.num_rows == 5


def test_workers_union_and_incomplete(tmp_path):
    rng = np.random.default_rng(2)
    rows = [make_row(rng, i) for i in range(12)]
    out = tmp_path / "w"
    write_corpus(out, rows, num_shards=4, worker=(1, 2))
    with pytest.raises(CorpusError, match="incomplete.*manifest-worker-00000-of-00002"):
        open_corpus(out)
    write_corpus(out, rows, num_shards=4, worker=(0, 2))
    corpus = open_corpus(out)
    assert sorted(r.id for r in corpus.iter_rows()) == sorted(r.id for r in rows)
    # separate directories per worker (one per instance) read as one corpus too
    write_corpus(tmp_path / "a", rows, num_shards=4, worker=(0, 2))
    write_corpus(tmp_path / "b", rows, num_shards=4, worker=(1, 2))
    assert open_corpus([tmp_path / "a", tmp_path / "b"]).num_rows == 12
    parent = tmp_path / "synced"  # worker outputs side by side under one folder
    write_corpus(parent / "worker-0", rows, num_shards=4, worker=(0, 2))
    write_corpus(parent / "worker-1", rows, num_shards=4, worker=(1, 2))
    assert sorted(r.id for r in open_corpus(parent).iter_rows()) == sorted(r.id for r in rows)
    with pytest.raises(CorpusError, match="given twice"):
        open_corpus([tmp_path / "a", tmp_path / "a"])


def test_reader_errors_name_the_file(tmp_path):
    rng = np.random.default_rng(3)
    with pytest.raises(CorpusError, match="does not exist"):
        open_corpus(tmp_path / "nope")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CorpusError, match="no manifest.json"):
        open_corpus(tmp_path / "empty_dir")
    out = tmp_path / "c"
    write_corpus(out, [make_row(rng, i) for i in range(6)], num_shards=2)
    manifest = json.loads((out / "manifest.json").read_text())
    shard = out / manifest["shards"][0]["path"]
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    corpus = open_corpus(out)
    with pytest.raises(CorpusError, match="checksum mismatch") as err:
        corpus.read_row_group(0)
    assert str(shard) in str(err.value)
    manifest["schema_version"] = 99
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorpusError, match="manifest.json: corpus schema version 99"):
        open_corpus(out)
    write_corpus(tmp_path / "zero", [], num_shards=1)
    with pytest.raises(CorpusError, match="empty"):
        open_corpus(tmp_path / "zero")


def test_identity_mismatch_and_resume(tmp_path):
    rng = np.random.default_rng(4)
    rows = [make_row(rng, i) for i in range(6)]
    out = tmp_path / "c"
    writer = CorpusWriter(out, identity={"temperature": 1.0}, num_shards=2, top_k=4)
    writer.start()
    writer.write_shard(0, rows[:3])
    # a new writer (as after kill -9) sees shard 0 done, shard 1 not
    again = CorpusWriter(out, identity={"temperature": 1.0}, num_shards=2, top_k=4)
    again.start()
    assert again.completed_shards() == {0} and again.finished_manifest() is None
    other = CorpusWriter(out, identity={"temperature": 0.5}, num_shards=2, top_k=4)
    with pytest.raises(CorpusError, match=r"different settings \(temperature: 1.0 -> 0.5\)"):
        other.start()
    again.write_shard(1, rows[3:])
    again.finish()
    assert again.finished_manifest() is not None


def test_a_schema_v1_corpus_still_reads(tmp_path):
    """A corpus written by the schema-v1 writer (uniform 1/512-nat grid), kept in the repo: it
    opens, verifies and decodes to the log-probs it was written from, within v1's 1/1024 nat."""
    import shutil
    from pathlib import Path

    here = Path(__file__).parent / "data"
    shutil.copytree(here / "v1-corpus", tmp_path / "v1")
    expected = np.load(here / "v1-expected.npz")
    corpus = open_corpus(tmp_path / "v1")
    corpus.verify()
    assert corpus.schema_version == 1 and set(corpus.shard_grids) == {Grid(512)}
    rows = list(corpus.iter_rows())
    assert len(rows) == 6
    for row in rows:
        np.testing.assert_array_equal(row.topk_ids, expected[f"{row.id}_ids"])
        assert np.abs(row.topk_logprobs - expected[f"{row.id}_lp"]).max() <= 0.5 / 512 + 1e-6
        assert np.abs(row.sampled_logprobs - expected[f"{row.id}_s"]).max() <= 0.5 / 512 + 1e-6
