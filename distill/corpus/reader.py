"""Reading a corpus: one or more directories (a run, or the union of `--shard i/N` workers).

``open_corpus`` checks the manifests (present, known schema version, one tokenizer, one k, every
worker of a sharded run present once) and the shard files (present, expected size); sha256
checksums are verified the first time each shard is read (``verify()`` checks them all at once).
Rows stream one Parquet row group at a time, so memory stays bounded by the row-group size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from distill.corpus import encoding
from distill.corpus.schema import (
    FORMAT_NAME,
    MANIFEST_NAME,
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    CorpusError,
    CorpusRow,
    worker_manifest_name,
)
from distill.fingerprint import file_sha256


@dataclass
class _Shard:
    path: Path
    entry: dict[str, Any]
    manifest_path: Path
    top_k: int
    grid: Any  # encoding.Grid
    row_group_rows: list[int]
    verified: bool = False


MANIFEST_FIELDS = ("identity_sha256", "top_k", "encoding", "shards")
SHARD_FIELDS = ("path", "rows", "bytes", "sha256", "response_tokens")


def _load_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{path}: not valid JSON ({exc})") from None
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not UTF-8 text (byte {exc.start}); the manifest is damaged") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise CorpusError(f"{path}: not a distill corpus manifest")
    missing = [key for key in MANIFEST_FIELDS if key not in manifest]
    if missing:
        raise CorpusError(f"{path}: manifest lacks {', '.join(missing)}; the manifest is damaged")
    for i, entry in enumerate(manifest["shards"]):
        gone = [key for key in SHARD_FIELDS if not isinstance(entry, dict) or key not in entry]
        if gone:
            raise CorpusError(f"{path}: shards[{i}] lacks {', '.join(gone)}; the manifest is damaged")
    version = manifest.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise CorpusError(
            f"{path}: corpus schema version {version!r} is not supported by this distill "
            f"(reads versions {', '.join(map(str, READABLE_VERSIONS))})"
        )
    return manifest


def _manifests_here(folder: Path) -> list[Path]:
    if (folder / MANIFEST_NAME).is_file():
        return [folder / MANIFEST_NAME]
    return sorted(folder.glob("manifest-worker-*-of-*.json"))


def _manifests_in(folder: Path) -> list[Path]:
    """Manifests of a corpus dir: manifest.json, else its workers' manifests, else those of its
    sub-folders (one per worker, e.g. each instance's output synced side by side)."""
    if not folder.is_dir():
        raise CorpusError(f"{folder}: not a corpus directory (does not exist)")
    found = _manifests_here(folder)
    if not found:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            found.extend(_manifests_here(sub))
    if not found:
        raise CorpusError(
            f"{folder}: no {MANIFEST_NAME} (the generate run has not finished, or this is not a corpus)"
        )
    return found


class Corpus:
    """A read-only view of one or more corpus directories; build it with ``open_corpus``."""

    def __init__(self, manifest_paths: Sequence[Path], verify: bool = True) -> None:
        self.manifest_paths = list(manifest_paths)
        self.manifests: list[dict[str, Any]] = [_load_manifest(p) for p in self.manifest_paths]
        self._verify = verify
        self._check_union()
        first = self.manifests[0]
        self.top_k: int = int(first["top_k"])
        self.black_box: bool = self.top_k == 0
        self.tokenizer_fingerprint: str = first.get("tokenizer_fingerprint", "")
        self.teacher: dict[str, Any] = first.get("teacher", {})
        self.schema_version: int = int(first.get("schema_version", SCHEMA_VERSION))
        self._shards: list[_Shard] = []
        self._groups: list[tuple[int, int]] = []
        # Shards in corpus order, then shard index: the workers of one sharded run (one identity)
        # read in the same order as the unsharded corpus, so training on either sees the same rows
        # in the same order.
        corpus_order: dict[str, int] = {}
        entries = []
        for path, manifest in zip(self.manifest_paths, self.manifests):
            run = str(manifest.get("identity_sha256") or path)
            order = corpus_order.setdefault(run, len(corpus_order))
            for position, entry in enumerate(manifest.get("shards", [])):
                entries.append(((order, int(entry.get("index", position))), path, manifest, entry))
        for _, path, manifest, entry in sorted(entries, key=lambda item: item[0]):
            self._add_shard(path, manifest, entry)
        self.num_rows: int = sum(s.entry["rows"] for s in self._shards)
        if self.num_rows == 0:
            raise CorpusError(f"{', '.join(map(str, self.manifest_paths))}: corpus is empty (0 rows)")
        sizes = [self._shards[s].row_group_rows[g] for s, g in self._groups]
        self.row_group_offsets: list[int] = [0, *np.cumsum(sizes)[:-1].tolist()] if sizes else []
        self.num_row_groups: int = len(self._groups)
        self.stray_files: list[Path] = self._find_strays()

    # -- validation ---------------------------------------------------------------------------
    def _check_union(self) -> None:
        paths = self.manifest_paths
        for path, manifest in zip(paths, self.manifests):
            if manifest.get("tokenizer_fingerprint") != self.manifests[0].get("tokenizer_fingerprint"):
                raise CorpusError(f"{path}: tokenizer fingerprint differs from {paths[0]}; cannot read them as one corpus")
            if manifest.get("top_k") != self.manifests[0].get("top_k"):
                raise CorpusError(f"{path}: top_k {manifest.get('top_k')} differs from {paths[0]} ({self.manifests[0].get('top_k')})")
        # Group worker manifests by run; each run needs every worker exactly once.
        runs: dict[str, dict[int, Path]] = {}
        counts: dict[str, int] = {}
        for path, manifest in zip(paths, self.manifests):
            worker = manifest.get("worker") or {"index": 0, "count": 1}
            run = manifest.get("identity_sha256", str(path))
            seen = runs.setdefault(run, {})
            if counts.setdefault(run, worker["count"]) != worker["count"]:
                raise CorpusError(f"{path}: worker count {worker['count']} differs from other manifests of the same run")
            if worker["index"] in seen:
                raise CorpusError(f"{path}: same run and worker as {seen[worker['index']]}; a corpus was given twice")
            seen[worker["index"]] = path
        for run, seen in runs.items():
            missing = [i for i in range(counts[run]) if i not in seen]
            if missing:
                example = next(iter(seen.values()))
                names = ", ".join(worker_manifest_name(i, counts[run]) for i in missing[:4])
                raise CorpusError(
                    f"{example.parent}: sharded run incomplete: {len(missing)} of {counts[run]} workers have "
                    f"no manifest ({names}); wait for them or pass their output directories too"
                )

    def _add_shard(self, manifest_path: Path, manifest: dict[str, Any], entry: dict[str, Any]) -> None:
        import pyarrow.parquet as pq

        path = manifest_path.parent / entry["path"]
        if not path.is_file():
            raise CorpusError(f"{path}: shard listed in {manifest_path} is missing")
        if path.stat().st_size != entry["bytes"]:
            raise CorpusError(f"{path}: size {path.stat().st_size} != {entry['bytes']} in {manifest_path} (file changed or truncated)")
        try:
            meta = pq.ParquetFile(path).metadata
        except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for a damaged footer
            raise CorpusError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc}); the shard is damaged") from None
        top_k = int(manifest["top_k"])
        grid = manifest_grid(manifest)
        # The footer carries what the writer used; the manifest must agree, or rows would be
        # decoded with the wrong k or grid.
        footer = {k.decode(): v.decode() for k, v in (meta.metadata or {}).items() if k.startswith(b"distill.")}
        expected = {"distill.top_k": str(top_k), "distill.identity_sha256": str(manifest["identity_sha256"]),
                    **({f"distill.{k}": str(v) for k, v in grid.manifest().items()} if manifest.get("schema_version", 1) >= 2
                       else {"distill.logprob_scale": str(grid.scale)})}
        if "index" in entry:
            expected["distill.shard_index"] = str(entry["index"])
        wrong = [f"{k[8:]} {footer.get(k)!r} in the shard, {v!r} in the manifest" for k, v in expected.items()
                 if footer.get(k) != v]
        if wrong:
            raise CorpusError(f"{path}: does not match {manifest_path}: {'; '.join(wrong)}")
        rows = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        if sum(rows) != entry["rows"]:
            raise CorpusError(f"{path}: {sum(rows)} rows, {entry['rows']} in {manifest_path}")
        shard = _Shard(path, entry, manifest_path, top_k, grid, rows)
        self._shards.append(shard)
        self._groups.extend((len(self._shards) - 1, g) for g in range(len(rows)))

    def _find_strays(self) -> list[Path]:
        """Parquet files in a corpus' data/ folder that no manifest lists (they break
        ``load_dataset`` and hold rows no manifest vouches for)."""
        listed = {s.path.resolve() for s in self._shards}
        folders = {s.path.parent.resolve() for s in self._shards}
        return sorted(p for folder in folders for p in folder.glob("*.parquet") if p.resolve() not in listed)

    def _check_shard(self, shard: _Shard) -> None:
        if shard.verified or not self._verify:
            return
        if file_sha256(shard.path) != shard.entry["sha256"]:
            raise CorpusError(f"{shard.path}: checksum mismatch with {shard.manifest_path} (file corrupted or replaced)")
        shard.verified = True

    def verify(self) -> None:
        """Check every shard's sha256 now, and that no stray Parquet file sits beside them (raises
        CorpusError naming the first bad file)."""
        if self.stray_files:
            names = ", ".join(str(p) for p in self.stray_files[:3])
            raise CorpusError(f"{names}: Parquet file(s) in the corpus that no manifest lists; move them out "
                              "(they would be read by `datasets` and are vouched for by no checksum)")
        for shard in self._shards:
            shard.verified = False
            verify, self._verify = self._verify, True
            try:
                self._check_shard(shard)
            finally:
                self._verify = verify

    # -- reading ------------------------------------------------------------------------------
    @property
    def shard_paths(self) -> list[Path]:
        return [s.path for s in self._shards]

    @property
    def shard_grids(self) -> list[Any]:
        """The log-prob grid of each shard (``encoding.Grid``), in ``shard_paths`` order."""
        return [s.grid for s in self._shards]

    @property
    def response_tokens(self) -> int:
        return sum(int(s.entry["response_tokens"]) for s in self._shards)

    @property
    def num_bytes(self) -> int:
        return sum(int(s.entry["bytes"]) for s in self._shards)

    def lengths(self) -> np.ndarray:
        """prompt_len + response_len per row (int64), in row order, reading only those columns."""
        import pyarrow.parquet as pq

        parts = []
        for shard in self._shards:
            try:
                table = pq.read_table(shard.path, columns=["prompt_len", "response_len"])
            except Exception as exc:
                raise CorpusError(f"{shard.path}: unreadable ({type(exc).__name__}: {exc}); the shard is damaged") from None
            parts.append(np.asarray(table["prompt_len"], dtype=np.int64) + np.asarray(table["response_len"], dtype=np.int64))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def read_row_group(self, index: int) -> list[CorpusRow]:
        """Decode row group ``index`` (0 <= index < num_row_groups) into CorpusRows."""
        import pyarrow.parquet as pq

        shard_index, group = self._groups[index]
        shard = self._shards[shard_index]
        self._check_shard(shard)
        try:
            table = pq.ParquetFile(shard.path).read_row_group(group)
        except Exception as exc:  # damage the checksum did not cover (verification off)
            raise CorpusError(f"{shard.path}: row group {group} unreadable ({type(exc).__name__}: {exc})") from None
        return decode_table(table, shard.top_k, shard.grid)

    def iter_rows(self) -> Iterator[CorpusRow]:
        for index in range(self.num_row_groups):
            yield from self.read_row_group(index)

    def __len__(self) -> int:
        return self.num_rows

    def __repr__(self) -> str:
        return f"Corpus(rows={self.num_rows}, top_k={self.top_k}, shards={len(self._shards)})"


