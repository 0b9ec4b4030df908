"""Writing a corpus: shards one at a time (atomic), then the dataset card, then the manifest.

Usage (``distill.generate.run`` is the main caller)::

    writer = CorpusWriter(out_dir, identity={...}, num_shards=8, top_k=20, worker=(0, 1))
    done = writer.completed_shards()              # shard indices a killed run already wrote
    for index in writer.my_shards():
        if index not in done:
            writer.write_shard(index, rows)       # rows: list[CorpusRow], written via tmp + rename
    manifest = writer.finish(extra={...})         # manifest.json (or the worker's manifest) LAST

``identity`` is everything that determines the rows (teacher and tokenizer fingerprints,
generation parameters, the prompt list's hash, shard layout). It is stored in ``run.json`` when
the run starts; a later run into the same directory with a different identity is refused, with
the differing keys named, so two configurations never mix in one corpus.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from distill.atomic import atomic_write_bytes, atomic_write_with
from distill.corpus import encoding
from distill.corpus.schema import (
    BSS_COLUMNS,
    CARD_NAME,
    DATA_DIR,
    DEFAULT_LOGPROB_ALPHA,
    DEFAULT_LOGPROB_SCALE,
    LOGPROB_MAX_STEP,
    FORMAT_NAME,
    MANIFEST_NAME,
    RUN_NAME,
    SCHEMA_VERSION,
    CorpusError,
    CorpusRow,
    arrow_schema,
    dumps,
    shard_name,
    worker_manifest_name,
)
from distill.fingerprint import file_sha256
from distill.lock import remove_orphan_temps

ROW_GROUP_SIZE = 128  # rows per Parquet row group: the reader's unit of streaming
ZSTD_LEVEL = 9


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: lets errors name the exact setting that differs."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def identity_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(dumps(identity).encode("utf-8")).hexdigest()


def _list_array(arrays: Sequence[np.ndarray | None]):
    """A list<int32> Arrow array from per-row numpy arrays (None -> null row)."""
    import pyarrow as pa

    lengths = np.array([0 if a is None else a.size for a in arrays], dtype=np.int64)
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    present = [np.asarray(a, dtype=np.int32).ravel() for a in arrays if a is not None]
    values = np.concatenate(present) if present else np.zeros(0, dtype=np.int32)
    mask = None
    if any(a is None for a in arrays):
        mask = pa.array([a is None for a in arrays], type=pa.bool_())
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), pa.array(values, type=pa.int32()), mask=mask)


def rows_to_table(rows: Sequence[CorpusRow], top_k: int, grid: encoding.Grid):
    """Encode rows into a pyarrow Table of the current schema (validates shapes against ``top_k``)."""
    import pyarrow as pa

    topk_ids, topk_codes, sampled_codes = [], [], []
    for row in rows:
        num_tokens = len(row.response_ids)
        if top_k == 0:
            if row.topk_ids is not None:
                raise CorpusError(f"row {row.id}: black-box corpus (top_k=0) but the row has top-k arrays")
            topk_ids.append(None), topk_codes.append(None), sampled_codes.append(None)
            continue
        if row.topk_ids is None or row.topk_logprobs is None or row.sampled_logprobs is None:
            raise CorpusError(f"row {row.id}: corpus has top_k={top_k} but the row has no top-k arrays")
        if row.topk_ids.shape != (num_tokens, top_k) or row.topk_logprobs.shape != (num_tokens, top_k):
            raise CorpusError(
                f"row {row.id}: top-k arrays have shape {row.topk_ids.shape}/{row.topk_logprobs.shape}, "
                f"expected ({num_tokens}, {top_k})"
            )
        topk_ids.append(row.topk_ids)
        topk_codes.append(encoding.encode_topk_logprobs(row.topk_logprobs, grid))
        sampled_codes.append(encoding.encode_logprobs(row.sampled_logprobs, grid))
    columns = {
        "id": pa.array([r.id for r in rows], type=pa.string()),
        "prompt_id": pa.array([r.prompt_id for r in rows], type=pa.string()),
        "sample_index": pa.array([r.sample_index for r in rows], type=pa.int32()),
        "messages": pa.array([dumps(list(r.messages)) for r in rows], type=pa.string()),
        "prompt_text": pa.array([r.prompt_text for r in rows], type=pa.string()),
        "response_text": pa.array([r.response_text for r in rows], type=pa.string()),
        "reference": pa.array([r.reference for r in rows], type=pa.string()),
        "origin": pa.array([dumps(r.origin) for r in rows], type=pa.string()),
        "finish_reason": pa.array([r.finish_reason for r in rows], type=pa.string()),
        "prompt_len": pa.array([len(r.prompt_ids) for r in rows], type=pa.int32()),
        "response_len": pa.array([len(r.response_ids) for r in rows], type=pa.int32()),
        "prompt_ids": _list_array([r.prompt_ids for r in rows]),
        "response_ids": _list_array([r.response_ids for r in rows]),
        "topk_ids": _list_array(topk_ids),
        "topk_logprob_codes": _list_array(topk_codes),
        "sampled_logprob_codes": _list_array(sampled_codes),
    }
    schema = arrow_schema()
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


def write_parquet(table, path: Path, *, metadata: dict[str, str] | None = None,
                  row_group_size: int = ROW_GROUP_SIZE) -> None:
    """Write ``table`` to ``path`` with the corpus's encodings (no atomicity here)."""
    import pyarrow.parquet as pq

    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    names = table.schema.names
    pq.write_table(
        table,
        path,
        row_group_size=row_group_size,
        compression="zstd",
        compression_level=ZSTD_LEVEL,
        use_dictionary=[n for n in names if n not in BSS_COLUMNS],
        column_encoding={f"{n}.list.element": "BYTE_STREAM_SPLIT" for n in BSS_COLUMNS if n in names},
        write_statistics=False,
    )


