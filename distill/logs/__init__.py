"""`distill logs`: production request logs -> a prompt file that `distill generate` / `augment` read.

    read (files, folders, globs, s3:// prefixes; gzip or plain JSONL; openai | litellm | bedrock)
      -> filter (errors, --since/--until, --model, --where on request metadata, --max-turns)
      -> the prompt: the conversation up to its last user turn (assistant turns kept as context)
      -> scrub secrets and personal data (typed placeholders, counted per kind)
      -> --max-prompt-tokens in the teacher's tokenizer
      -> dedup: exact, near-duplicate (MinHash), --decontaminate SUITE
      -> a conversation logged turn by turn collapses to its longest request
      -> --split into train / validation by conversation (no conversation on both sides)

OUT holds ``prompts.jsonl`` (and ``validation.jsonl`` with ``--split``), one record per prompt in
the seed format (``id``, ``messages``, the logged ``response``, ``log``: file, line, request id,
time, model, metadata), ``report.jsonl`` (every log record: accepted, or the reason it was not),
and ``logs.json`` (counts per reason, scrubbed findings per kind, settings), written last. Nothing
unscrubbed is written: prompts, responses and metadata values all pass the scrubber, and the
report and messages name records by file and line, never by their text. When nothing is left
after filtering, nothing is written and the command exits 7 with the counts per reason.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import glob
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from json.encoder import encode_basestring  # the C encoder json.dumps(ensure_ascii=False) uses
from pathlib import Path
from typing import Any, Iterator, Literal

from distill.config import ConfigError, bad, field
from distill.errors import NothingToDo

try:  # orjson, when installed, parses and writes JSON lines several times faster
    import orjson as _orjson

    def _loads(line: bytes) -> Any:
        return _orjson.loads(line)

    def _line(obj: Any) -> bytes:
        return _orjson.dumps(obj) + b"\n"

    _DECODE_ERRORS: tuple[type[Exception], ...] = (_orjson.JSONDecodeError, UnicodeDecodeError)
except ImportError:  # pragma: no cover - the standard library does the same, slower
    def _loads(line: bytes) -> Any:
        return json.loads(line)

    def _line(obj: Any) -> bytes:
        return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")

    _DECODE_ERRORS = (json.JSONDecodeError, UnicodeDecodeError)


@dataclass(frozen=True)
class LogsConfig:
    """Config of ``distill logs`` (YAML keys = these names; flags override)."""

    logs: tuple[str, ...] = field((), help="log files, folders (read recursively), globs or s3:// prefixes; gzip or plain "
                                           "JSONL; repeatable", flag="--logs", default_text="required")
    out: str = field("", help="output folder: prompts.jsonl, validation.jsonl, report.jsonl, logs.json")
    format: Literal["auto", "openai", "litellm", "bedrock"] = field(
        "auto", help="the log format; auto: recognized per record (openai request/response JSONL, LiteLLM "
                     "StandardLoggingPayload, Bedrock model-invocation logs)")
    since: str = field("", help="keep requests at or after this time (ISO 8601; no zone = UTC)", default_text="no limit")
    until: str = field("", help="keep requests before this time (ISO 8601; no zone = UTC)", default_text="no limit")
    model: tuple[str, ...] = field((), help="keep requests to these model ids (shell patterns, e.g. 'gpt-4o*'); "
                                            "repeatable", default_text="any", separator=",")
    keep_errors: bool = field(False, help="keep requests that failed (errors are dropped by default)")
    where: str = field("", help="predicate on request metadata: ==, !=, in, not in, contains, exists(), and/or/not "
                                "(docs/logs.md)", default_text="none")
    max_turns: int = field(0, help="drop prompts with more user turns than this (0: no limit)")
    max_prompt_tokens: int = field(0, help="drop prompts longer than this in --tokenizer's tokens, chat template "
                                           "included (0: no limit)")
    tokenizer: str = field("", help="teacher recipe, recipe YAML or tokenizer folder for --max-prompt-tokens",
                           default_text="none")
    scrub: bool = field(True, help="replace secrets and personal data with typed placeholders (--no-scrub keeps "
                                   "the text as logged)")
    scrubber: Literal["regex", "presidio"] = field("regex", help="regex: built-in patterns; presidio: also names "
                                                                 "and places (the presidio extra)")
    presidio_model: str = field("en_core_web_lg", help="with --scrubber presidio: the spaCy model (a name installed "
                                                       "with `python -m spacy download`, or a folder)")
    presidio_entities: tuple[str, ...] = field(("PERSON", "LOCATION"), separator=",",
                                               help="with --scrubber presidio: the Presidio entities to replace "
                                                    "(repeat, or comma-separated), e.g. PERSON, LOCATION, IBAN_CODE")
    near_dup_threshold: float = field(0.0, help="drop a single-turn prompt whose word-3-gram Jaccard with a kept one "
                                                "is at least this, e.g. 0.9 (0: off; its index holds every kept "
                                                "prompt's shingles, so memory grows with the log)")
    decontaminate: str = field("", help="eval suite (name, file or folder) whose prompts must not appear", default_text="none")
    decontaminate_ngram: int = field(13, help="shared word n-gram length that counts as contamination")
    split: float = field(0.0, help="share of conversations for validation.jsonl (0: none)")
    responses: bool = field(True, help="keep each request's logged response in the record (scrubbed), for "
                                       "`generate --responses logged`")
    skip_invalid: bool = field(False, help="count malformed records and go on instead of stopping at the first")
    seed: int = field(0, help="seed of the split")
    workers: int = field(0, help="processes that parse, filter and scrub while the main one deduplicates and writes "
                                 "(0: one per CPU core, at most 8, for logs over 32 MB; 1: all in one process)")
    progress: bool = field(True, help="show a progress bar")

    def __post_init__(self) -> None:
        if not self.logs:
            bad("logs", "give at least one log file, folder, glob or s3:// prefix")
        if not self.out:
            bad("out", "required")
        for name in ("since", "until"):
            if getattr(self, name):
                try:
                    _time_bound(getattr(self, name))
                except ValueError as exc:
                    bad(name, str(exc))
        if self.since and self.until and _time_bound(self.since) >= _time_bound(self.until):
            bad("until", f"{self.until} is not after --since {self.since}")
        if self.max_turns < 0 or self.max_prompt_tokens < 0:
            bad("max_turns" if self.max_turns < 0 else "max_prompt_tokens", "must be >= 0")
        if self.max_prompt_tokens and not self.tokenizer:
            bad("max_prompt_tokens", "needs --tokenizer (the teacher's: a recipe name, YAML or tokenizer folder)")
        if not 0 <= self.near_dup_threshold <= 1:
            bad("near_dup_threshold", f"must be in [0, 1], got {self.near_dup_threshold}")
        if not 0 <= self.split < 1:
            bad("split", f"must be in [0, 1), got {self.split}")
        if self.workers < 0:
            bad("workers", f"must be >= 0, got {self.workers}")
        if self.decontaminate_ngram < 1:
            bad("decontaminate_ngram", "must be >= 1")
        if self.where:
            from distill.logs.where import Where

            Where(self.where)


def _time_bound(text: str) -> _dt.datetime:
    from distill.logs.readers import NotThisFormat, parse_time

    try:
        parsed = parse_time(text)
    except NotThisFormat as exc:
        raise ValueError(str(exc)) from None
    assert parsed is not None
    return parsed


# -- input ------------------------------------------------------------------------------------

def expand_inputs(specs: tuple[str, ...]) -> list[str]:
    """Files to read, in a stable order: folders recursively, globs expanded, s3:// prefixes listed."""
    files: list[str] = []
    for spec in specs:
        if "://" in spec:
            fs, root = _remote(spec)
            found = sorted(p for p in fs.find(root) if not p.rsplit("/", 1)[-1].startswith("."))
            if not found:
                raise ConfigError(f"--logs {spec}: no objects under this prefix")
            protocol = spec.split("://", 1)[0]
            files += [f"{protocol}://{p}" for p in found]
            continue
        path = Path(spec)
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif any(ch in spec for ch in "*?["):
            found = sorted(p for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        elif path.is_file():
            found = [str(path)]
        else:
            raise ConfigError(f"--logs {spec}: no such file or folder")
        if not found:
            raise ConfigError(f"--logs {spec}: no files")
        files += found
    return files


POOL_MIN_BYTES = 32 << 20  # below this much log, starting worker processes costs more than it saves


def _total_bytes(files: list[str]) -> int:
    total = 0
    for path in files:
        if "://" in path:
            fs, root = _remote(path)
            total += fs.size(root) or 0
        else:
            total += os.path.getsize(path)
    return total


def _remote(spec: str):
    try:
        import fsspec
    except ImportError:
        raise ConfigError(f"--logs {spec}: reading object storage needs fsspec and its driver (pip install s3fs)") from None
    try:
        fs, root = fsspec.core.url_to_fs(spec)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"--logs {spec}: {exc}") from None
    return fs, root


