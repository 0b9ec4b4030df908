"""Seed prompts in: JSONL, CSV, Parquet, or a `datasets.save_to_disk` folder -> PromptRecords.

A record is ``{"prompt": str}`` or ``{"messages": [{"role", "content"}, ...]}`` (OpenAI chat
format, ending with a user turn), with optional ``id``, ``reference`` and ``system`` (a system
turn put before ``prompt``). Blank lines are ignored; other fields are kept in ``origin``.

Every bad record is an error naming ``file:line`` (JSONL/CSV) or ``file:row N`` (Parquet,
datasets folders), and nothing is returned, so no stage writes a partial output from bad input.
With ``skip_invalid=True`` bad records are dropped and counted per reason instead. Exact
duplicates (same normalized messages) are collapsed to their first occurrence and counted.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from distill.config import ConfigError
from distill.prompts import PromptRecord, prompt_hash

ROLES = ("system", "user", "assistant")
SKIP_REASONS = ("malformed_json", "not_utf8", "not_an_object", "missing_prompt", "empty_prompt", "wrong_type",
                "bad_messages", "duplicate_id", "prompt_too_long")
MAX_ERRORS_SHOWN = 5
_BAD_BYTES = re.compile("[\udc80-\udcff]")


class InputError(ConfigError):
    """Bad seed input; the message names file and line (a ConfigError: the CLI exits 2)."""


class _Bad(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class IngestResult:
    """Valid, de-duplicated records in input order, and what was dropped."""

    records: list[PromptRecord]
    files: list[str]
    num_read: int = 0
    duplicates: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def stats(self) -> dict[str, Any]:
        return {"files": self.files, "records_read": self.num_read, "prompts": len(self.records),
                "duplicates": self.duplicates, "skipped": dict(sorted(self.skipped.items()))}


def _raw_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, raw value or _Bad) for every record of one file or folder, in order."""
    if path.is_dir():
        yield from _datasets_folder(path)
        return
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        yield from _jsonl(path)
    elif suffix == ".csv":
        yield from _csv(path)
    elif suffix == ".parquet":
        yield from _parquet(path)
    else:
        raise InputError(f"{path}: unsupported seed file type '{suffix}' (use .jsonl, .csv, .parquet or a datasets folder)")


def _jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a BOM must not cost line 1
            except UnicodeDecodeError as exc:
                yield where, _Bad("not_utf8", f"{where}: not valid UTF-8 (byte {exc.start})")
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, _Bad("malformed_json", f"{where}: malformed JSON: {exc.msg} (column {exc.colno})")


def _csv(path: Path) -> Iterator[tuple[str, Any]]:
    # surrogateescape keeps undecodable bytes as lone surrogates, so the bad record (not the
    # whole file) is reported, and --skip-invalid can skip just that record
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None:
        return
    if not ({"prompt", "messages"} & set(reader.fieldnames)):
        raise InputError(f"{path}:1: CSV header has no 'prompt' (or 'messages') column: {reader.fieldnames}")
    start = 2
    for row in reader:
        where = f"{path}:{start}"
        start = reader.line_num + 1
        record = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
        if not record:
            continue
        if any(isinstance(v, str) and _BAD_BYTES.search(v) for v in record.values()):
            yield where, _Bad("not_utf8", f"{where}: not valid UTF-8")
            continue
        if isinstance(record.get("messages"), str):
            try:
                record["messages"] = json.loads(record["messages"])
            except json.JSONDecodeError as exc:
                yield where, _Bad("malformed_json", f"{where}: 'messages' column is not valid JSON: {exc.msg}")
                continue
        yield where, record


def _table_records(table: Any, label: str) -> Iterator[tuple[str, Any]]:
    for number, row in enumerate(table.to_pylist(), start=1):
        yield f"{label}:row {number}", {k: v for k, v in row.items() if v is not None}


def _parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
    yield from _table_records(table, str(path))


def _datasets_folder(path: Path) -> Iterator[tuple[str, Any]]:
    if not ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        raise InputError(f"{path}: a folder of seeds must be a `datasets.save_to_disk` folder (no dataset_info.json)")
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise InputError(f"{path}: DatasetDict has no 'train' split (splits: {list(loaded)})")
        loaded = loaded["train"]
    yield from _table_records(loaded.data.table if hasattr(loaded.data, "table") else loaded.data, str(path))


