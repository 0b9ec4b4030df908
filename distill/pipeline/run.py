"""`distill pipeline run SPEC`: collect -> augment -> generate -> train -> eval -> decide -> promote.

Each stage writes ``STORE/runs/RUN_ID/<stage>/`` and, last, ``stage.json`` carrying its content key
(the sha256 of its inputs' fingerprints, its config and the code version). A stage whose
``stage.json`` holds the same key is skipped; one with another key is redone from scratch, and so
is everything after it (their keys include it). A stage cut short (crash, kill -9, SIGTERM)
resumes with the stage's own resume (generate's finished shards, train's checkpoints). The run
ends with one atomic write of the ledger (``ledger.json``): the run's outcome, the sources'
watermarks, the new version and the alias move, all or nothing. Running a finished run id again
does nothing and says so.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import glob as _glob
import hashlib
import json
import os
import re
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from distill.atomic import atomic_write_text
from distill.config import ConfigError, Layer
from distill.errors import DistillError, ExitCode, NothingToDo
from distill.fingerprint import file_sha256
from distill.pipeline.spec import GATE_MODELS, PipelineSpec, Source, check_stage, section_layer
from distill.pipeline.store import Store, now_iso, open_store
from distill.stop import STOP

LEDGER = "ledger.json"
STAGE_ORDER = ("collect", "augment", "generate", "train", "eval")
LEDGER_FORMAT = "distill-pipeline-ledger"
SEED_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv", ".parquet")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class _ShardDone(Exception):
    """One generate worker finished its shards (``--only generate --shard i/N``): not the stage's end."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        super().__init__("shard done")
        self.manifest = manifest


class StageFailed(DistillError):
    """A stage failed for a reason other than bad input, storage or a stop; rerunning resumes it."""

    exit_code = ExitCode.STAGE_FAILED


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def code_version() -> dict[str, Any]:
    from distill import __version__
    from distill.build_info import image_record

    image = image_record() or {}
    return {"distill": __version__, "image_commit": image.get("commit"), "image_digest": os.environ.get("DISTILL_IMAGE_DIGEST")}


def say(message: str) -> None:
    print(f"pipeline: {message}", file=sys.stderr, flush=True)


# -- sources -----------------------------------------------------------------------------------

def source_files(spec: PipelineSpec, spec_path: str, store: Store) -> list[tuple[int, str, str, Path]]:
    """Every file of every source: (source index, name, fingerprint, local path). A source that
    matches no file is an error naming it."""
    files: list[tuple[int, str, str, Path]] = []
    for i, source in enumerate(spec.sources):
        found = _remote_files(source, store) if "://" in source.path else _local_files(source, spec_path, i)
        if not found:
            what = "log file" if source.kind == "logs" else f"seed file ({', '.join(SEED_SUFFIXES)})"
            raise ConfigError(f"{spec_path}: sources.{i}.path: {source.path!r} matches no {what}")
        files.extend((i, name, fp, path) for name, fp, path in found)
    return files


def _local_files(source: Source, spec_path: str, index: int) -> list[tuple[str, str, Path]]:
    path = Path(source.path).expanduser()
    if any(ch in source.path for ch in "*?["):
        candidates = [Path(p) for p in sorted(_glob.glob(str(path), recursive=True))]
    elif path.is_dir():
        candidates = sorted(p for p in path.rglob("*") if p.is_file())
    elif path.exists():
        candidates = [path]
    else:
        raise ConfigError(f"{spec_path}: sources.{index}.path: {source.path}: no such file or folder")
    files = [p for p in candidates if p.is_file() and not p.name.startswith(".")
             and (source.kind == "logs" or p.suffix.lower() in SEED_SUFFIXES)]
    return [(str(p.absolute()), file_sha256(p), p) for p in files]