def _open(path: str) -> io.BufferedIOBase:
    if "://" in path:
        fs, root = _remote(path)
        raw = fs.open(root, "rb")
    else:
        raw = open(path, "rb")
    head = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
    if head == b"\x1f\x8b" or path.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw)
    return raw


def read_records(files: list[str]) -> Iterator[tuple[str, int, bytes]]:
    """(file, line number, line) for every non-blank line."""
    for path in files:
        with _open(path) as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    yield path, number, line


# -- the run ----------------------------------------------------------------------------------

def _ids(turns: list[dict[str, str]]) -> tuple[str, list[str]]:
    """The prompt's id (``distill.prompts.prompt_hash``, computed here with each text normalized
    once) and the hashes of every prefix of the conversation that ends with a user turn (the last
    is the whole conversation)."""
    # json.dumps(canon, ensure_ascii=False) spelled out, each string through the json module's C
    # encoder once: the same bytes as prompt_hash, and the per-turn pieces for the chain
    pairs = [_canonical_pair(t["role"], t["content"]) for t in turns]
    pid = hashlib.sha256(("[" + ", ".join(pairs) + "]").encode("utf-8")).hexdigest()[:16]
    digest = hashlib.sha256()
    chain = []
    for turn, pair in zip(turns, pairs):
        digest.update(pair.encode("utf-8"))
        if turn["role"] == "user":
            chain.append(digest.copy().hexdigest()[:16])
    return pid, chain