def parse_record(value: Any, where: str) -> tuple[tuple[dict[str, str], ...], str | None, str | None, dict[str, Any]]:
    """Validate one raw record -> (messages, user id, reference, extra fields); raises _Bad."""
    if not isinstance(value, dict):
        raise _Bad("not_an_object", f"{where}: expected an object with 'prompt' or 'messages', got {type(value).__name__}")
    for name in ("id", "reference", "system"):
        if name in value and value[name] is not None and not isinstance(value[name], (str, int) if name == "id" else str):
            raise _Bad("wrong_type", f"{where}: field '{name}' must be a string, got {type(value[name]).__name__}")
    if "prompt" in value and "messages" in value:
        raise _Bad("bad_messages", f"{where}: give either 'prompt' or 'messages', not both")
    if "prompt" in value:
        prompt = value["prompt"]
        if not isinstance(prompt, str):
            raise _Bad("wrong_type", f"{where}: field 'prompt' must be a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise _Bad("empty_prompt", f"{where}: field 'prompt' is empty")
        messages: list[dict[str, str]] = []
        if value.get("system"):
            messages.append({"role": "system", "content": value["system"]})
        messages.append({"role": "user", "content": prompt})
    elif "messages" in value:
        raw = value["messages"]
        if not isinstance(raw, list) or not raw:
            raise _Bad("wrong_type", f"{where}: field 'messages' must be a non-empty list of {{role, content}} objects")
        messages = []
        for i, message in enumerate(raw):
            if not isinstance(message, dict) or set(message) - {"role", "content", "name"} or "role" not in message:
                raise _Bad("bad_messages", f"{where}: messages[{i}] must be an object with 'role' and 'content'")
            if message["role"] not in ROLES:
                raise _Bad("bad_messages", f"{where}: messages[{i}].role must be one of {', '.join(ROLES)}, got {message['role']!r}")
            if not isinstance(message.get("content"), str):
                raise _Bad("wrong_type", f"{where}: messages[{i}].content must be a string")
            messages.append({"role": message["role"], "content": message["content"]})
        if messages[-1]["role"] != "user":
            raise _Bad("bad_messages", f"{where}: the last message must be a user turn, got {messages[-1]['role']!r}")
        if not messages[-1]["content"].strip():
            raise _Bad("empty_prompt", f"{where}: the last user message is empty")
        if value.get("system"):
            messages.insert(0, {"role": "system", "content": value["system"]})
    else:
        raise _Bad("missing_prompt", f"{where}: record has no 'prompt' or 'messages' field")
    user_id = None if value.get("id") is None else str(value["id"])
    extra = {k: v for k, v in value.items() if k not in ("prompt", "messages", "id", "reference", "system")}
    return tuple(messages), user_id, value.get("reference"), extra


def ingest(paths: str | Path | Sequence[str | Path], *, skip_invalid: bool = False) -> IngestResult:
    """Read, validate and de-duplicate seed prompts from one or more files/folders."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files = [Path(p) for p in paths]
    result = IngestResult(records=[], files=[str(p) for p in files])
    errors: list[str] = []
    reasons: Counter[str] = Counter()
    seen_hashes: set[str] = set()
    seen_ids: dict[str, str] = {}
    for path in files:
        if not path.exists():
            raise InputError(f"--prompts: {path}: no such file or folder")
        for where, value in _raw_records(path):
            result.num_read += 1
            try:
                if isinstance(value, _Bad):
                    raise value
                messages, user_id, reference, extra = parse_record(value, where)
                if user_id is not None and user_id in seen_ids:
                    raise _Bad("duplicate_id", f"{where}: id {user_id!r} already used at {seen_ids[user_id]}")
            except _Bad as bad:
                reasons[bad.reason] += 1
                errors.append(str(bad))
                continue
            key = prompt_hash(messages)
            if key in seen_hashes:
                result.duplicates += 1
                continue
            seen_hashes.add(key)
            if user_id is not None:
                seen_ids[user_id] = where
            origin: dict[str, Any] = {"source": "seed", "file": str(path), "where": where}
            if isinstance(extra.get("origin"), dict):
                # A prompts.jsonl written by `distill augment` carries its lineage: keep it as is.
                origin = {**extra.pop("origin"), "file": str(path), "where": where}
            if user_id is not None:
                origin["seed_id"] = user_id
            if extra:
                origin["fields"] = extra
            result.records.append(PromptRecord(id=key, messages=messages, reference=reference, origin=origin))
    if errors and not skip_invalid:
        raise_errors(errors, reasons)
    result.skipped = dict(reasons)
    if not result.records:
        raise InputError(f"--prompts: no valid prompts in {', '.join(result.files)}")
    return result


def raise_errors(errors: list[str], reasons: Counter[str] | dict[str, int]) -> None:
    """One InputError listing the first few problems and the count per reason."""
    shown = "\n  ".join(errors[:MAX_ERRORS_SHOWN])
    more = f"\n  ... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items()))
    raise InputError(
        f"{len(errors)} invalid seed record(s) ({counts}); nothing was written:\n  {shown}{more}\n"
        "Fix them, or pass --skip-invalid to skip such records (counts go into the manifest)."
    )


def read_prompts(paths: str | Path | Sequence[str | Path], *, skip_invalid: bool = False) -> list[PromptRecord]:
    """The valid, de-duplicated PromptRecords of ``paths`` (see ``ingest`` for the counts)."""
    return ingest(paths, skip_invalid=skip_invalid).records