class CorpusWriter:
    """Writes one worker's shards of a corpus directory; see the module docstring."""

    def __init__(
        self,
        out_dir: str | Path,
        *,
        identity: dict[str, Any],
        num_shards: int,
        top_k: int,
        worker: tuple[int, int] = (0, 1),
        logprob_scale: int = DEFAULT_LOGPROB_SCALE,
        logprob_alpha: float = DEFAULT_LOGPROB_ALPHA,
        row_group_size: int = ROW_GROUP_SIZE,
    ) -> None:
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        if not 0 <= worker[0] < worker[1]:
            raise ValueError(f"worker must be (i, N) with 0 <= i < N, got {worker}")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        self.out_dir = Path(out_dir)
        self.num_shards = num_shards
        self.top_k = top_k
        self.worker = worker
        self.grid = encoding.Grid(int(logprob_scale), float(logprob_alpha), LOGPROB_MAX_STEP)
        self.row_group_size = row_group_size
        self.identity = {**identity, "num_shards": num_shards, "top_k": top_k, **self.grid.manifest(),
                         "schema_version": SCHEMA_VERSION}
        self.identity_sha256 = identity_hash(self.identity)
        self._shards: dict[int, dict[str, Any]] = {}

    # -- run identity -------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        name = MANIFEST_NAME if self.worker[1] == 1 else worker_manifest_name(*self.worker)
        return self.out_dir / name

    def check_identity(self) -> None:
        """Refuse an ``out_dir`` that holds a different run (names the differing keys)."""
        run_path = self.out_dir / RUN_NAME
        if not run_path.exists():
            return
        try:
            existing = json.loads(run_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CorpusError(f"{run_path}: unreadable run file ({exc}); use a new --out") from None
        if existing.get("identity_sha256") == self.identity_sha256:
            return
        old, new = _flatten(existing.get("identity", {})), _flatten(self.identity)
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        # the row list's hash follows from the rest; name it only when it is the sole difference
        if len(keys) > 1 and "rows_sha256" in keys:
            keys.remove("rows_sha256")
        details = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:8])
        raise CorpusError(
            f"{self.out_dir}: holds a corpus generated with different settings ({details}). "
            "Use a new --out, or the original settings to resume it."
        )

    def finished_manifest(self) -> dict[str, Any] | None:
        """This worker's manifest if it (or an unsharded manifest.json) is already complete."""
        for path in (self.manifest_path, self.out_dir / MANIFEST_NAME):
            if path.is_file():
                try:
                    manifest = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError):
                    continue
                if manifest.get("identity_sha256") == self.identity_sha256:
                    return manifest
        return None

    def start(self) -> None:
        """Create the folders and record the run identity (idempotent)."""
        self.check_identity()
        (self.out_dir / DATA_DIR).mkdir(parents=True, exist_ok=True)
        # Temp files a killed run left: this worker's shards' (other workers may be writing theirs
        # right now) and any manifest, card or run file whose writer is gone.
        mine = {f".{self.shard_path(j).name}" for j in self.my_shards()}
        mine |= {f".{self._record_path(j).name}" for j in self.my_shards()}
        remove_orphan_temps(self.out_dir / DATA_DIR, mine)
        remove_orphan_temps(self.out_dir)
        run_path = self.out_dir / RUN_NAME
        if not run_path.exists():
            payload = {"format": FORMAT_NAME, "identity_sha256": self.identity_sha256, "identity": self.identity}
            atomic_write_bytes(run_path, json.dumps(payload, indent=2, ensure_ascii=False).encode("utf-8"))

    # -- shards -------------------------------------------------------------------------------
    def my_shards(self) -> list[int]:
        """Shard indices this worker writes: shard j belongs to worker j mod N."""
        index, count = self.worker
        return [j for j in range(self.num_shards) if j % count == index]

    def shard_path(self, index: int) -> Path:
        return self.out_dir / shard_name(index, self.num_shards)

    def _record_path(self, index: int) -> Path:
        """Where shard ``index``'s entry (rows, tokens, bytes, sha256) is recorded when it is committed."""
        path = self.shard_path(index)
        return path.with_name(f".{path.name}.entry.json")

    def completed_shards(self) -> set[int]:
        """Shards of this worker already committed by this same run, each verified against the
        checksum recorded when it was committed. A shard without its record (killed between the
        two renames) or whose bytes no longer match it (damaged on disk) is removed and rewritten;
        the run says so."""
        done = set()
        for index in self.my_shards():
            path, record_path = self.shard_path(index), self._record_path(index)
            if not path.is_file():
                record_path.unlink(missing_ok=True)
                continue
            try:
                entry = json.loads(record_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                entry = None
            if (entry is not None and entry.get("identity_sha256") == self.identity_sha256
                    and entry.get("bytes") == path.stat().st_size and entry.get("sha256") == file_sha256(path)):
                self._shards[index] = {k: v for k, v in entry.items() if k != "identity_sha256"}
                done.add(index)
                continue
            if entry is not None and entry.get("identity_sha256") == self.identity_sha256:
                print(f"{path}: damaged since it was written (checksum differs from the one recorded at commit); "
                      "rewriting it", file=sys.stderr)
            path.unlink()
            record_path.unlink(missing_ok=True)
        return done

    def write_shard(self, index: int, rows: Sequence[CorpusRow], skipped: dict[str, int] | None = None) -> dict[str, Any]:
        """Encode and atomically write shard ``index``, then record its entry (checksum included):
        the record is what resume and ``finish`` trust. ``skipped``: rows left out of it, by reason."""
        assert index in self.my_shards(), (index, self.worker)
        table = rows_to_table(rows, self.top_k, self.grid)
        path = self.shard_path(index)
        metadata = {"distill.identity_sha256": self.identity_sha256, "distill.shard_index": str(index),
                    "distill.top_k": str(self.top_k), **{f"distill.{k}": str(v) for k, v in self.grid.manifest().items()}}
        atomic_write_with(path, lambda tmp: write_parquet(table, tmp, row_group_size=self.row_group_size, metadata=metadata))
        entry = self._shard_entry(index)
        if skipped:
            entry["skipped"] = dict(sorted(skipped.items()))
        record = {**entry, "identity_sha256": self.identity_sha256}
        atomic_write_bytes(self._record_path(index), json.dumps(record, indent=1).encode("utf-8"))
        self._shards[index] = entry
        return entry

    def skipped_rows(self) -> dict[str, int]:
        """Rows this worker's committed shards left out, by reason."""
        total: dict[str, int] = {}
        for entry in self._shards.values():
            for reason, count in entry.get("skipped", {}).items():
                total[reason] = total.get(reason, 0) + count
        return total

    def _shard_entry(self, index: int) -> dict[str, Any]:
        import pyarrow.parquet as pq

        path = self.shard_path(index)
        table = pq.read_table(path, columns=["prompt_len", "response_len"])
        return {
            "index": index,
            "path": shard_name(index, self.num_shards),
            "rows": table.num_rows,
            "prompt_tokens": int(np.asarray(table["prompt_len"]).sum()),
            "response_tokens": int(np.asarray(table["response_len"]).sum()),
            "bytes": path.stat().st_size,
            "sha256": file_sha256(path),
        }

    # -- commit -------------------------------------------------------------------------------
    def finish(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write the dataset card, then the manifest (last: it is the commit marker)."""
        missing = [j for j in self.my_shards() if j not in self._shards or not self.shard_path(j).is_file()]
        if missing:
            raise CorpusError(f"{self.out_dir}: cannot finish, shards {missing[:5]} were not written (or not verified)")
        shards = [self._shards[j] for j in self.my_shards()]
        extra = dict(extra or {})
        manifest: dict[str, Any] = {
            "format": FORMAT_NAME,
            "schema_version": SCHEMA_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "identity_sha256": self.identity_sha256,
            "top_k": self.top_k,
            "encoding": {
                **self.grid.manifest(),
                "topk_logprob_codes": "per position: round(F(-logprob)) of the top entry, then deltas of consecutive codes; "
                                      "F has scale*exp(-alpha*u) codes per nat at u nats, at least 1/max_step "
                                      "(distill.corpus.encoding.Grid)",
                "parquet": "zstd level %d; BYTE_STREAM_SPLIT on %s" % (ZSTD_LEVEL, ", ".join(BSS_COLUMNS)),
            },
            "worker": {"index": self.worker[0], "count": self.worker[1]},
            "num_shards_total": self.num_shards,
            "rows": sum(s["rows"] for s in shards),
            "prompt_tokens": sum(s["prompt_tokens"] for s in shards),
            "response_tokens": sum(s["response_tokens"] for s in shards),
            "bytes": sum(s["bytes"] for s in shards),
            **extra,
            "shards": shards,
        }
        manifest.setdefault("tokenizer_fingerprint", self.identity.get("tokenizer_fingerprint", ""))
        manifest.setdefault("teacher", self.identity.get("teacher", {}))
        card = dataset_card(manifest)
        atomic_write_bytes(self.out_dir / CARD_NAME, card.encode("utf-8"))
        atomic_write_bytes(self.manifest_path, json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8"))
        for index in self.my_shards():  # the manifest now holds the entries
            self._record_path(index).unlink(missing_ok=True)
        return manifest


def dataset_card(manifest: dict[str, Any]) -> str:
    """A Hugging Face dataset card: YAML config so ``load_dataset(DIR)`` finds the shards."""
    teacher = manifest.get("teacher", {})
    gen = manifest.get("generation", {})
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        f"    path: {DATA_DIR}/train-*.parquet",
        "tags:",
        "- distillation",
        "- synthetic",
        "---",
        "",
        "# Distillation corpus",
        "",
        f"Written by `distill generate` (schema v{manifest['schema_version']}). One row per (prompt, sample):",
        "the teacher's prompt and response token ids and, at every response position, the teacher's",
        f"top-{manifest['top_k']} token ids and log-probs of its raw (temperature-1) distribution.",
        "",
        f"- teacher: `{teacher.get('name', teacher.get('model', '?'))}` ({teacher.get('backend', '?')})",
        f"- tokenizer fingerprint: `{manifest.get('tokenizer_fingerprint', '')[:16]}`",
        f"- generation: `{json.dumps(gen, sort_keys=True)}`",
        "",
        "Log-probs are stored as integer codes; decode with `distill.corpus.open_corpus(DIR)`, or by hand:",
        "per position, `logprobs = -Grid(logprob_scale, logprob_alpha, logprob_max_step).inverse(cumsum(codes))`",
        "(`distill.corpus.encoding`; the three values are in manifest.json's `encoding`).",
        "`manifest.json` holds the shard checksums, the full generation parameters and statistics.",
        "",
    ]
    return "\n".join(lines)
