"""`distill generate`: seed prompts -> teacher responses with top-k log-probs -> a corpus directory.

The flow, each step in one place:

    seeds = ingest(...)                     distill/ingest.py: file:line errors, --skip-invalid counts
    prompts = prompts_to_answer(...)        seeds, plus augmented prompts when augmentation is on
    encode + length check                   distill/prompts.encode_prompt (the one chat-template call)
    plan rows                               one row per (prompt, sample); stable ids; fixed shards
    respond shard by shard                  teacher.generate -> CorpusWriter.write_shard (atomic)
    manifest                                written last (the commit marker)

Resume: shards are whole files renamed into place, so after a crash (even kill -9) the same
command skips the shards on disk and continues with the first missing one. Sharding: the rows
are cut into ``ceil(rows / rows_per_shard)`` shards whatever the number of workers; worker i of N
(``--shard i/N``) writes shards j with j mod N == i and its own manifest, so the union of the
workers' files is exactly the unsharded corpus (K8s Indexed Job: ``--shard $JOB_COMPLETION_INDEX/N``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Mapping, Sequence

from distill.build_info import build_info
from distill.config import ConfigError, bad, field
from distill.corpus.schema import DEFAULT_LOGPROB_ALPHA, DEFAULT_LOGPROB_SCALE
from distill.stop import STOP
from distill.teachers import BACKENDS, Backend


SHARD_INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by a Kubernetes Indexed Job in each pod
SHARD_COUNT_ENV = "DISTILL_SHARD_COUNT"


def parse_shard(spec: str, environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """'i/N' -> (i, N) with 0 <= i < N. ``auto`` takes i from $JOB_COMPLETION_INDEX (a Kubernetes
    Indexed Job sets it) and N from $DISTILL_SHARD_COUNT; ``auto/N`` gives N itself."""
    environ = os.environ if environ is None else environ
    head, _, tail = spec.partition("/")
    if head == "auto":
        index_text = environ.get(SHARD_INDEX_ENV)
        count_text = tail or environ.get(SHARD_COUNT_ENV)
        if index_text is None:
            raise ValueError(f"auto: ${SHARD_INDEX_ENV} is not set (a Kubernetes Indexed Job sets it); "
                             "elsewhere give i/N")
        if not count_text:
            raise ValueError(f"auto: the worker count is missing: give auto/N or set ${SHARD_COUNT_ENV}")
        spec = f"{index_text}/{count_text}"
    try:
        index, count = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"must look like i/N (e.g. 0/4) or auto, got {spec!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"{spec}: need 0 <= i < N")
    return index, count


@dataclass(frozen=True)
class GenerateConfig:
    """Config of ``distill generate`` (YAML keys = these names; flags override)."""

    teacher: str = field("", help="teacher recipe name, recipe YAML, or local HF model directory")
    prompts: str | tuple[str, ...] = field("", help="seed prompts: .jsonl, .csv, .parquet, or a datasets.save_to_disk "
                                           "folder; repeat to read several as one set")
    out: str = field("", help="corpus output directory (resumable; shared by --shard workers)")
    backend: Backend | None = field(None, help="teacher backend", default_text="the recipe's")
    top_k: int = field(20, help="teacher log-probs stored per response token (>= 1)")
    max_new_tokens: int = field(256, help="response length limit in tokens")
    temperature: float = field(1.0, help="sampling temperature (0 = greedy); stored log-probs are always temperature 1")
    top_p: float = field(1.0, help="nucleus sampling threshold for the response (stored log-probs are unwarped)")
    samples_per_prompt: int = field(1, help="responses sampled per prompt (one corpus row each)")
    seed: int = field(0, help="base seed: each row's sampling seed derives from it and the row id")
    batch_size: int | None = field(None, help="prompts per teacher batch", default_text="the recipe's, else 8")
    stop: tuple[str, ...] = field((), help="extra stop string, repeatable (EOS always stops)", default_text="EOS only")
    shard: str = field("0/1", help="i/N: this worker writes every N-th shard of the corpus, starting at i; "
                                   "auto: i from $JOB_COMPLETION_INDEX (Kubernetes Indexed Job), N from "
                                   "$DISTILL_SHARD_COUNT (or auto/N)")
    rows_per_shard: int = field(1024, help="rows per Parquet shard file (the unit of resume)")
    skip_invalid: bool = field(False, help="skip invalid seed records (counted per reason in the manifest) instead of failing")
    logprob_scale: int = field(DEFAULT_LOGPROB_SCALE, help="log-prob quantization: codes per nat at the top of the distribution (error there <= 0.5/scale)")
    logprob_alpha: float = field(DEFAULT_LOGPROB_ALPHA, help="log-prob grid curvature: the step grows as exp(alpha * nats) below the top, up to 1/8 nat; 0 = uniform (schema v1's grid)")
    progress: bool = field(True, help="show a progress bar")
    # Prompt augmentation (distill/augment.py): with augment > 0 the teacher first writes that many
    # new prompts from the seeds; the corpus answers seeds + synthetic prompts.
    augment: int = field(0, help="synthetic prompts the teacher writes from the seeds before answering (0 = none)")
    augment_config: str | None = field(None, help="YAML of AugmentConfig keys (few_shot, near_dup_threshold, ...) for --augment")
    decontaminate: str | None = field(None, help="with --augment: eval suite (name in eval/ or JSONL) no synthetic prompt may share a 13-gram with")
    judge_threshold: float = field(0.0, help="with --augment: keep synthetic prompts the teacher judges >= this (1-5); 0 = no judge")
    responses: Literal["teacher", "reference", "logged"] = field(
        "teacher", help="teacher: the teacher samples each response; reference: each prompt's labelled `reference` is "
                        "the response and the teacher scores it (top-k at every position), for SFT/KD on labelled data; "
                        "logged: each prompt's logged `response` (distill logs) is the response, tokenized with the "
                        "teacher's tokenizer, no log-probs (a black-box corpus: training runs CE only)")
    reuse: tuple[str, ...] = field((), help="finished corpus to copy rows from instead of asking the teacher again, where "
                                        "the row id (prompt, generation settings, sample), teacher fingerprint, tokenizer "
                                        "and log-prob grid all match; repeatable (distill pipeline passes the store's corpora)")

    def __post_init__(self) -> None:
        for name in ("teacher", "prompts", "out"):
            if not getattr(self, name):
                bad(name, "required")
        if self.backend is not None and self.backend not in BACKENDS:
            bad("backend", f"choose one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.top_k < 1:
            bad("top_k", f"must be >= 1 (logit distillation needs the teacher's top-k), got {self.top_k}")
        if self.top_k > 1000:
            bad("top_k", f"must be <= 1000, got {self.top_k}")
        if self.max_new_tokens < 1:
            bad("max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            bad("temperature", f"must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.samples_per_prompt < 1:
            bad("samples_per_prompt", f"must be >= 1, got {self.samples_per_prompt}")
        if self.batch_size is not None and self.batch_size < 1:
            bad("batch_size", f"must be >= 1, got {self.batch_size}")
        if self.rows_per_shard < 1:
            bad("rows_per_shard", f"must be >= 1, got {self.rows_per_shard}")
        if not 16 <= self.logprob_scale <= 1 << 16:
            bad("logprob_scale", f"must be in [16, 65536], got {self.logprob_scale}")
        if not 0 <= self.logprob_alpha <= 4:
            bad("logprob_alpha", f"must be in [0, 4], got {self.logprob_alpha}")
        try:
            parse_shard(self.shard)
        except ValueError as exc:
            bad("shard", str(exc))
        if self.augment < 0:
            bad("augment", f"must be >= 0, got {self.augment}")
        if self.responses not in ("teacher", "reference", "logged"):
            bad("responses", f"must be teacher, reference or logged, got {self.responses!r}")
        if self.responses != "teacher" and (self.augment or self.samples_per_prompt > 1):
            bad("responses", f"{self.responses} answers each prompt once, with its own text: no --augment, "
                             "--samples-per-prompt 1")
        if self.augment and parse_shard(self.shard)[1] > 1:
            bad("augment", "with --shard: run `distill augment` once, then every worker with "
                           "--prompts AUGMENT_DIR/prompts.jsonl, so all workers answer the same prompts")

    def generation_params(self) -> dict[str, Any]:
        """What determines a response besides teacher and prompt: part of every row id."""
        params = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                  "top_k": self.top_k, "stop": list(self.stop), "seed": self.seed,
                  "samples_per_prompt": self.samples_per_prompt}
        if self.responses != "teacher":  # only then, so existing corpora keep their row ids
            params["responses"] = self.responses
        return params


def row_id(prompt_key: str, params: dict[str, Any], sample_index: int) -> str:
    """Stable row id: hash of the normalized prompt (its key), the generation params, the sample."""
    blob = json.dumps([prompt_key, params, sample_index], sort_keys=True).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:24]


def row_seed(base_seed: int, rid: str) -> int:
    return int(hashlib.sha256(f"{base_seed}:{rid}".encode()).hexdigest()[:15], 16)


def prompt_files(config: GenerateConfig) -> str:
    """--prompts as one string for messages and metadata (several files comma-separated)."""
    return config.prompts if isinstance(config.prompts, str) else ", ".join(config.prompts)


def prompts_to_answer(config: GenerateConfig, teacher: Any, seeds: list[Any]) -> tuple[list[Any], dict[str, Any] | None]:
    """THE list of prompts the teacher answers, in a deterministic order, and the augmentation
    stats (None without --augment).

    The ingested seeds, then (with --augment N) the accepted synthetic prompts, deterministic
    given config.seed; augmentation rounds are kept under OUT/augment/ so a rerun resumes them.
    """
    if not config.augment:
        return list(seeds), None
    from pathlib import Path

    from distill.augment import (
        augment_config_for,
        augment_prompts,
        summary_lines,
        write_outputs,
    )
    from distill.teachers import teacher_recipe

    augment = augment_config_for(config)
    work_dir = Path(config.out) / "augment"
    result = augment_prompts(teacher, seeds, augment, recipe=teacher_recipe(config.teacher), work_dir=work_dir)
    # The same files `distill augment` leaves, so the prompts can be read before the responses.
    write_outputs(work_dir, result, {"teacher": teacher.fingerprint(), "seeds_file": prompt_files(config)})
    for line in summary_lines(result.stats):
        print(line, file=sys.stderr)
    return list(seeds) + result.records, result.stats


@dataclass
class _Planned:
    rid: str
    record: Any
    prompt_ids: tuple[int, ...]
    sample_index: int
    seed: int


def _encode_and_check(config: GenerateConfig, teacher: Any, records: list[Any], skipped: Counter) -> list[tuple[Any, tuple[int, ...]]]:
    from distill.ingest import raise_errors
    from distill.prompts import encode_prompt

    limit = teacher.max_context - config.max_new_tokens
    if limit < 1:
        raise ConfigError(f"--max-new-tokens {config.max_new_tokens} leaves no room for a prompt in the "
                          f"teacher's context of {teacher.max_context} tokens")
    encoded, errors = [], []
    for record in records:
        ids = tuple(encode_prompt(teacher.tokenizer, record.messages))
        if len(ids) > limit:
            where = record.origin.get("where") or record.origin.get("file") or record.id
            errors.append(f"{where}: prompt is {len(ids)} tokens; the teacher's context {teacher.max_context} "
                          f"minus --max-new-tokens {config.max_new_tokens} leaves {limit}")
            continue
        encoded.append((record, ids))
    if errors:
        skipped["prompt_too_long"] += len(errors)
        if not config.skip_invalid:
            raise_errors(errors, {"prompt_too_long": len(errors)})
    if not encoded:
        raise ConfigError(f"--prompts: {prompt_files(config)}: no prompt fits the teacher's context")
    return encoded


def plan_rows(config: GenerateConfig, encoded: list[tuple[Any, tuple[int, ...]]]) -> list[_Planned]:
    params = config.generation_params()
    rows = []
    for record, ids in encoded:
        for sample in range(config.samples_per_prompt):
            rid = row_id(record.id, params, sample)
            rows.append(_Planned(rid, record, ids, sample, row_seed(config.seed, rid)))
    return rows


def _to_row(plan: _Planned, output: Any) -> Any:
    import numpy as np

    from distill.corpus import CorpusRow

    assert tuple(int(i) for i in output.prompt_ids) == plan.prompt_ids, f"{plan.rid}: teacher changed the prompt ids"
    return CorpusRow(
        id=plan.rid, prompt_ids=np.asarray(plan.prompt_ids, dtype=np.int32),
        response_ids=np.asarray(output.response_ids, dtype=np.int32), topk_ids=output.topk_ids,
        topk_logprobs=output.topk_logprobs, sampled_logprobs=output.sampled_logprobs,
        finish_reason=output.finish_reason, prompt_text=plan.record.prompt, response_text=output.text,
        reference=plan.record.reference, origin=dict(plan.record.origin), messages=list(plan.record.messages),
        prompt_id=plan.record.id, sample_index=plan.sample_index,
    )


def nonfinite(output: Any) -> bool:
    """True when the teacher's log-probs for a row hold NaN or +inf (NaN weights, an fp16/bf16
    overflow): such a row is never stored."""
    import numpy as np

    for values in (output.topk_logprobs, output.sampled_logprobs):
        if values is not None and (np.isnan(values).any() or np.isposinf(values).any()):
            return True
    return False


def _shard_rows(config: GenerateConfig, shard_rows: list[_Planned], outputs: dict[str, Any], index: int) -> tuple[list[Any], Counter]:
    """The corpus rows of one shard; rows with non-finite log-probs fail the run (or, with
    --skip-invalid, are left out and counted)."""
    from distill.teachers.base import TeacherError

    rows, skipped = [], Counter()
    for plan in shard_rows:
        output = outputs[plan.rid]
        if nonfinite(output):
            if not config.skip_invalid:
                where = plan.record.origin.get("where") or plan.record.id
                excerpt = " ".join(plan.record.prompt.split())[:40]
                raise TeacherError(
                    f"teacher output for prompt {where} ({excerpt!r}; row {plan.rid[:12]}, shard {index}) holds NaN/inf log-probs: "
                    "the teacher's weights or its precision (fp16/bf16 overflow) are broken; nothing of this shard was "
                    "written (--skip-invalid leaves such rows out and counts them)")
            skipped["nonfinite_logprobs"] += 1
            continue
        rows.append(_to_row(plan, output))
    return rows, skipped


def _reference_requests(teacher: Any, rows: list[_Planned]) -> list[Any]:
    """--responses reference: each row's labelled reference (+ EOS) as the response to score."""
    from distill.teachers.base import ScoreRequest

    eos = teacher.tokenizer.eos_token_id
    requests = []
    for p in rows:
        if not p.record.reference:
            where = p.record.origin.get("where") or p.record.origin.get("file") or p.record.id
            raise ConfigError(f"{where}: --responses reference needs a non-empty 'reference' on every prompt")
        ids = teacher.tokenizer(p.record.reference, add_special_tokens=False)["input_ids"]
        requests.append(ScoreRequest(key=p.rid, prompt_ids=p.prompt_ids,
                                     response_ids=tuple(ids) + ((eos,) if eos is not None else ())))
    return requests