_PAIRS: dict[tuple[str, str], str] = {}


def _canonical_pair(role: str, content: str) -> str:
    """``json.dumps([role, normalize_text(content)], ensure_ascii=False)``, remembered for short
    repeated turns (a system prompt recurs in every request of an application)."""
    from distill.prompts import normalize_text

    key = (role, content)
    pair = _PAIRS.get(key)
    if pair is None:
        pair = f"[{encode_basestring(role)}, {encode_basestring(normalize_text(content))}]"
        if len(content) <= 2000:
            if len(_PAIRS) >= 20_000:
                _PAIRS.clear()
            _PAIRS[key] = pair
    return pair


def _scrub_value(value: Any, scrubber: Any) -> Any:
    if isinstance(value, str):
        return scrubber.scrub(value)
    if isinstance(value, list):
        return [_scrub_value(v, scrubber) for v in value]
    if isinstance(value, dict):
        return {k: _scrub_value(v, scrubber) for k, v in value.items()}
    return value


def _tokenizer(spec: str) -> Any:
    from transformers import AutoTokenizer

    path = Path(spec)
    if path.is_dir() and (path / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(path))
    from distill.teachers import teacher_recipe

    recipe = teacher_recipe(spec)
    return AutoTokenizer.from_pretrained(recipe.tokenizer or recipe.model, revision=recipe.tokenizer_revision)