def _remote_files(source: Source, store: Store) -> list[tuple[str, str, Path]]:
    import fsspec

    fs, base = fsspec.core.url_to_fs(source.path, **getattr(store, "storage_options", {}))
    protocol = source.path.split("://", 1)[0]
    paths = fs.glob(base) if any(ch in base for ch in "*?[") else (fs.find(base) if fs.isdir(base) else [base])
    out = []
    cache = Path(getattr(store, "work", Path.home() / ".cache/distill/pipeline")) / "sources"
    for remote in sorted(paths):
        if source.kind != "logs" and not remote.lower().endswith(SEED_SUFFIXES):
            continue
        info = fs.info(remote)
        fp = str(info.get("ETag") or info.get("etag") or info.get("md5") or f"{info.get('size')}-{info.get('LastModified')}").strip('"')
        local = cache / hashlib.sha256(f"{remote}@{fp}".encode()).hexdigest()[:16] / Path(remote).name
        if not local.exists():
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote, str(local) + ".part")
            os.replace(str(local) + ".part", local)
        out.append((f"{protocol}://{remote}", fp, local))
    return out


# -- the ledger --------------------------------------------------------------------------------

def empty_ledger(name: str) -> dict[str, Any]:
    return {"format": LEDGER_FORMAT, "version": 1, "name": name, "runs": {}, "order": [], "watermarks": {},
            "versions": {}, "aliases": {}, "alias_history": {}, "events": []}


def read_ledger(store: Store, name: str) -> dict[str, Any]:
    ledger = store.read_json(LEDGER)
    if ledger is None:
        return empty_ledger(name)
    if ledger.get("format") != LEDGER_FORMAT:
        raise ConfigError(f"{store.url}/{LEDGER}: not a distill pipeline ledger")
    if ledger.get("name") != name:
        raise ConfigError(f"store {store.url} belongs to pipeline {ledger.get('name')!r}, not {name!r}: "
                          "give each pipeline its own store")
    return ledger


# -- run ids -----------------------------------------------------------------------------------