def _logged_outputs(teacher: Any, rows: list[_Planned]) -> Iterator[Any]:
    """--responses logged: each row's logged response (+ EOS), tokenized with the teacher's
    tokenizer, as a text-only output (no log-probs)."""
    import numpy as np

    from distill.teachers.base import TeacherOutput

    eos = teacher.tokenizer.eos_token_id
    for p in rows:
        response = (p.record.origin.get("fields") or {}).get("response")
        if not isinstance(response, str) or not response.strip():
            where = p.record.origin.get("where") or p.record.origin.get("file") or p.record.id
            raise ConfigError(f"{where}: --responses logged needs a non-empty 'response' on every prompt "
                              "(distill logs writes it; --no-responses there leaves it out)")
        ids = teacher.tokenizer(response, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        yield TeacherOutput(key=p.rid, prompt_ids=np.asarray(p.prompt_ids, dtype=np.int32),
                            response_ids=np.asarray(ids, dtype=np.int32), topk_ids=None, topk_logprobs=None,
                            sampled_logprobs=None, finish_reason="stop", text=response)


class ReusedRows:
    """Rows of earlier corpora that answer exactly the requests of this run (``--reuse``).

    A row is reused only when everything that determines it matches: its id (the prompt, the
    generation settings, the sample index), the teacher's fingerprint, the tokenizer and the
    log-prob grid, so the copied row is the row the teacher would have written (the stored codes
    decode to grid points, which encode back to the same codes). Only the ``id`` column is read
    to find them; a shard's rows are decoded when that shard is written.
    """

    def __init__(self) -> None:
        self._where: dict[str, tuple[Any, int]] = {}  # row id -> (corpus, row group)
        self.sources: list[str] = []

    @classmethod
    def find(cls, folders: Sequence[str], wanted: set[str], fingerprint: dict[str, Any], tok_fp: str,
             top_k: int, grid: Any) -> "ReusedRows":
        import pyarrow.parquet as pq

        from distill.corpus import open_corpus
        from distill.corpus.reader import manifest_grid

        found = cls()
        for folder in folders:
            corpus = open_corpus(folder)
            manifest = corpus.manifests[0]
            if (corpus.teacher != fingerprint or corpus.tokenizer_fingerprint != tok_fp or corpus.top_k != top_k
                    or manifest_grid(manifest) != grid):
                continue
            found.sources.append(str(folder))
            for index, (shard_index, group) in enumerate(corpus._groups):
                shard = corpus._shards[shard_index]
                ids = pq.ParquetFile(shard.path).read_row_group(group, columns=["id"]).column("id").to_pylist()
                for rid in ids:
                    if rid in wanted and rid not in found._where:
                        found._where[rid] = (corpus, index)
        return found

    def __len__(self) -> int:
        return len(self._where)

    def outputs(self, rids: Sequence[str]) -> dict[str, Any]:
        """TeacherOutputs, keyed by row id, for those of ``rids`` found in an earlier corpus."""
        from distill.teachers.base import TeacherOutput

        groups: dict[tuple[int, int], list[str]] = {}
        for rid in rids:
            if rid in self._where:
                corpus, index = self._where[rid]
                groups.setdefault((id(corpus), index), []).append(rid)
        out: dict[str, Any] = {}
        for rids_here in groups.values():
            corpus, index = self._where[rids_here[0]]
            keep = set(rids_here)
            for row in corpus.read_row_group(index):
                if row.id in keep:
                    out[row.id] = TeacherOutput(
                        key=row.id, prompt_ids=row.prompt_ids, response_ids=row.response_ids, topk_ids=row.topk_ids,
                        topk_logprobs=row.topk_logprobs, sampled_logprobs=row.sampled_logprobs,
                        finish_reason=row.finish_reason, text=row.response_text)
        return out


def _shard_stats(writer: Any) -> dict[str, Any]:
    import numpy as np
    import pyarrow.parquet as pq

    reasons: Counter[str] = Counter()
    lengths = []
    for index in writer.my_shards():
        table = pq.read_table(writer.shard_path(index), columns=["finish_reason", "response_len"])
        reasons.update(table["finish_reason"].to_pylist())
        lengths.append(np.asarray(table["response_len"]))
    lengths_all = np.concatenate(lengths) if lengths else np.zeros(0)
    return {"finish_reasons": dict(sorted(reasons.items())),
            "response_len_mean": round(float(lengths_all.mean()), 2) if lengths_all.size else 0.0,
            "response_len_max": int(lengths_all.max()) if lengths_all.size else 0}


def run(config: GenerateConfig) -> dict[str, Any]:
    """Generate (or resume, or confirm) the corpus described by ``config``; returns the manifest."""
    from tqdm.auto import tqdm

    from distill.corpus import CorpusWriter
    from distill.fingerprint import tokenizer_fingerprint
    from distill.ingest import ingest
    from distill.lock import LOCK_NAME, FolderLock
    from distill.teachers import load_teacher
    from distill.teachers.base import GenerationRequest, SamplingParams

    started = time.perf_counter()
    worker = parse_shard(config.shard)
    seeds = ingest(config.prompts, skip_invalid=config.skip_invalid)
    overrides = {"batch_size": config.batch_size} if config.batch_size is not None else {}
    lock_name = LOCK_NAME if worker[1] == 1 else f".distill-worker-{worker[0]}-of-{worker[1]}.lock"
    lock = FolderLock(config.out, lock_name, purpose=f"distill generate, worker {worker[0]}/{worker[1]}").acquire()
    try:
        teacher = load_teacher(config.teacher, backend=config.backend, **overrides)
    except BaseException:
        lock.release()
        raise
    try:
        if config.top_k > len(teacher.tokenizer):
            raise ConfigError(f"--top-k {config.top_k} exceeds the teacher's vocabulary ({len(teacher.tokenizer)} tokens)")
        if config.responses != "logged":  # logged responses need the teacher's tokenizer only
            teacher.load(score=config.responses == "reference")  # a teacher that cannot start fails before any write
        records, augmentation = prompts_to_answer(config, teacher, seeds.records)
        skipped = Counter(seeds.skipped)
        encoded = _encode_and_check(config, teacher, records, skipped)
        planned = plan_rows(config, encoded)
        fingerprint = teacher.fingerprint()
        if config.responses == "logged":  # the responses are the logged model's text, not this teacher's
            fingerprint = {**fingerprint, "black_box": True, "responses": "logged"}
        black_box = bool(fingerprint.get("black_box", False))
        top_k = 0 if black_box else config.top_k
        tok_fp = tokenizer_fingerprint(teacher.tokenizer)
        identity = {
            "teacher": fingerprint, "tokenizer_fingerprint": tok_fp, "generation": config.generation_params(),
            "rows": len(planned), "rows_per_shard": config.rows_per_shard,
            "rows_sha256": hashlib.sha256("\n".join(p.rid for p in planned).encode()).hexdigest(),
        }
        num_shards = math.ceil(len(planned) / config.rows_per_shard)
        writer = CorpusWriter(config.out, identity=identity, num_shards=num_shards, top_k=top_k, worker=worker,
                              logprob_scale=config.logprob_scale, logprob_alpha=config.logprob_alpha)
        writer.check_identity()
        finished = writer.finished_manifest()
        if finished is not None:
            print(f"{config.out}: corpus already complete ({finished['rows']} rows, "
                  f"{finished['response_tokens']} response tokens); nothing to do", file=sys.stderr)
            return finished
        writer.start()
        done = writer.completed_shards()
        todo = [j for j in writer.my_shards() if j not in done]
        params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                top_p=config.top_p, top_k_logprobs=top_k, stop=tuple(config.stop))
        todo_rows = sum(len(planned[j * config.rows_per_shard:(j + 1) * config.rows_per_shard]) for j in todo)
        if done:
            print(f"{config.out}: resuming; {len(done)} shard(s) already written, {len(todo)} to go", file=sys.stderr)
        new_tokens = 0
        responding = time.perf_counter()  # throughput counts the response phase only (not augmentation)
        bar = tqdm(total=todo_rows, desc="generate", unit="row", disable=not config.progress)
        todo_rids = {p.rid for j in todo for p in planned[j * config.rows_per_shard:(j + 1) * config.rows_per_shard]}
        reusable = ReusedRows.find(config.reuse, todo_rids, fingerprint, tok_fp, top_k, writer.grid)
        reused_rows = teacher_rows = 0
        for index in todo:
            shard_rows = planned[index * config.rows_per_shard:(index + 1) * config.rows_per_shard]
            outputs: dict[str, Any] = reusable.outputs([p.rid for p in shard_rows])
            reused_rows += len(outputs)
            bar.update(len(outputs))
            ask = [p for p in shard_rows if p.rid not in outputs]
            teacher_rows += len(ask)
            if not ask:
                stream = iter(())
            elif config.responses == "reference":
                stream = teacher.score(_reference_requests(teacher, ask), top_k)
            elif config.responses == "logged":
                stream = _logged_outputs(teacher, ask)
            else:
                requests = [GenerationRequest(key=p.rid, prompt_ids=p.prompt_ids, seed=p.seed,
                                              messages=tuple(p.record.messages)) for p in ask]
                stream = teacher.generate(requests, params)
            for output in stream:
                outputs[output.key] = output
                new_tokens += len(output.response_ids)
                bar.update(1)
                if STOP.requested:  # drop the shard in flight: never half a shard; the rerun redoes it exactly
                    if hasattr(stream, "close"):
                        stream.close()
                    bar.close()
                    raise STOP.preempted(f"{len(done) + todo.index(index)} of {len(writer.my_shards())} shard(s) "
                                         f"committed in {config.out}, shard {index} in flight dropped")
            missing = [p.rid for p in shard_rows if p.rid not in outputs]
            if missing:
                raise RuntimeError(f"teacher returned no output for {len(missing)} request(s), e.g. {missing[0]}")
            rows, shard_skipped = _shard_rows(config, shard_rows, outputs, index)
            writer.write_shard(index, rows, skipped=dict(shard_skipped))
            if STOP.requested and index != todo[-1]:
                bar.close()
                raise STOP.preempted(f"{len(done) + todo.index(index) + 1} of {len(writer.my_shards())} shard(s) "
                                     f"committed in {config.out}")
        bar.close()
        respond_s = time.perf_counter() - responding
        elapsed = time.perf_counter() - started
        stats = _shard_stats(writer)
        stats.update({"prompts": len(encoded), "reused_rows_last_run": reused_rows, "teacher_rows_last_run": teacher_rows,
                      "elapsed_s_last_run": round(elapsed, 2),
                      "respond_s_last_run": round(respond_s, 2), "new_response_tokens_last_run": new_tokens,
                      "response_tokens_per_s_last_run": round(new_tokens / respond_s, 2) if respond_s else None})
        ingest_stats = seeds.stats()
        skipped.update(writer.skipped_rows())  # rows left out at generation, over every run of this worker
        ingest_stats["skipped"] = dict(sorted(skipped.items()))
        manifest = writer.finish(extra={
            "teacher": fingerprint,
            "tokenizer_fingerprint": tok_fp,
            "backend": {"name": teacher.backend, "version": fingerprint.get("backend_version")},
            "generation": {**config.generation_params(), "top_k": top_k, "backend": teacher.backend},
            "ingest": ingest_stats,
            "augmentation": augmentation,  # prompt augmentation's stats when it ran
            "stats": stats,
            "build": build_info(),  # distill, torch, CUDA, vLLM versions; the image's build record inside one
        })
    finally:
        teacher.close()
        lock.release()
    for line in summary_lines(manifest, config.out):
        print(line, file=sys.stderr)
    return manifest