class _Prepare:
    """Everything about one record that needs no other record: parse, read, filter, scrub, hash,
    suite check. Runs in the worker processes (or in-process with one worker)."""

    def __init__(self, config: LogsConfig) -> None:
        from distill.logs.readers import READERS
        from distill.logs.scrub import Scrubber, presidio_detector
        from distill.logs.where import Where

        self.config = config
        self.readers = READERS
        presidio = config.scrubber == "presidio" and config.scrub
        self.scrubber = Scrubber(presidio_detector(config.presidio_entities, config.presidio_model) if presidio else None)
        self.where = Where(config.where) if config.where else None
        self.since = _time_bound(config.since) if config.since else None
        self.until = _time_bound(config.until) if config.until else None
        self.tokenizer = _tokenizer(config.tokenizer) if config.max_prompt_tokens else None
        self.suite = None
        if config.decontaminate:
            from distill.decontaminate import load_suite_index

            self.suite, _, _ = load_suite_index(config.decontaminate, config.decontaminate_ngram)

    def batch(self, lines: list[tuple[str, int, bytes]]) -> tuple[list[tuple], dict[str, Any]]:
        """Results in input order, and the batch's counts (formats, parts left out, scrub findings,
        --where fields seen)."""
        self.formats: Counter = Counter()
        self.dropped: Counter = Counter()
        self.fields_seen: set[str] = set()
        before = Counter(self.scrubber.counts)
        results = [self.one(path, number, line) for path, number, line in lines]
        counts = {"formats": self.formats, "dropped": self.dropped, "fields_seen": self.fields_seen,
                  "scrubbed": self.scrubber.counts - before}
        return results, counts

    def one(self, path: str, number: int, line: bytes) -> tuple:
        from distill.logs.readers import NotThisFormat, detect

        where = f"{path}:{number}"
        try:
            record = _loads(line)
        except _DECODE_ERRORS as exc:
            return ("bad", where, f"not valid JSON ({getattr(exc, 'msg', exc)})")
        if not isinstance(record, dict):
            return ("bad", where, f"expected a JSON object, got {type(record).__name__}")
        name = self.config.format if self.config.format != "auto" else detect(record)
        if name is None:
            return ("bad", where, "not a record of any known log format (openai, litellm, bedrock); name one with --format")
        try:
            entry = self.readers[name](record)
        except NotThisFormat as exc:
            return ("bad", where, f"not a {name} log record: {exc}")
        self.formats[name] += 1
        self.dropped.update(entry.dropped)
        reason, kept = self.decide(entry)
        if reason is not None:
            return ("reject", where, entry.request_id, reason)
        record, key, text, prefixes, conversation, whole, group, side = kept
        record["log"] = {"file": path, "line": number, **record["log"],
                         "group": hashlib.sha256(str(group).encode()).hexdigest()[:16]}
        # the output line as written, and what the second pass needs to decide on it without parsing it
        meta = _line([conversation, whole, side, where, entry.request_id, record["id"]])
        return ("keep", where, entry.request_id, key, text, prefixes, conversation, meta + _line(record))

    def decide(self, entry: Any) -> tuple[str | None, Any]:
        """(rejection reason, None) or (None, (record, prompt key, text for the near-duplicate
        index or None, conversation-prefix hashes, conversation))."""
        config = self.config
        if not entry.ok and not config.keep_errors:
            return "error", None
        if self.since or self.until:
            if entry.timestamp is None:
                return "no_timestamp", None
            if (self.since and entry.timestamp < self.since) or (self.until and entry.timestamp >= self.until):
                return "outside_window", None
        if config.model and not any(fnmatch.fnmatchcase(entry.model or "", p) for p in config.model):
            return "model", None
        if self.where is not None:
            from distill.logs.where import _MISSING, Where

            self.fields_seen.update(f for f in self.where.fields if Where.lookup(entry.metadata, f) is not _MISSING)
            if not self.where(entry.metadata):
                return "metadata", None
        last_user = max((i for i, t in enumerate(entry.turns) if t["role"] == "user"), default=None)
        if last_user is None:
            return "no_user_turn", None
        turns = entry.turns[: last_user + 1]
        if config.max_turns and sum(t["role"] == "user" for t in turns) > config.max_turns:
            return "too_many_turns", None
        scrub = self.scrubber.scrub if config.scrub else (lambda text: text)
        turns = [{"role": t["role"], "content": scrub(t["content"])} for t in turns]
        if self.tokenizer is not None:
            from distill.prompts import encode_prompt

            if len(encode_prompt(self.tokenizer, turns)) > config.max_prompt_tokens:
                return "too_long", None
        text = turns[-1]["content"]
        if self.suite is not None and self.suite.match(text) is not None:
            return "contaminated", None
        pid, chain = _ids(turns)
        conversation = entry.conversation or ""
        metadata = _scrub_value(entry.metadata, self.scrubber) if config.scrub else entry.metadata
        record: dict[str, Any] = {"id": pid, "messages": turns}
        if config.responses and entry.response is not None:
            record["response"] = scrub(entry.response)
        record["log"] = {"request_id": entry.request_id, "time": entry.timestamp.isoformat() if entry.timestamp else None,
                         "model": entry.model, "format": entry.format, "metadata": metadata}
        single = len(turns) == 1 + (turns[0]["role"] == "system")
        # the conversation's group (the split's unit): its id when the log has one, else its first turn
        group = entry.conversation or chain[0]
        side = "train"
        if config.split:
            draw = int(hashlib.sha256(f"{config.seed}:{group}".encode()).hexdigest()[:12], 16) / 16 ** 12
            side = "validation" if draw < config.split else "train"
        return None, (record, int(pid, 16), text if single and config.near_dup_threshold > 0 else None, chain[:-1],
                      conversation, chain[-1], group, side)