def resolve_run_id(run_id: str | None, scheduled: str | None, spec_text: bytes,
                   files: list[tuple[int, str, str, Path]]) -> str:
    if run_id:
        if not _RUN_ID.match(run_id):
            raise ConfigError(f"--run-id: {run_id!r}: letters, digits, '.', '-', '_' (at most 64, starting with a letter or digit)")
        return run_id
    if scheduled:
        try:
            when = _dt.datetime.fromisoformat(scheduled.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"--scheduled-time: {scheduled!r} is not an ISO 8601 time (2026-12-07T02:00:00Z)") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=_dt.timezone.utc)
        return "scheduled-" + when.astimezone(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    snapshot = digest([hashlib.sha256(spec_text).hexdigest(), [(i, name, fp) for i, name, fp, _ in files]])
    return "auto-" + snapshot[:12]


# -- the run -----------------------------------------------------------------------------------

class Run:
    def __init__(self, spec: PipelineSpec, spec_path: str, store: Store, run_id: str, ledger: dict[str, Any],
                 lock: Any) -> None:
        self.spec = spec
        self.spec_path = spec_path
        self.store = store
        self.run_id = run_id
        self.ledger = ledger
        self.lock = lock
        self.root = f"runs/{run_id}"
        self.code = code_version()

    # the stage protocol
    def stage(self, name: str, inputs: Any, body: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        key = digest({"stage": name, "inputs": inputs, "code": self.code})
        rel = f"{self.root}/{name}"
        marker = self.store.read_json(f"{rel}/stage.json")
        if marker is not None and marker.get("key") == key:
            say(f"{name}: done earlier, skipped ({self.store.url}/{rel})")
            return marker
        if marker is not None:
            say(f"{name}: its inputs changed since it ran; redoing it")
            self.store.delete(rel)
        local = self.store.local(rel)
        started = local / ".started.json"
        if started.exists():
            try:
                same = json.loads(started.read_text()).get("key") == key
            except ValueError:
                same = False
            if not same:
                shutil.rmtree(local)
            else:
                say(f"{name}: resuming where it stopped")
        local.mkdir(parents=True, exist_ok=True)
        if not started.exists():
            atomic_write_text(started, json.dumps({"key": key, "started": now_iso()}) + "\n")
        self.checkpoint()
        say(f"{name}: running")
        began = time.perf_counter()
        try:
            outputs = body(local)
        except _ShardDone:
            raise
        except DistillError as exc:
            if exc.exit_code in (ExitCode.BAD_INPUT, ExitCode.PREEMPTED, ExitCode.LOCK_HELD, ExitCode.IO_ERROR,
                                 ExitCode.NOTHING_TO_DO, ExitCode.STAGE_FAILED):
                raise
            raise StageFailed(f"stage {name} of run {self.run_id} failed: {exc}; rerun the same run id to resume") from exc
        except (KeyboardInterrupt, OSError):
            raise
        except Exception as exc:  # noqa: BLE001 - a bug or a crash inside a stage: show it, class it
            traceback.print_exc()
            raise StageFailed(f"stage {name} of run {self.run_id} failed: {type(exc).__name__}: {exc}; "
                              "rerun the same run id to resume") from exc
        if os.environ.get("RANK", "0") != "0":  # under torchrun: rank 0 marks the stage done
            return {"key": key, **outputs}
        marker = {"stage": name, "run": self.run_id, "key": key, "finished": now_iso(),
                  "seconds": round(time.perf_counter() - began, 1), **outputs}
        atomic_write_text(local / "stage.json", json.dumps(marker, indent=2, sort_keys=True, default=str) + "\n")
        self.store.push(rel, last="stage.json")
        say(f"{name}: done in {marker['seconds']} s")
        return marker

    def checkpoint(self) -> None:
        """Between stages: a SIGTERM stops here (exit 75), a lost object-store lock too (exit 6)."""
        if STOP.requested:
            raise STOP.preempted(f"pipeline run {self.run_id}: stopped between stages; rerun the same run id to resume")
        check = getattr(self.lock, "check", None)
        if check is not None:
            check()

    def hasher(self) -> Any:
        """The index's MinHash settings (built at augmentation's default threshold when near-duplicate
        checks are off, so the segments serve a later spec that turns them on)."""
        from distill.pipeline.index import Hasher

        return Hasher(self.spec.near_dup_threshold or 0.7)

    def layer(self, section: str) -> Layer:
        return section_layer(self.spec_path, getattr(self.spec, section) or {}, section)

    def finished_runs(self) -> list[str]:
        return [r for r in self.ledger["order"] if r != self.run_id]

    def champion(self) -> str | None:
        return self.ledger["aliases"].get(self.spec.promotion.alias)

    # the stages
    def collect(self, files: list[tuple[int, str, str, Path]]) -> dict[str, Any]:
        seen: dict[str, dict[str, str]] = self.ledger["watermarks"]
        taken = []
        for i, name, fp, path in files:
            source = self.spec.sources[i]
            if source.new == "files" and seen.get(str(i), {}).get("files", {}).get(name) == fp:
                continue
            taken.append((i, name, fp, path))
        history = [(r, f"runs/{r}/{stage}/index") for r in self.finished_runs() for stage in ("collect", "augment")
                   if stage == "collect" or self.store.exists(f"runs/{r}/augment/stage.json")]
        inputs = {"files": [(i, n, fp) for i, n, fp, _ in taken], "history": [r for r, _ in history],
                  "threshold": self.spec.near_dup_threshold}

        def body(out: Path) -> dict[str, Any]:
            from distill.augment import record_to_json
            from distill.ingest import ingest
            from distill.pipeline.index import Prompts, dedup, write_segment

            if not taken:
                raise NothingToDo(f"pipeline {self.spec.name}: no new or changed source file since the last finished "
                                  f"run ({len(files)} file(s) already taken)")
            inputs = [str(p) for i, _, _, p in taken if self.spec.sources[i].kind == "prompts"]
            logs_stats = {}
            for i, source in enumerate(self.spec.sources):
                paths = tuple(str(p) for j, _, _, p in taken if j == i)
                if source.kind != "logs" or not paths:
                    continue
                prompts, logs_stats[str(i)] = self.collect_logs(i, source, paths, out)
                if prompts is not None:
                    inputs.append(str(prompts))
            if not inputs:
                raise NothingToDo(f"pipeline {self.spec.name}: the new log files hold no prompt the filters keep "
                                  f"({', '.join(f'source {k}: {v}' for k, v in logs_stats.items())})")
            result = ingest(inputs)
            records = result.records
            segments = [(r, self.store.pull(key)) for r, key in history]
            hasher = self.hasher()
            prompts = Prompts.of([r.messages for r in records], hasher)
            verdicts = dedup(prompts, segments, hasher, near=self.spec.near_dup_threshold > 0)
            kept = verdicts.kept()
            lines, report = [], []
            for j, record in enumerate(records):
                if verdicts.reason[j]:
                    report.append({"where": record.origin.get("where"), "prompt_id": record.id,
                                   "reason": verdicts.reason[j], "match": verdicts.match[j]})
                else:
                    row = record_to_json(record)
                    lines.append(json.dumps(row, ensure_ascii=False))
            counts: dict[str, int] = {}
            for reason in verdicts.reason:
                if reason:
                    counts[reason] = counts.get(reason, 0) + 1
            if not kept:
                raise NothingToDo(f"pipeline {self.spec.name}: {len(records)} prompt(s) in {len(taken)} new file(s), all "
                                  f"duplicates of earlier runs ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})")
            atomic_write_text(out / "prompts.jsonl", "".join(line + "\n" for line in lines))
            atomic_write_text(out / "report.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in report))
            write_segment(out / "index", prompts.take(kept), hasher)
            stats = {"files": [{"source": i, "file": n, "fingerprint": fp} for i, n, fp, _ in taken],
                     "logs": logs_stats, "read": result.num_read, "duplicates_in_files": result.duplicates, "kept": len(kept),
                     "dropped": counts, "history_runs": len({r for r, _ in history})}
            atomic_write_text(out / "collect.json", json.dumps(stats, indent=2) + "\n")
            say(f"collect: {len(kept)} new prompt(s) from {len(taken)} file(s); dropped "
                + (", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none")
                + f" (history: {len({r for r, _ in history})} finished run(s))")
            return {"prompts": len(kept), "files": stats["files"], "dropped": counts,
                    "prompts_sha256": file_sha256(out / "prompts.jsonl")}

        return self.stage("collect", inputs, body)

    def collect_logs(self, index: int, source: Source, paths: tuple[str, ...], out: Path) -> tuple[Path | None, Any]:
        """A logs source's new files through `distill logs` (filters, scrubbing, dedup): its prompts
        file (None when nothing is kept) and its counts."""
        from distill.logs import run as read_logs

        folder = out / f"logs-{index}"
        config = check_stage("logs", source.logs, section_layer(self.spec_path, source.logs, f"sources.{index}.logs"),
                             {"logs": paths, "out": str(folder), "progress": False})
        try:
            summary = read_logs(config)
        except NothingToDo:
            return None, "no prompt kept"
        return folder / "prompts.jsonl", {k: summary.get(k) for k in ("records_read", "accepted", "rejected", "scrubbed")}

    def augment(self, collected: dict[str, Any]) -> dict[str, Any] | None:
        if self.spec.augment is None:
            return None
        prompts = self.store.pull(f"{self.root}/collect") / "prompts.jsonl"
        inputs = {"prompts": collected["prompts_sha256"], "teacher": teacher_identity(self.spec.teacher),
                  "augment": self.spec.augment}

        def body(out: Path) -> dict[str, Any]:
            from distill.augment import run as augment

            config = check_stage("augment", self.spec.augment or {}, self.layer("augment"),
                                 {"teacher": self.spec.teacher, "prompts": str(prompts), "out": str(out)})
            augment(config)
            # the synthetic prompts join the history too, once the run finishes
            from distill.ingest import ingest
            from distill.pipeline.index import Prompts, write_segment

            synthetic = ingest(str(out / "prompts.jsonl")).records
            hasher = self.hasher()
            write_segment(out / "index", Prompts.of([r.messages for r in synthetic], hasher), hasher)
            return {"prompts_sha256": file_sha256(out / "prompts.jsonl"), "prompts": len(synthetic)}

        return self.stage("augment", inputs, body)

    def generate(self, collected: dict[str, Any], augmented: dict[str, Any] | None,
                 shard: str | None = None) -> dict[str, Any]:
        prompts = [str(self.store.pull(f"{self.root}/collect") / "prompts.jsonl")]
        if augmented is not None:
            prompts.append(str(self.store.pull(f"{self.root}/augment") / "prompts.jsonl"))
        inputs = {"prompts": [collected["prompts_sha256"], augmented and augmented["prompts_sha256"]],
                  "teacher": teacher_identity(self.spec.teacher), "generate": self.spec.generate}

        def body(out: Path) -> dict[str, Any]:
            from distill.generate import run as generate

            # rows of earlier runs that never finished answer the same prompts at no teacher cost
            unfinished = [r for r in self.store.list("runs") if r != self.run_id and r not in self.ledger["runs"]
                          and self.store.exists(f"runs/{r}/generate/stage.json")]
            reuse = tuple(str(self.store.pull(f"runs/{r}/generate/corpus")) for r in unfinished)
            fill = {"teacher": self.spec.teacher, "prompts": tuple(prompts), "out": str(out / "corpus"), "reuse": reuse}
            if shard is not None:
                fill["shard"] = shard
            config = check_stage("generate", self.spec.generate, self.layer("generate"), fill)
            corpus = out / "corpus"
            workers = sorted(corpus.glob("manifest-worker-*-of-*.json"))
            if shard is None and workers and not (corpus / "manifest.json").exists():
                # shard workers wrote this corpus (--only generate --shard i/N): finish any worker
                # that did not (a finished one returns at once) and take the union as the corpus
                count = int(re.search(r"-of-(\d+)", workers[0].name).group(1))
                manifests = [generate(dataclasses.replace(config, shard=f"{i}/{count}")) for i in range(count)]
                from distill.corpus import open_corpus

                open_corpus(corpus)  # the union is complete and consistent, or this says what is not
                files = sorted(corpus.glob("manifest-worker-*-of-*.json"))
                sha = digest([file_sha256(f) for f in files])
            else:
                manifest = generate(config)
                if shard is not None:
                    raise _ShardDone(manifest)
                manifests, sha = [manifest], file_sha256(corpus / "manifest.json")
            first = manifests[0]
            stats = [m.get("stats", {}) for m in manifests]
            return {"rows": sum(m["rows"] for m in manifests), "teacher": first.get("teacher"),
                    "tokenizer_fingerprint": first.get("tokenizer_fingerprint"),
                    "generation": first.get("generation"), "backend": first.get("backend"), "manifest_sha256": sha,
                    "workers": len(manifests),
                    "reused_rows": sum(st.get("reused_rows_last_run") or 0 for st in stats),
                    "teacher_rows": sum(st.get("teacher_rows_last_run") or 0 for st in stats)}

        if shard is None:
            if self.store.remote and not self.store.exists(f"{self.root}/generate/stage.json"):
                self.store.pull(f"{self.root}/generate")  # shard workers elsewhere may have left their shards
            return self.stage("generate", inputs, body)
        marker = self.store.read_json(f"{self.root}/generate/stage.json")
        if marker is not None:
            say("generate: done earlier, skipped")
            return marker
        try:
            self.stage("generate", inputs, body)
        except _ShardDone as done:
            # a worker's shards are in the shared corpus folder; the unsharded pass that follows
            # finds every shard written, writes the manifest and marks the stage done
            self.store.push(f"{self.root}/generate")
            return {"worker": done.manifest.get("worker")}
        raise AssertionError("unreachable")

    def corpora(self, generated: dict[str, Any]) -> list[tuple[str, str]]:
        """(run id, store key) of the corpora this run trains on, its own last."""
        window = self.spec.window
        earlier = self.finished_runs()
        earlier = [] if window == 0 else (earlier if window is None else earlier[-window:])
        chosen = []
        for r in earlier:
            marker = self.store.read_json(f"runs/{r}/generate/stage.json") or {}
            if marker.get("tokenizer_fingerprint") != generated.get("tokenizer_fingerprint") or \
                    marker.get("teacher") != generated.get("teacher"):
                say(f"train: run {r}'s corpus comes from another teacher or tokenizer; left out")
                continue
            chosen.append((r, f"runs/{r}/generate/corpus"))
        return chosen + [(self.run_id, f"{self.root}/generate/corpus")]

    def train(self, generated: dict[str, Any]) -> dict[str, Any]:
        corpora = self.corpora(generated)
        champion = self.champion() if self.spec.warm_start == "champion" else None
        start = {"champion": champion} if champion else {"base": self.spec.student}
        manifests = {}
        for r, key in corpora:
            marker = generated if r == self.run_id else (self.store.read_json(f"runs/{r}/generate/stage.json") or {})
            manifests[r] = marker.get("manifest_sha256")
        inputs = {"corpora": manifests, "start": start, "train": self.spec.train}

        def body(out: Path) -> dict[str, Any]:
            from distill.train import load_train_config, run as train

            student = str(self.store.pull(f"runs/{champion}/train/final")) if champion else self.spec.student
            folders = tuple(str(self.store.pull(key)) for _, key in corpora)
            config = load_train_config(self.layer("train"), {"student": student, "corpus": folders, "out": str(out),
                                                             "resume": True})
            summary = train(config)
            if os.environ.get("RANK", "0") != "0":
                return {}
            from distill.fingerprint import weights_fingerprint

            return {"student": f"{self.root}/train/final", "start": start, "corpora": manifests,
                    "weights_fingerprint": weights_fingerprint(out / "final"),
                    "train_config_sha256": file_sha256(out / "train_config.json"),
                    "steps": summary.get("steps"), "final_loss": summary.get("final_loss")}

        return self.stage("train", inputs, body)

    def evaluate(self, trained: dict[str, Any]) -> dict[str, Any]:
        champion = self.champion()
        inputs = {"challenger": trained["weights_fingerprint"], "champion": champion,
                  "teacher": teacher_identity(self.spec.teacher), "eval": self.spec.eval,
                  "suite": suite_identity(self.spec.eval.get("suite", "example"))}

        def body(out: Path) -> dict[str, Any]:
            from distill.eval import run as evaluate

            models = [f"challenger={self.store.pull(f'{self.root}/train/final')}"]
            if champion:
                models.append(f"champion={self.store.pull(f'runs/{champion}/train/final')}")
            models.append(f"teacher={self.spec.teacher}")
            config = check_stage("eval", self.spec.eval, self.layer("eval"),
                                 {"models": tuple(models), "out": str(out), "teacher": "teacher"})
            report = evaluate(config)
            failed = {n: m.get("error") for n, m in report["models"].items() if m.get("status") != "ok"}
            if failed or report.get("teacher_error"):
                what = "; ".join(f"{n}: {e}" for n, e in failed.items()) or report.get("teacher_error")
                raise StageFailed(f"stage eval of run {self.run_id}: a model failed to evaluate ({what}); report in {out}")
            scores = {n: {k: m.get(k) for k in ("score", "agreement", "kl_to_teacher", "tokens_per_s")}
                      for n, m in report["models"].items()}
            return {"models": report["models"], "scores": scores, "champion": champion,
                    "report_sha256": file_sha256(out / "report.json")}

        return self.stage("eval", inputs, body)

    def decide(self, evaluated: dict[str, Any]) -> dict[str, Any]:
        from distill.eval.gate import evaluate_gate, parse_gate

        tree = parse_gate(self.spec.gate, GATE_MODELS)
        champion = evaluated.get("champion")
        skipped = []
        if champion is None:
            tree, skipped = without_champion(tree, self.spec.gate)
        passed, values, why = evaluate_gate(tree, evaluated["models"])
        decision = {"run": self.run_id, "gate": self.spec.gate, "passed": passed, "values": values, "unavailable": why,
                    "champion": champion, "champion_terms_held": skipped, "eval_key": evaluated["key"],
                    "eval_report_sha256": evaluated["report_sha256"], "scores": evaluated["scores"]}
        earlier = self.store.read_json(f"{self.root}/decision.json")
        if earlier is not None and earlier.get("eval_key") == evaluated["key"] and earlier.get("gate") == self.spec.gate:
            return earlier
        decision["decided"] = now_iso()
        self.store.write_json(f"{self.root}/decision.json", decision)
        return decision

    def lineage(self, collected, generated, trained, evaluated) -> dict[str, Any]:
        return {
            "run": self.run_id, "student": trained["student"], "weights_fingerprint": trained["weights_fingerprint"],
            "start": trained["start"], "corpora": trained["corpora"], "teacher": generated.get("teacher"),
            "backend": generated.get("backend"), "generation": generated.get("generation"),
            "prompt_window": {"files": collected.get("files"), "train_on": self.spec.train_on},
            "train_config_sha256": trained["train_config_sha256"], "code": self.code,
            "eval_report_sha256": evaluated["report_sha256"], "scores": evaluated["scores"],
        }

    def commit(self, collected, outcome: str, lineage: dict[str, Any] | None, decision: dict[str, Any]) -> None:
        ledger = self.ledger
        for item in collected.get("files", []):
            ledger["watermarks"].setdefault(str(item["source"]), {"files": {}})["files"][item["file"]] = item["fingerprint"]
        ledger["runs"][self.run_id] = {"outcome": outcome, "finished": now_iso(), "passed": decision["passed"],
                                       "scores": decision["scores"], "champion_before": decision["champion"]}
        ledger["order"].append(self.run_id)
        if lineage is not None:
            ledger["versions"][self.run_id] = lineage
        self.store.write_json(LEDGER, ledger)


def without_champion(tree: Any, expr: str) -> tuple[Any, list[str]]:
    """The gate for a first run: every comparison that names ``champion`` holds (there is none)."""
    import ast

    held: list[str] = []

    class Drop(ast.NodeTransformer):
        def visit_Compare(self, node: ast.Compare) -> Any:
            names = {n.value.id for n in ast.walk(node) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
            if "champion" in names:
                held.append(ast.get_source_segment(expr.strip(), node) or ast.dump(node))
                return ast.copy_location(ast.Constant(value=True), node)
            return node

    tree = ast.fix_missing_locations(Drop().visit(tree))
    return tree, held


def teacher_identity(teacher: str) -> Any:
    """What names the teacher in content keys: the spec string, plus the recipe file's bytes or the
    model folder's weights fingerprint."""
    path = Path(teacher)
    if path.is_file():
        return [teacher, file_sha256(path)]
    if path.is_dir():  # a model folder: its weights' fingerprint
        from distill.fingerprint import weights_fingerprint

        return [teacher, weights_fingerprint(path)]
    from distill.recipes import find_recipe

    found = find_recipe("teachers", teacher)
    return [teacher, file_sha256(found)] if found is not None else [teacher]


def suite_identity(suite: str) -> Any:
    path = Path(suite)
    if path.is_file():
        return [suite, file_sha256(path)]
    from distill.recipes import shipped_dir

    shipped = shipped_dir("eval") / f"{suite}.jsonl"
    return [suite, file_sha256(shipped)] if shipped.is_file() else [suite]


STEPS = ("prepare", "generate", "train")


def run_pipeline(spec_path: str, run_id: str | None = None, scheduled: str | None = None, work: str | None = None,
                 only: str | None = None, shard: str | None = None, nothing_new_ok: bool = False,
                 outcome_file: str | None = None, report: dict[str, Any] | None = None) -> int:
    """Run (or resume, or confirm) one run; returns its exit code (0 promoted, 3 gate failed).

    ``only`` runs one step of the run for a workflow engine that spreads it over pods: ``prepare``
    (collect and augment, under the store lock), ``generate`` (with ``shard`` i/N: one worker's
    shards, without the store lock: the workers run at once), ``train`` (every torchrun rank runs
    it, without the store lock). A plain run afterwards finishes the rest, skipping what is done.
    """
    from distill.pipeline.spec import load_spec

    if only is not None and only not in STEPS:
        raise ConfigError(f"--only: one of {', '.join(STEPS)}, got {only!r}")
    if shard is not None and only != "generate":
        raise ConfigError("--shard: only with --only generate")
    if only in ("generate", "train") and not run_id and not scheduled:
        raise ConfigError(f"--only {only}: give the run's --run-id or --scheduled-time (the prepare step's)")
    if shard is not None:
        from distill.generate import parse_shard

        try:
            parse_shard(shard)
        except ValueError as exc:
            raise ConfigError(f"--shard: {exc}") from None
    spec = load_spec(spec_path)
    store = open_store(spec.store, work or spec.work, spec.name, spec.store_options)
    store.check()
    # the parallel steps are given their run id; only the others read (and hash) the sources
    files = [] if only in ("generate", "train") else source_files(spec, spec_path, store)
    run_id = resolve_run_id(run_id, scheduled, Path(spec_path).read_bytes(), files)

    def finish(code: int, outcome: str) -> int:
        if report is not None:
            report.update({"run": run_id, "outcome": outcome, "store": store.url, "exit_code": code})
        if outcome_file:
            atomic_write_text(outcome_file, outcome + "\n")
        return code

    if only in ("generate", "train"):
        ledger = read_ledger(store, spec.name)
        if run_id in ledger["runs"]:
            say(f"run {run_id} already finished; nothing to do")
            return finish(0, ledger["runs"][run_id]["outcome"])
        run = Run(spec, spec_path, store, run_id, ledger, None)
        collected = store.read_json(f"{run.root}/collect/stage.json")
        augmented = store.read_json(f"{run.root}/augment/stage.json") if spec.augment is not None else None
        if collected is None or (spec.augment is not None and augmented is None):
            raise ConfigError(f"--only {only}: run {run_id} is not prepared; run the prepare step first "
                              f"(distill pipeline run SPEC --run-id {run_id} --only prepare)")
        if only == "generate":
            run.generate(collected, augmented, shard=shard)
            return finish(0, "generated")
        generated = store.read_json(f"{run.root}/generate/stage.json")
        if generated is None:
            raise ConfigError(f"--only train: run {run_id}'s corpus is not complete; run the generate step first")
        run.train(generated)
        return finish(0, "trained")

    with store.lock(spec.lock_stale_after_s, f"distill pipeline run {run_id}") as lock:
        ledger = read_ledger(store, spec.name)
        if run_id in ledger["runs"]:
            done = ledger["runs"][run_id]
            say(f"run {run_id} already finished on {done['finished']} ({done['outcome']}); nothing to do")
            return finish(int(ExitCode.OK if done["outcome"] == "promoted" else ExitCode.GATE_FAILED), done["outcome"])
        run = Run(spec, spec_path, store, run_id, ledger, lock)
        say(f"run {run_id} on store {store.url}")
        try:
            collected = run.collect(files)
        except NothingToDo as exc:
            store.delete(run.root)  # nothing was done: leave nothing behind
            if nothing_new_ok:
                say(f"{exc}; exit 0 (--nothing-new-ok)")
                return finish(0, "nothing_new")
            finish(int(ExitCode.NOTHING_TO_DO), "nothing_new")
            raise
        augmented = run.augment(collected)
        if only == "prepare":
            say(f"run {run_id}: prepared ({collected['prompts']} prompt(s) collected)")
            return finish(0, "prepared")
        return finish(*_rest(run, spec, store, run_id, ledger, collected, augmented))


def _rest(run: Run, spec: PipelineSpec, store: Store, run_id: str, ledger: dict[str, Any], collected: dict[str, Any],
          augmented: dict[str, Any] | None) -> tuple[int, str]:
    from distill.pipeline.registry import publish

    generated = run.generate(collected, augmented)
    trained = run.train(generated)
    evaluated = run.evaluate(trained)
    run.checkpoint()
    decision = run.decide(evaluated)
    from distill.eval.gate import gate_summary

    say(gate_summary({"expr": spec.gate, "passed": decision["passed"], "values": decision["values"],
                      "unavailable": decision["unavailable"]}))
    if decision["champion_terms_held"]:
        say(f"first run (no champion): held as true: {'; '.join(decision['champion_terms_held'])}")
    if os.environ.get("DISTILL_PRINT_METRICS"):  # SageMaker metric definitions match these lines
        for name, scores in decision["scores"].items():
            if isinstance(scores.get("score"), (int, float)):
                print(f"metric: model={name} score={scores['score']:.6f}", flush=True)
    lineage = run.lineage(collected, generated, trained, evaluated)
    if decision["passed"]:
        run.checkpoint()
        publish(spec, store, run_id, lineage, f"{run.root}/eval/report.json")
        promote_in_ledger(ledger, spec, run_id, "promote")
        run.commit(collected, "promoted", lineage, decision)
        say(f"run {run_id}: promoted; {spec.promotion.alias} -> {run_id}")
        return int(ExitCode.OK), "promoted"
    run.commit(collected, "gate_failed", lineage, decision)
    champion = ledger["aliases"].get(spec.promotion.alias)
    say(f"run {run_id}: gate failed, not promoted; {spec.promotion.alias} stays {champion or 'unset'}")
    return int(ExitCode.GATE_FAILED), "gate_failed"


def promote_in_ledger(ledger: dict[str, Any], spec: PipelineSpec, run_id: str, action: str) -> None:
    alias = spec.promotion.alias
    previous = ledger["aliases"].get(alias)
    history = ledger["alias_history"].setdefault(alias, [])
    if previous and previous != run_id:
        history.append(previous)
        del history[:max(0, len(history) - spec.promotion.keep)]
    ledger["aliases"][alias] = run_id
    ledger["events"].append({"time": now_iso(), "action": action, "alias": alias, "from": previous, "to": run_id})