def summary_lines(manifest: dict[str, Any], out: str) -> list[str]:
    stats = manifest.get("stats", {})
    skipped = manifest.get("ingest", {}).get("skipped", {})
    bpt = manifest["bytes"] / max(manifest["response_tokens"], 1)
    lines = [
        f"corpus: {out} ({'worker %d/%d' % (manifest['worker']['index'], manifest['worker']['count']) if manifest['worker']['count'] > 1 else 'complete'})",
        f"  rows {manifest['rows']}  prompts {stats.get('prompts', '?')}  response tokens {manifest['response_tokens']}  "
        f"top-k {manifest['top_k']}  {bpt:.1f} bytes/response token",
        f"  finish reasons {stats.get('finish_reasons', {})}  mean response {stats.get('response_len_mean', 0)} tokens",
        f"  duplicates collapsed {manifest.get('ingest', {}).get('duplicates', 0)}  skipped {skipped or 'none'}",
    ]
    if stats.get("response_tokens_per_s_last_run"):
        augment_s = (manifest.get("augmentation") or {}).get("timing_s", {}).get("total")
        lines.append(f"  this run: {stats['new_response_tokens_last_run']} response tokens in {stats['respond_s_last_run']} s "
                     f"of answering ({stats['response_tokens_per_s_last_run']} tokens/s); {stats['elapsed_s_last_run']} s "
                     f"in all" + (f", of which augmentation {augment_s:.1f} s" if augment_s is not None else ""))
    return lines


__all__ = ["GenerateConfig", "parse_shard", "prompts_to_answer", "row_id", "run"]