_WORKER: _Prepare | None = None


def _worker_init(config: LogsConfig) -> None:
    global _WORKER
    _WORKER = _Prepare(config)


def _worker_batch(lines: list[tuple[str, int, bytes]]) -> tuple[list[tuple], dict[str, Any]]:
    assert _WORKER is not None
    return _WORKER.batch(lines)


def _batches(files: list[str], size: int = 2000) -> Iterator[list[tuple[str, int, bytes]]]:
    batch: list[tuple[str, int, bytes]] = []
    for item in read_records(files):
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _prepared(config: LogsConfig, files: list[str], workers: int) -> Iterator[tuple[list[tuple], dict[str, Any]]]:
    """Batches of prepared records, in input order: in this process, or in ``workers`` processes
    while this one deduplicates and writes."""
    if workers <= 1:
        local = _Prepare(config)
        for batch in _batches(files):
            yield local.batch(batch)
        return
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init, initargs=(config,)) as pool:
        yield from pool.imap(_worker_batch, _batches(files), chunksize=1)


def run(config: LogsConfig) -> dict[str, Any]:
    """Read, filter, scrub and dedup the logs into ``config.out``; returns the summary (logs.json)."""
    from tqdm.auto import tqdm

    from distill.atomic import atomic_write_text
    from distill.lock import FolderLock

    started = time.perf_counter()
    files = expand_inputs(config.logs)
    out = Path(config.out)
    lock = FolderLock(out.parent if out.parent != Path("") else Path("."), f".{out.name}.distill-logs.lock",
                      purpose="distill logs").acquire()
    staging = out.with_name(f".{out.name}.tmp")
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        workers = config.workers or (min(os.cpu_count() or 1, 8) if _total_bytes(files) > POOL_MIN_BYTES else 1)
        reasons: Counter = Counter()
        formats: Counter = Counter()
        dropped_parts: Counter = Counter()
        scrubbed: Counter = Counter()
        fields_seen: set[str] = set()
        seen_exact: set[int] = set()
        prefixes: set[tuple[str, str]] = set()
        near = None
        if config.near_dup_threshold > 0:
            from distill.dedup import NearDuplicateIndex

            near = NearDuplicateIndex(config.near_dup_threshold)
        read = 0
        report = (staging / "report.jsonl").open("wb")
        kept = (staging / "kept.jsonl").open("wb")
        bar = tqdm(desc="logs", unit=" records", disable=not config.progress, mininterval=1.0)
        from distill.stop import STOP

        for results, counts in _prepared(config, files, workers):
            STOP.check("nothing written")
            formats.update(counts["formats"])
            dropped_parts.update(counts["dropped"])
            scrubbed.update(counts["scrubbed"])
            fields_seen |= counts["fields_seen"]
            read += len(results)
            bar.update(len(results))
            kept_out: list[bytes] = []  # one write per batch, not per record
            report_out: list[bytes] = []
            for result in results:
                kind, where = result[0], result[1]
                if kind == "bad":
                    if not config.skip_invalid:
                        raise ConfigError(f"{where}: {result[2]} (--skip-invalid counts such records and goes on)")
                    reasons["unreadable"] += 1
                    report_out.append(_line({"where": where, "decision": "rejected", "reason": "unreadable"}))
                    continue
                request_id = result[2]
                if kind == "reject":
                    reason = result[3]
                else:
                    _, _, _, key, text, chain, conversation, lines = result
                    reason = None
                    if key in seen_exact:
                        reason = "duplicate"
                    elif near is not None and text is not None and near.query(text):
                        reason = "near_duplicate"
                    else:
                        seen_exact.add(key)
                        if near is not None and text is not None:
                            near.add(f"{key:016x}", text)
                        prefixes.update((conversation, h) for h in chain)
                        kept_out.append(lines)  # two lines: the second pass's facts, then the record
                        continue
                reasons[reason] += 1
                report_out.append(_line({"where": where, "request_id": request_id, "decision": "rejected", "reason": reason}))
            kept.write(b"".join(kept_out))
            report.write(b"".join(report_out))
        bar.close()
        kept.close()
        where_expr = None
        if config.where:
            from distill.logs.where import Where

            where_expr = Where(config.where)
        if where_expr is not None:
            unknown = sorted(where_expr.fields - fields_seen)
            if unknown and read:
                raise ConfigError(f"--where names {', '.join(repr(f) for f in unknown)}, which no record's metadata "
                                  f"has ({read} records read); check the spelling")
        # second pass: a request whose conversation continues in a later (longer) request is dropped
        counts = Counter()
        outputs = {"train": (staging / "prompts.jsonl").open("wb")}
        if config.split:
            outputs["validation"] = (staging / "validation.jsonl").open("wb")
        pending: dict[str, list[bytes]] = {side: [] for side in outputs}
        report_out = []

        def flush() -> None:
            for side, chunk in pending.items():
                outputs[side].write(b"".join(chunk))
                chunk.clear()
            report.write(b"".join(report_out))
            report_out.clear()

        with (staging / "kept.jsonl").open("rb") as handle:
            for meta in handle:  # the record's line follows its facts' line; copied, never parsed again
                line = next(handle)
                conversation, whole, side, where, request_id, pid = _loads(meta)
                if (conversation, whole) in prefixes:
                    reasons["conversation_prefix"] += 1
                    report_out.append(_line({"where": where, "request_id": request_id,
                                             "decision": "rejected", "reason": "conversation_prefix"}))
                    continue
                pending[side].append(line)
                counts[side] += 1
                report_out.append(_line({"where": where, "request_id": request_id, "decision": "accepted",
                                         "id": pid, "split": side}))
                if len(report_out) >= 4096:
                    flush()
        flush()
        for handle in outputs.values():
            handle.close()
        report.close()
        (staging / "kept.jsonl").unlink()
        accepted = sum(counts.values())
        rejected = dict(sorted((r, n) for r, n in reasons.items() if n))
        if not accepted:
            raise NothingToDo(f"distill logs: no prompt left of {read} records read (rejected: "
                              + (", ".join(f"{r} {n}" for r, n in rejected.items()) or "none") + "); nothing written")
        summary = {
            "kind": "distill-logs",
            "format_version": 1,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "files": files,
            "records_read": read,
            "formats": dict(formats),
            "accepted": accepted,
            "splits": dict(counts),
            "rejected": rejected,
            "scrubbed": dict(sorted(scrubbed.items())) if config.scrub else None,
            "dropped_parts": dict(sorted(dropped_parts.items())),
            "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()
                         if k not in ("progress",)},
            "elapsed_s": round(time.perf_counter() - started, 2),
        }
        atomic_write_text(staging / "logs.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        lock.release()
    for line in summary_lines(summary, out):
        print(line, file=sys.stderr)
    return summary


def summary_lines(summary: dict[str, Any], out: Path) -> list[str]:
    read, accepted = summary["records_read"], summary["accepted"]
    lines = [f"logs: {read} records read ({', '.join(f'{k} {v}' for k, v in summary['formats'].items())}); "
             f"{accepted} prompts ({accepted / max(read, 1):.1%}) -> {out}/prompts.jsonl"
             + (f" + validation.jsonl ({summary['splits'].get('validation', 0)})" if "validation" in summary["splits"] else "")]
    if summary["rejected"]:
        lines.append("  rejected: " + ", ".join(f"{r} {n}" for r, n in summary["rejected"].items()))
    if summary["scrubbed"] is not None:
        lines.append("  scrubbed: " + (", ".join(f"{k} {v}" for k, v in summary["scrubbed"].items()) or "nothing found"))
    if summary["dropped_parts"]:
        lines.append("  left out of the text: " + ", ".join(f"{k} {v}" for k, v in summary["dropped_parts"].items()))
    lines.append(f"  {summary['elapsed_s']} s; per-record decisions: {out}/report.jsonl")
    return lines