def _split(column, num_rows: int) -> list[np.ndarray | None]:
    """A list<int32> column -> one numpy view per row (None for null rows)."""
    array = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    offsets = np.asarray(array.offsets)
    values = np.asarray(array.values.to_numpy(zero_copy_only=False), dtype=np.int32)
    valid = np.asarray(array.is_valid())
    return [values[offsets[i]:offsets[i + 1]] if valid[i] else None for i in range(num_rows)]


def manifest_grid(manifest: dict[str, Any]) -> "encoding.Grid":
    """The log-prob grid a manifest declares (v1: the uniform grid of its logprob_scale)."""
    enc = manifest.get("encoding", {})
    scale = int(enc.get("logprob_scale", 1))
    if manifest.get("schema_version", 1) < 2:
        return encoding.Grid(scale)
    return encoding.Grid(scale, float(enc.get("logprob_alpha", 0.0)), float(enc.get("logprob_max_step", 0.125)))


def decode_table(table, top_k: int, grid: "encoding.Grid") -> list[CorpusRow]:
    """An Arrow table of a shard -> CorpusRows (decoding the compact top-k codes)."""
    n = table.num_rows
    cols = {name: table.column(name) for name in ("prompt_ids", "response_ids", "topk_ids",
                                                    "topk_logprob_codes", "sampled_logprob_codes")}
    lists = {name: _split(col, n) for name, col in cols.items()}
    py = {name: table.column(name).to_pylist() for name in (
        "id", "prompt_id", "sample_index", "messages", "prompt_text", "response_text", "reference", "origin",
        "finish_reason")}
    rows = []
    for i in range(n):
        ids, codes, sampled = lists["topk_ids"][i], lists["topk_logprob_codes"][i], lists["sampled_logprob_codes"][i]
        black_box = top_k == 0 or ids is None
        rows.append(CorpusRow(
            id=py["id"][i],
            prompt_ids=lists["prompt_ids"][i],
            response_ids=lists["response_ids"][i],
            topk_ids=None if black_box else ids.reshape(-1, top_k),
            topk_logprobs=None if black_box else encoding.decode_topk_logprobs(codes, top_k, grid),
            sampled_logprobs=None if black_box else encoding.decode_logprobs(sampled, grid),
            finish_reason=py["finish_reason"][i],
            prompt_text=py["prompt_text"][i],
            response_text=py["response_text"][i],
            reference=py["reference"][i],
            origin=json.loads(py["origin"][i]),
            messages=json.loads(py["messages"][i]),
            prompt_id=py["prompt_id"][i],
            sample_index=int(py["sample_index"][i]),
        ))
    return rows


def open_corpus(path_or_paths: str | Path | Sequence[str | Path], verify: bool = True) -> Corpus:
    """Open one corpus directory, or several read as one (e.g. the outputs of `--shard i/N` workers).

    Raises CorpusError naming the file on: a missing manifest, an unknown schema version, a
    missing/truncated shard, a checksum mismatch (on first read of that shard), an incomplete
    sharded run, mixed tokenizers or k, or an empty corpus.
    """
    if isinstance(path_or_paths, (str, Path)):
        paths = [Path(path_or_paths)]
    else:
        paths = [Path(p) for p in path_or_paths]
    if not paths:
        raise CorpusError("open_corpus: no corpus directory given")
    manifests: list[Path] = []
    for folder in paths:
        manifests.extend(_manifests_in(folder))
    return Corpus(manifests, verify=verify)
